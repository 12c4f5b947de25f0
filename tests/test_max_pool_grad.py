"""Max-pools with a recorded arg-max: the same outputs and gradients as Paddle's own, bit for bit,
ties included, and only inside the block."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from loss_functions import MseDirectionLoss
from max_pool_grad import RecordedMaxPool, recorded_max_pools
from network import Cloner
from train_step import DistillationStep


def tied_activations(rng, shape) -> np.ndarray:
    """ReLU outputs with many ties: a quarter are 0 and the rest take one of 3 positive values,
    so many 2x2 windows hold their maximum more than once."""
    return rng.integers(0, 4, size=shape).astype(np.float32) * 0.5


def pool_and_grad(pool, x: np.ndarray, dy: np.ndarray):
    image = paddle.to_tensor(x, stop_gradient=False)
    out = pool(image)
    (grad,) = paddle.grad([out], [image], grad_outputs=[paddle.to_tensor(dy)])
    return out.numpy(), grad.numpy()


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 5, 7, 9), (3, 16, 2, 2)])
def test_gradients_equal_paddles_own_bit_for_bit_with_ties(rng, shape):
    """Odd sizes drop the last row or column as max_pool2d does; ties go to the first maximum."""
    x = tied_activations(rng, shape)
    windows = x[:, :, :shape[2] // 2 * 2, :shape[3] // 2 * 2].reshape(
        shape[0], shape[1], shape[2] // 2, 2, shape[3] // 2, 2)
    maxima = windows.max(axis=(3, 5), keepdims=True)
    tied = ((windows == maxima).sum(axis=(3, 5)) > 1) & (maxima[:, :, :, 0, :, 0] > 0)
    assert tied.mean() > 0.2  # where the first and the last maximum differ: the test can tell
    dy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(np.float32)
    own = pool_and_grad(lambda t: F.max_pool2d(t, 2, 2), x, dy)
    recorded = pool_and_grad(lambda t: RecordedMaxPool.apply(t, 2, 2), x, dy)
    for a, b in zip(own, recorded):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    first = np.zeros_like(x)  # a brute-force loop: each window's gradient to its first maximum
    for n, c, i, j in np.ndindex(*dy.shape):
        window = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
        row, column = divmod(int(np.argmax(window)), 2)
        first[n, c, 2 * i + row, 2 * j + column] += dy[n, c, i, j]
    assert np.array_equal(recorded[1], first)


def test_a_training_step_of_the_cloner_is_bit_identical(rng):
    """Loss, every parameter gradient and the BatchNorm statistics of the cloner: the same bits
    with and without."""
    paddle.seed(0)
    cloner = Cloner()
    step = DistillationStep(cloner, MseDirectionLoss(0.01))
    images = paddle.to_tensor(rng.random((4, 3, 32, 32), dtype=np.float32))
    stages = [paddle.to_tensor(np.maximum(rng.standard_normal((4, c, 32 // s, 32 // s)), 0)
                               .astype(np.float32))
              for c, s in ((128, 4), (256, 8), (512, 16), (512, 32))]

    start = {name: value.numpy().copy() for name, value in cloner.state_dict().items()}

    def loss_grads_and_statistics():
        cloner.set_state_dict(start)
        loss = step(images, stages)
        loss.backward()
        trained = [p for p in cloner.parameters() if not p.stop_gradient]
        grads = [p.grad.numpy().copy() for p in trained]
        cloner.clear_gradients()
        statistics = [value.numpy().copy() for name, value in cloner.state_dict().items()
                      if name.endswith(("._mean", "._variance"))]
        return [loss.numpy()] + grads + statistics

    own = loss_grads_and_statistics()
    with recorded_max_pools(cloner):
        recorded = loss_grads_and_statistics()
    assert len(own) == len(recorded) == 1 + len(cloner.parameters())
    for a, b in zip(own, recorded):
        assert np.array_equal(a, b)


def test_only_non_overlapping_pools_inside_the_block_are_replaced():
    tiling, overlapping, padded = nn.MaxPool2D(2, 2), nn.MaxPool2D(3, 2), nn.MaxPool2D(2, 2, 1)
    block = nn.Sequential(tiling, overlapping, padded)
    with recorded_max_pools(block):
        assert "forward" in vars(tiling)
        assert "forward" not in vars(overlapping) and "forward" not in vars(padded)
    assert "forward" not in vars(tiling)
    with recorded_max_pools(block, enabled=False):
        assert "forward" not in vars(tiling)


def test_without_gradients_the_plain_pool_runs(rng):
    pool = nn.MaxPool2D(2, 2)
    x = paddle.to_tensor(tied_activations(rng, (2, 3, 6, 6)))
    with recorded_max_pools(pool), paddle.no_grad():
        out = pool(x)
    assert out.stop_gradient and np.array_equal(out.numpy(), F.max_pool2d(x, 2, 2).numpy())
