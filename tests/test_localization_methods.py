"""Every localization method of MapGenerator against an independent per-image reference.

The references follow the reference code's semantics one image at a time, with Paddle's autograd
(`paddle.grad`) for the gradients and NumPy / SciPy / OpenCV for the post-processing; the
generator runs whole batches through the hand-written backward, eagerly and under Paddle
Inference (oneDNN).
"""
import cv2
import numpy as np
import paddle
import pytest
from paddle import nn
from scipy.ndimage import gaussian_filter

from anomaly_map import upsample_bilinear
from loss_functions import anomaly_score
from network import Cloner
from test_functions import MapGenerator, paper_metric_maps
from utils.config import build_config
from vgg import Expert

SIZE, COUNT, BATCH, LAMDA = 32, 3, 2, 0.5
SAMPLES, STEPS, SEED = 3, 4, 7


@pytest.fixture(scope="module")
def networks():
    paddle.seed(5)
    rng = np.random.default_rng(5)
    expert, cloner = Expert(), Cloner()
    for layer in cloner.features:  # BatchNorm far from its fresh (identity) state
        if isinstance(layer, nn.BatchNorm2D):
            n = layer._mean.shape[0]
            layer._mean.set_value(rng.uniform(-0.3, 0.3, n).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.3, 3.0, n).astype(np.float32))
            layer.weight.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
    cloner.eval()
    images = rng.random((COUNT, 3, SIZE, SIZE)).astype(np.float32)
    images[1] *= 0.5  # a different spread, so smooth grad's noise std differs per image
    return expert, cloner, images


def generator(networks, method, engine="eager"):
    expert, cloner, _ = networks
    config = build_config(base=dict(localization_method=method, engine=engine, lamda=LAMDA,
                                    smooth_grad_samples=SAMPLES, ig_steps=STEPS, seed=SEED,
                                    cpu_threads=2, pretrain=False))
    return MapGenerator(expert, cloner, config, "cpu", [3, SIZE, SIZE], BATCH)


# ---- the per-image references ----------------------------------------------------------------

def autograd_gradient(expert, cloner, image, guided=False):
    """(score, d score / d image [3, H, W]) of one image; `guided` hooks the cloner's ReLUs."""
    handles = []
    if guided:
        def clip_gradient(layer, inputs, output):
            output.register_hook(lambda grad: paddle.clip(grad, min=0.0))
        handles = [layer.register_forward_post_hook(clip_gradient)
                   for layer in cloner.features if isinstance(layer, nn.ReLU)]
    try:
        x = paddle.to_tensor(image[None], stop_gradient=False)
        score = anomaly_score(cloner(x), expert(x), LAMDA)
        (grad,) = paddle.grad(score, x)
    finally:
        for handle in handles:
            handle.remove()
    return float(score.numpy()[0]), grad.numpy()[0].astype(np.float64)


def grayscale(values):
    """The reference's convert_to_grayscale of [3, H, W] (or of a map already one channel)."""
    values = np.abs(values).sum(axis=0) if values.ndim == 3 else np.abs(values)
    low, high = values.min(), np.percentile(values, 99)
    return np.clip((values - low) / (high - low), 0, 1)


def min_max(values):
    return (values - values.min()) / (values.max() - values.min())


def reference_gradients(expert, cloner, images, guided=False):
    scores, maps = [], []
    for image in images:
        score, grad = autograd_gradient(expert, cloner, image, guided)
        scores.append(score)
        saliency = grayscale(grad)
        maps.append(gaussian_filter(min_max(saliency) if guided else saliency, sigma=4))
    return np.array(scores), np.array(maps)


def reference_smooth_grad(expert, cloner, images):
    noise = np.random.default_rng(SEED).standard_normal(
        (len(images), SAMPLES, *images.shape[1:]), dtype=np.float32)
    scores, maps = [], []
    for image, image_noise in zip(images, noise):
        std = np.float32((0.05 / (image.max() - image.min())) ** 2)
        total = sum(grayscale(autograd_gradient(expert, cloner, image + n * std)[1])
                    for n in image_noise)
        scores.append(autograd_gradient(expert, cloner, image)[0])
        maps.append(gaussian_filter(min_max(np.abs(total / SAMPLES)), sigma=4))
    return np.array(scores), np.array(maps)


def reference_integrated_gradients(expert, cloner, images):
    scores, maps = [], []
    for image in images:
        total = np.zeros(image.shape)
        for k in range(STEPS + 1):
            score, grad = autograd_gradient(expert, cloner, image * (k / STEPS))
            total += grad
        attribution = total / STEPS * image
        largest = np.where(np.abs(attribution.max(0)) >= np.abs(attribution.min(0)),
                           attribution.max(0), attribution.min(0))  # max_regarding_to_abs
        scores.append(score)  # k = STEPS: the image itself
        maps.append(gaussian_filter(grayscale(largest), sigma=4))
    return np.array(scores), np.array(maps)


