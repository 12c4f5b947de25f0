"""The hand-written backward of the score (InputGradient) against Paddle's autograd."""
import numpy as np
import paddle
import pytest
from paddle import nn

from backprop import InputGradient
from loss_functions import anomaly_score
from network import Cloner
from vgg import Expert

SIZE, BATCH, LAMDA = 64, 3, 0.5


def randomise_batch_norm(cloner, rng):
    """Running statistics and affine parameters far from the (1, 0) of a fresh BatchNorm."""
    for layer in cloner.features:
        if isinstance(layer, nn.BatchNorm2D):
            n = layer._mean.shape[0]
            layer.weight.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.bias.set_value(rng.uniform(-0.2, 0.2, n).astype(np.float32))
            layer._mean.set_value(rng.uniform(-0.3, 0.3, n).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.3, 3.0, n).astype(np.float32))


@pytest.fixture(scope="module")
def networks():
    paddle.seed(11)
    rng = np.random.default_rng(11)
    expert, cloner = Expert(), Cloner()
    randomise_batch_norm(cloner, rng)
    cloner.eval()
    images = rng.random((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    return expert, cloner, images


def guided_stages(cloner, x):
    """The cloner's stage outputs with a hook on every ReLU output that lets only positive
    gradients through (the reference GuidedBackprop's rule)."""
    stages = []
    for i, layer in enumerate(cloner.features):
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            x.register_hook(lambda grad: paddle.clip(grad, min=0.0))
        if i in cloner.stage_ends:
            stages.append(x)
    return stages


def autograd_input_gradient(expert, cloner, images, guided=False, direction_only=False):
    x = paddle.to_tensor(images, stop_gradient=False)
    cloner_stages = guided_stages(cloner, x) if guided else cloner(x)
    score = anomaly_score(cloner_stages, expert(x), LAMDA, direction_only)
    (grad,) = paddle.grad(score.sum(), x)
    return score.numpy(), grad.numpy()


@pytest.fixture(scope="module")
def hand_written(networks):
    """(score, gradient) of InputGradient on the whole batch, computed once per setting."""
    expert, cloner, images = networks
    results = {}

    def run(guided=False, direction_only=False):
        if (guided, direction_only) not in results:
            layer = InputGradient(expert, cloner, LAMDA, direction_only, guided)
            with paddle.no_grad():  # the hand-written backward needs no autograd at all
                score, grad = layer(paddle.to_tensor(images))
            results[guided, direction_only] = score.numpy(), grad.numpy()
        return results[guided, direction_only]

    return run


def assert_gradients_close(actual, expected):
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("guided,direction_only", [(False, False), (True, False), (False, True)])
def test_input_gradient_equals_autograd(networks, hand_written, guided, direction_only):
    """Gradient and score; the score is anomaly_score of the plain forward pass."""
    expert, cloner, images = networks
    expected_score, expected_grad = autograd_input_gradient(expert, cloner, images, guided,
                                                            direction_only)
    score, grad = hand_written(guided, direction_only)
    assert score.shape == (BATCH,) and grad.shape == (BATCH, 3, SIZE, SIZE)
    np.testing.assert_allclose(score, expected_score, rtol=1e-5)
    assert_gradients_close(grad, expected_grad)


def test_guided_differs_from_plain(hand_written):
    plain, guided = hand_written()[1], hand_written(guided=True)[1]
    assert not np.allclose(plain, guided, rtol=1e-2)


@pytest.mark.parametrize("guided", [False, True])
def test_batched_gradients_equal_one_image_at_a_time(networks, hand_written, guided):
    expert, cloner, images = networks
    scores, grads = hand_written(guided)
    layer = InputGradient(expert, cloner, LAMDA, guided=guided)
    with paddle.no_grad():
        for i in range(BATCH):
            score, grad = layer(paddle.to_tensor(images[i:i + 1]))
            np.testing.assert_allclose(score.numpy(), scores[i:i + 1], rtol=1e-5)
            assert_gradients_close(grad.numpy()[0], grads[i])
    # and the middle image's own autograd gradient, computed alone
    _, alone = autograd_input_gradient(expert, cloner, images[1:2], guided)
    assert_gradients_close(grads[1], alone[0])
