"""The cloner's convolutions through oneDNN: same results as eager Paddle up to rounding, and only
inside the block."""
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from conftest import ROOT
from loss_functions import MseDirectionLoss
from network import Cloner
from onednn_conv import ONEDNN_FLAG, OnednnStages, onednn_convolutions
from train import train
from train_step import DistillationStep
from utils.config import build_config
from utils.demo_data import make_demo_category


UNIT_ROUNDOFF = 2.0 ** -24  # float32


def conv_and_grads(conv: nn.Conv2D, x: np.ndarray, dy: np.ndarray, dtype="float32"):
    """The output of `conv` and the gradients of sum(output * dy) w.r.t. input, weight, bias."""
    image = paddle.to_tensor(x.astype(dtype), stop_gradient=False)
    out = conv(image)
    wanted = [image, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    grads = paddle.grad([out], wanted, grad_outputs=[paddle.to_tensor(dy.astype(dtype))])
    return [value.numpy().astype(np.float64) for value in (out, *grads)]


def float64_copy(conv: nn.Conv2D, absolute: bool = False) -> nn.Conv2D:
    """`conv` in float64 (with |weights| when `absolute`)."""
    default = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        twin = nn.Conv2D(conv._in_channels, conv._out_channels, 3, padding=1,
                         bias_attr=None if conv.bias is not None else False)
    finally:
        paddle.set_default_dtype(default)
    twin.set_state_dict({name: (value.abs() if absolute else value).astype("float64")
                         for name, value in conv.state_dict().items()})
    return twin


@pytest.mark.parametrize("bias", [False, True])
def test_convolution_is_exact_up_to_float32_summation(rng, bias):
    """Output and the three gradients lie within the worst-case error of a float32 sum of K
    products in any order, K u sum|terms| (u = 2^-24, plus the final rounding), of a float64
    computation, as eager Paddle's do; and their bits differ from eager's: oneDNN did the work."""
    paddle.seed(0)
    batch, c_in, c_out, side = 8, 16, 32, 16
    conv = nn.Conv2D(c_in, c_out, 3, padding=1, bias_attr=None if bias else False)
    x = rng.standard_normal((batch, c_in, side, side)).astype(np.float32)
    dy = rng.standard_normal((batch, c_out, side, side)).astype(np.float32)
    eager = conv_and_grads(conv, x, dy)
    with onednn_convolutions(conv):
        onednn = conv_and_grads(conv, x, dy)
    exact = conv_and_grads(float64_copy(conv), x, dy, "float64")
    magnitudes = conv_and_grads(float64_copy(conv, absolute=True), np.abs(x), np.abs(dy),
                                "float64")  # the same sums of |terms|
    terms = (c_in * 9 + 1, c_out * 9, batch * side * side, batch * side * side)
    for name, fast, slow, reference, size, k in zip(
            ("output", "d input", "d weight", "d bias"), onednn, eager, exact, magnitudes, terms):
        bound = k * UNIT_ROUNDOFF * size + UNIT_ROUNDOFF * np.abs(reference)
        assert np.all(np.abs(slow - reference) <= bound), name  # the bound holds for eager
        assert np.all(np.abs(fast - reference) <= bound), name
    assert not np.array_equal(onednn[0], eager[0])


def test_weights_changed_between_calls_are_used(rng):
    """No stale copy of the weights (Paddle Inference's oneDNN would keep the first ones)."""
    conv = nn.Conv2D(16, 16, 3, padding=1, bias_attr=False)
    x = paddle.to_tensor(rng.standard_normal((2, 16, 8, 8)).astype(np.float32))
    with onednn_convolutions(conv):
        conv(x)
        conv.weight.set_value(conv.weight * 2.0)  # as Adam does, in place
        second = conv(x).numpy()
    np.testing.assert_allclose(second, F.conv2d(x, conv.weight, padding=1).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_outside_the_block_everything_is_eager(rng, enabled):
    """After the block (and throughout it when disabled) the convolutions are eager Paddle's own,
    bit for bit, and the flag is back to its value."""
    cloner = Cloner()
    x = paddle.to_tensor(rng.random((2, 3, 32, 32), dtype=np.float32))
    before = [stage.numpy() for stage in cloner(x)]
    flag = paddle.get_flags([ONEDNN_FLAG])
    with onednn_convolutions(cloner, enabled):
        inside = [stage.numpy() for stage in cloner(x)]
        assert paddle.get_flags([ONEDNN_FLAG])[ONEDNN_FLAG] == enabled
    after = [stage.numpy() for stage in cloner(x)]
    assert paddle.get_flags([ONEDNN_FLAG]) == flag
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.array_equal(a, b) for a, b in zip(before, inside)) != enabled
    assert not any("forward" in vars(layer) for layer in cloner.sublayers())


def test_the_flag_leaves_eager_kernels_alone(rng):
    """BatchNorm, ReLU, pooling and the loss run eagerly inside the block: bit for bit the same
    forward and backward with the oneDNN flag on, so only the convolutions change."""
    paddle.seed(1)
    layers = nn.Sequential(nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2, 2))
    layers.train()
    x = rng.standard_normal((4, 16, 8, 8)).astype(np.float32)
    results = []
    for flag in (False, True):
        paddle.set_flags({ONEDNN_FLAG: flag})
        try:
            image = paddle.to_tensor(x, stop_gradient=False)
            out = layers(image)
            loss = paddle.square(out - 0.5).mean()
            grads = paddle.grad([loss], [image] + [p for p in layers.parameters() if p.trainable])
        finally:
            paddle.set_flags({ONEDNN_FLAG: False})
        results.append([out.numpy()] + [grad.numpy() for grad in grads])
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def adam_steps(state: dict, batches: list, dtype: str, onednn: bool):
    """Losses and weights of the cloner after one Adam step per batch, in `dtype`."""
    default = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        cloner = Cloner()
    finally:
        paddle.set_default_dtype(default)
    cloner.set_state_dict({name: value.astype(dtype) for name, value in state.items()})
    step = DistillationStep(cloner, MseDirectionLoss(0.5))
    step.train()
    optimizer = paddle.optimizer.Adam(parameters=cloner.parameters())
    losses = []
    with onednn_convolutions(cloner, onednn):
        for images, stages in batches:
            loss = step(paddle.to_tensor(images.astype(dtype)),
                        [paddle.to_tensor(stage.astype(dtype)) for stage in stages])
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
    weights = {name: value.numpy().astype(np.float64) for name, value in
               cloner.state_dict().items()}
    return np.array(losses), weights