def reference_feature_diff(expert, cloner, images):
    scores, maps = [], []
    with paddle.no_grad():
        for image in images:
            x = paddle.to_tensor(image[None])
            cloner_stages = [s.numpy()[0].astype(np.float64) for s in cloner(x)]
            expert_stages = [s.numpy()[0].astype(np.float64) for s in expert(x)]
            score, total = 0.0, np.zeros((SIZE, SIZE))
            for c, e in zip(cloner_stages[1:], expert_stages[1:]):
                score += 1 - (c * e).sum() / max(np.linalg.norm(c) * np.linalg.norm(e), 1e-8)
                score += LAMDA * ((c - e) ** 2).mean()
                cosine = (c * e).sum(0) / np.maximum(
                    np.linalg.norm(c, axis=0) * np.linalg.norm(e, axis=0), 1e-8)
                local = 1 - cosine + LAMDA * ((c - e) ** 2).mean(axis=0)
                total += cv2.resize(local, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            scores.append(score)
            maps.append(gaussian_filter(total, sigma=4))
    return np.array(scores), np.array(maps)


REFERENCES = {
    "gradients": reference_gradients,
    "gbp": lambda expert, cloner, images: reference_gradients(expert, cloner, images, True),
    "smooth_grad": reference_smooth_grad,
    "integrated_gradients": reference_integrated_gradients,
    "feature_diff": reference_feature_diff,
}


class References(dict):
    """{method: (scores, maps)} of the per-image references, each computed when first asked
    for (smooth grad and integrated gradients take long, and only the slow tier asks)."""

    def __init__(self, networks):
        super().__init__()
        self.networks = networks

    def __missing__(self, method):
        self[method] = REFERENCES[method](*self.networks)
        return self[method]


@pytest.fixture(scope="module")
def references(networks):
    return References(networks)


# the many-copies methods take long; the slow tier runs them
METHODS = ["gradients", "gbp", "feature_diff",
           pytest.param("smooth_grad", marks=pytest.mark.slow),
           pytest.param("integrated_gradients", marks=pytest.mark.slow)]


def assert_maps_close(actual, expected, atol):
    assert actual.shape == expected.shape == (COUNT, SIZE, SIZE)
    np.testing.assert_allclose(actual, expected, atol=atol * max(1.0, np.abs(expected).max()))


# ---- the tests --------------------------------------------------------------------------------

# runner calls for 3 images in batches of 2: one per batch of images, or copies in batches
BATCHES = {"gradients": [3], "gbp": [3], "feature_diff": [3],
           "smooth_grad": [2, 2, 2, 2, 1, 3],  # 3 images x 3 noisy copies, then the clean images
           "integrated_gradients": [2] * 7 + [1]}  # 3 images x 5 points on the path


@pytest.mark.parametrize("method", METHODS)
def test_batched_method_equals_per_image_reference(networks, references, method):
    maker = generator(networks, method)
    sizes, runner = [], maker.runner
    maker.runner = lambda images: sizes.append(len(images)) or runner(images)
    scores, maps = maker(networks[2])
    assert sizes == BATCHES[method]  # no per-image loop over the network
    expected_scores, expected_maps = references[method]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)
    assert_maps_close(maps, expected_maps, atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(REFERENCES))
def test_method_under_paddle_inference_equals_reference(networks, references, method):
    """The exported layers under oneDNN (Paddle Inference) give the same maps."""
    scores, maps = generator(networks, method, engine="inference")(networks[2])
    expected_scores, expected_maps = references[method]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)
    assert_maps_close(maps, expected_maps, atol=3e-3)


@pytest.mark.slow
def test_methods_differ_from_each_other(references):
    """The references are not all the same map, so agreeing with one of them means something."""
    maps = {method: references[method][1] for method in REFERENCES}
    methods = list(maps)
    for i, first in enumerate(methods):
        for second in methods[i + 1:]:
            assert not np.allclose(maps[first], maps[second], atol=1e-2), (first, second)


@pytest.mark.slow
def test_smooth_grad_depends_on_the_noise(networks, references):
    """Other noise, other map: the reference comparison above does check the noise."""
    expert, cloner, images = networks
    config = build_config(base=dict(localization_method="smooth_grad", engine="eager",
                                    lamda=LAMDA, smooth_grad_samples=SAMPLES, seed=SEED + 1,
                                    pretrain=False))
    _, maps = MapGenerator(expert, cloner, config, "cpu", [3, SIZE, SIZE], BATCH)(images[:1])
    assert np.abs(maps[0] - references["smooth_grad"][1][0]).max() > 1e-3


def test_feature_diff_upsampling_matches_opencv_and_paddle(rng):
    maps = rng.random((2, 3, 5)).astype(np.float32)
    ours = upsample_bilinear(paddle.to_tensor(maps), (24, 40)).numpy()
    opencv = np.stack([cv2.resize(m, (40, 24), interpolation=cv2.INTER_LINEAR) for m in maps])
    padd = paddle.nn.functional.interpolate(paddle.to_tensor(maps[:, None]), size=(24, 40),
                                            mode="bilinear", align_corners=False).numpy()[:, 0]
    np.testing.assert_allclose(ours, opencv, atol=1e-5)
    np.testing.assert_allclose(ours, padd, atol=1e-6)


def test_paper_metric_maps_rescale_feature_diff_only(rng):
    maps = rng.random((2, 4, 4)) * 7
    np.testing.assert_array_equal(paper_metric_maps(maps, "gradients"), maps)
    scaled = paper_metric_maps(maps, "feature_diff")
    assert scaled.max() == pytest.approx(1.0)
    np.testing.assert_allclose(scaled * maps.max(), maps)
