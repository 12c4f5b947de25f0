"""The hand-written backward of the score (InputGradient) against Paddle's autograd."""
import numpy as np
import paddle
import pytest
from paddle import nn

from anomaly_map import AnomalyMapModel
from backprop import MAX_POOL_RULES, InputGradient
from engine import EagerRunner, PredictorRunner
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


def first_max_unpool(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """NumPy, a loop over windows: each 2x2 window's gradient to its first maximum in row-major
    order, the rule max_pool2d's mask and max_unpool2d follow."""
    out = np.zeros_like(x)
    n, c, h, w = x.shape
    for i, j, r, s in np.ndindex(n, c, h // 2, w // 2):
        window = x[i, j, 2 * r:2 * r + 2, 2 * s:2 * s + 2].ravel()
        corner = int(np.argmax(window))  # NumPy's argmax returns the first maximum
        out[i, j, 2 * r + corner // 2, 2 * s + corner % 2] = grad[i, j, r, s]
    return out


def tied_activations(rng) -> np.ndarray:
    """[2, 3, 8, 8] post-ReLU values full of ties: ReLU zeros, flat patches, every pattern of
    equal corners in a window, and windows without ties."""
    x = np.maximum(rng.standard_normal((2, 3, 8, 8)), 0).astype(np.float32)
    x[0, 0, :4, :4] = 0.75  # a flat patch: four windows of four equal maxima
    x[1, 2] = 0.0  # a channel of ReLU zeros
    for pattern in range(16):  # which corners of window `pattern` share the maximum 2.0
        r, s = divmod(pattern, 4)
        window = x[0, 1, 2 * r:2 * r + 2, 2 * s:2 * s + 2]
        window[...] = 1.0
        for corner in range(4):
            if pattern >> corner & 1:
                window[corner // 2, corner % 2] = 2.0
    return x


@pytest.mark.parametrize("rule", sorted(MAX_POOL_RULES))
def test_max_pool_rules_send_ties_to_the_first_maximum(rule, rng):
    x = tied_activations(rng)
    grad = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    forward, backward = MAX_POOL_RULES[rule]
    pooled, saved = forward(paddle.to_tensor(x))
    np.testing.assert_array_equal(pooled.numpy(), x.reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5)))
    np.testing.assert_array_equal(backward(paddle.to_tensor(grad), saved).numpy(),
                                  first_max_unpool(x, grad))


def tied_images(rng) -> np.ndarray:
    """Images whose activations tie everywhere: black, flat grey, half flat, a noisy one."""
    images = rng.random((4, 3, SIZE, SIZE)).astype(np.float32)
    images[0] = 0.0
    images[1] = 0.5
    images[2, :, :SIZE // 2] = 0.25
    return images


@pytest.mark.parametrize("method", ["gradients", "gbp"])
def test_both_max_pool_rules_give_the_same_maps_eager_and_in_paddle_inference(networks, rng,
                                                                              method):
    """The ONNX-convertible rule changes no number: eagerly and under oneDNN alike."""
    expert, cloner, _ = networks
    images = tied_images(rng)
    outputs = {}
    for rule in MAX_POOL_RULES:
        layer = AnomalyMapModel(expert, cloner, LAMDA, method, max_pool_rule=rule)
        outputs[rule, "eager"] = EagerRunner(layer)(images)
        outputs[rule, "onednn"] = PredictorRunner(layer, [3, SIZE, SIZE], use_gpu=False,
                                                  cpu_threads=2)(images)
    for engine in ("eager", "onednn"):
        for unpooled, switched in zip(outputs["unpool", engine], outputs["switches", engine]):
            np.testing.assert_array_equal(switched, unpooled)
    assert outputs["switches", "eager"][1].std(axis=(1, 2)).min() > 0  # maps, not blanks


def test_switches_rule_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even sizes"):
        MAX_POOL_RULES["switches"][0](paddle.zeros([1, 1, 5, 4]))