def test_training_steps_stay_as_close_to_float64_as_eager(rng):
    """A few Adam steps amplify float32 rounding (Adam moves every weight by about the learning
    rate whatever its gradient's size, and BatchNorm over a batch of 4 is ill-conditioned), so
    no float32 order of sums reproduces another's weights: the yardstick is exact arithmetic.
    oneDNN's training stays within twice eager float32's distance from float64 training."""
    paddle.seed(0)
    state = {name: value.numpy() for name, value in Cloner().state_dict().items()}
    batches = [(rng.random((4, 3, 64, 64), dtype=np.float32),
                [np.maximum(rng.standard_normal((4, c, 64 // s, 64 // s)), 0).astype(np.float32)
                 for c, s in ((128, 4), (256, 8), (512, 16), (512, 32))]) for _ in range(6)]
    exact_losses, exact_weights = adam_steps(state, batches, "float64", False)
    distances = {}
    for onednn in (False, True):
        losses, weights = adam_steps(state, batches, "float32", onednn)
        distances[onednn] = (np.abs(losses - exact_losses).max(),
                             max(np.abs(weights[name] - value).max()
                                 for name, value in exact_weights.items()))
    assert distances[True][0] <= 2 * distances[False][0]
    assert distances[True][1] <= 2 * distances[False][1]
    assert distances[True] != distances[False]


@pytest.mark.slow
def test_demo_training_reaches_the_same_roc_auc(tmp_path):
    """configs/demo.yaml's run (40 training, 30 test images, 64 px, epochs 0..30): engine auto
    (oneDNN convolutions) and engine eager (the former default) end at the same detection
    ROC-AUC (within 0.02) with final losses within 25%. Thirty epochs of Adam amplify float32
    rounding differently on each CPU (its oneDNN kernels differ): 2% held on one machine, 10%
    was measured on another; a broken convolution misses by far more."""
    root = str(tmp_path / "data")
    make_demo_category(root, "demo")  # as `make demo` writes it
    results = {}
    for engine in ("eager", "auto"):
        config = build_config(files=[os.path.join(ROOT, "configs", "demo.yaml")], overrides=[
            f"dataset_root={root}", f"engine={engine}", "cpu_threads=1",
            f"save_dir={tmp_path / engine}", f"log_dir={tmp_path / 'logs'}"])
        summary = train(config)
        results[engine] = (summary["history"]["loss"][-1], summary["history"]["image_auroc"][-1])
    assert abs(results["auto"][1] - results["eager"][1]) <= 0.02
    np.testing.assert_allclose(results["auto"][0], results["eager"][0], rtol=0.25)


def test_scoring_program_follows_the_weights_and_statistics_and_matches_eager(rng):
    """The whole eval-mode cloner through oneDNN: the stage outputs of eager Paddle up to float32
    rounding, with the weights and BatchNorm statistics as they are at each call."""
    paddle.seed(0)
    cloner = Cloner()
    x = paddle.to_tensor(rng.random((4, 3, 32, 32), dtype=np.float32))
    cloner.train()
    cloner(x)  # BatchNorm statistics move away from their initial values
    cloner.eval()
    stages_of = OnednnStages(cloner)
    flag = paddle.get_flags([ONEDNN_FLAG])
    for change in range(3):
        with paddle.no_grad():
            fast = [stage.numpy() for stage in stages_of(x)]
            eager = [stage.numpy() for stage in cloner(x)]
        assert paddle.get_flags([ONEDNN_FLAG]) == flag
        assert [a.shape for a in fast] == [b.shape for b in eager]
        for a, b in zip(fast, eager):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
        # as Adam and a training step do, in place
        for layer in cloner.sublayers():
            if isinstance(layer, nn.Conv2D):
                layer.weight.set_value(layer.weight * 1.5)
            if isinstance(layer, nn.BatchNorm2D):
                layer._mean.set_value(layer._mean + 0.1)
    assert not all(np.array_equal(a, b) for a, b in zip(fast, eager))  # oneDNN did the work
