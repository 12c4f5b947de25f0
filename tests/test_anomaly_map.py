"""Anomaly maps against the reference post-processing written in NumPy / SciPy."""
import numpy as np
import paddle
import pytest
from scipy.ndimage import gaussian_filter

from anomaly_map import (AnomalyMapModel, ScoreModel, channel_saliency, feature_discrepancy_map,
                         gaussian_blur, gradient_map, normalize_min_max, normalize_percentile)
from loss_functions import anomaly_score
from network import Cloner
from vgg import Expert

COSINE_EPS = 1e-8


def reference_gradient_map(grad, min_max=False):
    """The reference code's map of one input gradient [3, H, W]: sum_c |g|, scaled by
    (min, 99th percentile) and clipped, (min-max for gbp / smooth grad), Gaussian blur sigma 4."""
    gray = np.sum(np.abs(grad.astype(np.float64)), 0)
    low, high = np.min(gray), np.percentile(gray, 99)
    gray = np.clip((gray - low) / (high - low), 0, 1)
    if min_max:
        gray = (gray - gray.min()) / (gray.max() - gray.min())
    return gaussian_filter(gray, sigma=4)


def bilinear_upsample(a, height, width):
    """[h, w] -> [height, width], half-pixel centres (align_corners False), edges clamped."""
    def axis(n_in, n_out):
        source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), source - low

    y0, y1, wy = axis(a.shape[0], height)
    x0, x1, wx = axis(a.shape[1], width)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def reference_feature_map(cloner_stages, expert_stages, lamda, size, direction_only=False):
    """Per location: 1 - cos over channels + lamda * mean over channels of the squared error,
    stages 2..4, upsampled to the image size, summed, blurred (sigma 4)."""
    n = cloner_stages[0].shape[0]
    total = np.zeros((n, *size))
    for l in (1, 2, 3):
        c, e = cloner_stages[l].astype(np.float64), expert_stages[l].astype(np.float64)
        norms = np.sqrt(np.maximum((c * c).sum(1) * (e * e).sum(1), COSINE_EPS ** 2))
        local = 1 - (c * e).sum(1) / norms
        if not direction_only:
            local = local + lamda * ((c - e) ** 2).mean(1)
        total += np.stack([bilinear_upsample(m, *size) for m in local])
    return np.stack([gaussian_filter(m, sigma=4) for m in total])


def test_bilinear_reference_matches_opencv(rng):
    """The NumPy upsampling above is the usual half-pixel bilinear (checked against OpenCV)."""
    import cv2
    a = rng.random((3, 5))
    np.testing.assert_allclose(bilinear_upsample(a, 24, 40),
                               cv2.resize(a, (40, 24), interpolation=cv2.INTER_LINEAR),
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 32, 48), (1, 3, 64, 40),
                                   (1, 3, 16, 20)])
def test_gradient_map_equals_the_reference_pipeline(rng, shape):
    grads = (rng.standard_normal(shape) * rng.random(shape) ** 3).astype(np.float32)
    expected = np.stack([reference_gradient_map(g) for g in grads])
    maps = gaussian_blur(normalize_percentile(channel_saliency(paddle.to_tensor(grads))))
    assert maps.shape == [shape[0], shape[2], shape[3]]
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(gradient_map(paddle.to_tensor(grads)).numpy(), expected,
                               atol=1e-5)
    expected = np.stack([reference_gradient_map(g, min_max=True) for g in grads])
    np.testing.assert_allclose(gradient_map(paddle.to_tensor(grads), min_max=True).numpy(),
                               expected, atol=1e-5)


def test_normalize_percentile_equals_numpy(rng):
    maps = rng.gamma(1.0, size=(3, 24, 40)).astype(np.float32)
    expected = np.stack([np.clip((m - m.min()) / (np.percentile(m.astype(np.float64), 99)
                                                  - m.min()), 0, 1) for m in maps])
    np.testing.assert_allclose(normalize_percentile(paddle.to_tensor(maps)).numpy(), expected,
                               atol=1e-6)


def test_normalize_min_max_equals_numpy(rng):
    maps = (rng.standard_normal((3, 20, 36)) * 5).astype(np.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(normalize_min_max(paddle.to_tensor(maps)).numpy(),
                               (maps - low) / (high - low), atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0])
def test_gaussian_blur_equals_scipy(rng, sigma):
    maps = rng.random((2, 40, 56)).astype(np.float32)
    expected = np.stack([gaussian_filter(m.astype(np.float64), sigma=sigma) for m in maps])
    np.testing.assert_allclose(gaussian_blur(paddle.to_tensor(maps), sigma).numpy(), expected,
                               atol=1e-6)


def test_constant_maps_give_zeros_not_nan():
    constant = paddle.full([2, 32, 32], 0.7)
    for normalize in (normalize_percentile, normalize_min_max):
        result = normalize(constant).numpy()
        assert np.isfinite(result).all() and (result == 0).all()
    zeros = gradient_map(paddle.zeros([2, 3, 32, 32])).numpy()
    assert np.isfinite(zeros).all() and (zeros == 0).all()
    # one constant map beside a normal one: each image is scaled on its own
    mixed = paddle.to_tensor(np.stack([np.full((32, 32), 3.0), np.eye(32) * 2.0]).astype(
        np.float32))
    result = normalize_min_max(mixed).numpy()
    assert (result[0] == 0).all()
    np.testing.assert_array_equal(result[1], np.eye(32))


@pytest.mark.parametrize("lamda,direction_only", [(0.5, False), (0.01, False), (0.5, True)])
def test_feature_discrepancy_map_equals_numpy(rng, lamda, direction_only):
    height, width, n = 64, 96, 2
    shapes = [(128, 16, 24), (256, 8, 12), (512, 4, 6), (512, 2, 3)]
    cloner = [np.maximum(rng.standard_normal((n, *s)), 0).astype(np.float32) for s in shapes]
    expert = [np.maximum(rng.standard_normal((n, *s)), 0).astype(np.float32) for s in shapes]
    cloner[3][1, :, 0, 0] = 0.0  # an all-zero feature vector: the cosine's eps matters
    maps = feature_discrepancy_map([paddle.to_tensor(c) for c in cloner],
                                   [paddle.to_tensor(e) for e in expert], lamda,
                                   [height, width], direction_only)
    assert maps.shape == [n, height, width]
    expected = reference_feature_map(cloner, expert, lamda, (height, width), direction_only)
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_feature_discrepancy_map_ignores_stage_1(rng):
    shapes = [(128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
    cloner = [paddle.to_tensor(rng.random((1, *s)).astype(np.float32)) for s in shapes]
    expert = [paddle.to_tensor(rng.random((1, *s)).astype(np.float32)) for s in shapes]
    maps = feature_discrepancy_map(cloner, expert, 0.5, [32, 32]).numpy()
    cloner[0] = cloner[0] * 3.0
    np.testing.assert_array_equal(feature_discrepancy_map(cloner, expert, 0.5, [32, 32]).numpy(),
                                  maps)


@pytest.fixture(scope="module")
def networks():
    paddle.seed(5)
    expert, cloner = Expert(), Cloner()
    cloner.eval()
    images = np.random.default_rng(5).random((2, 3, 64, 64)).astype(np.float32)
    return expert, cloner, images


def test_gradients_map_model_equals_reference_on_autograd_gradients(networks):
    expert, cloner, images = networks
    x = paddle.to_tensor(images, stop_gradient=False)
    expected_score = anomaly_score(cloner(x), expert(x), 0.5)
    (grad,) = paddle.grad(expected_score.sum(), x)
    expected = np.stack([reference_gradient_map(g) for g in grad.numpy()])
    model = AnomalyMapModel(expert, cloner, 0.5, "gradients")
    with paddle.no_grad():
        score, maps = model(paddle.to_tensor(images))
    np.testing.assert_allclose(score.numpy(), expected_score.numpy(), rtol=1e-5)
    assert maps.shape == [2, 64, 64]
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)


def test_feature_diff_map_model_and_score_model(networks):
    expert, cloner, images = networks
    x = paddle.to_tensor(images)
    with paddle.no_grad():
        cloner_stages, expert_stages = cloner(x), expert(x)
        score, maps = AnomalyMapModel(expert, cloner, 0.5, "feature_diff")(x)
        scores_only = ScoreModel(expert, cloner, 0.5)(x)
    expected = reference_feature_map([c.numpy() for c in cloner_stages],
                                     [e.numpy() for e in expert_stages], 0.5, (64, 64))
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-4, atol=1e-5)
    expected_score = anomaly_score(cloner_stages, expert_stages, 0.5).numpy()
    np.testing.assert_allclose(score.numpy(), expected_score, rtol=1e-6)
    np.testing.assert_allclose(scores_only.numpy(), expected_score, rtol=1e-6)


def test_map_model_rejects_other_methods(networks):
    expert, cloner, _ = networks
    with pytest.raises(ValueError):
        AnomalyMapModel(expert, cloner, 0.5, "smooth_grad")
