"""The picture written per image: three panels, an overlay only on images judged anomalous."""
import numpy as np
import pytest
from PIL import Image

from utils.predictions import Prediction
from utils.visualize import colour_range, save_prediction_figure


def picture(tmp_path, name, anomalous, rng, method="gradients"):
    image = (rng.random((40, 100, 3)) * 255).astype(np.uint8)
    anomaly_map = np.zeros((32, 32), dtype=np.float32)
    anomaly_map[8:24, 8:24] = 1.0  # one hot square
    path = tmp_path / f"{name}.png"
    save_prediction_figure(str(path), image, anomaly_map,
                           Prediction("x.png", 2.0 if anomalous else 0.5, 1.0), method)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_three_panels_and_the_overlay_only_when_anomalous(tmp_path):
    anomalous = picture(tmp_path, "a", True, np.random.default_rng(0))
    normal = picture(tmp_path, "n", False, np.random.default_rng(0))
    height, width = anomalous.shape[:2]
    assert width > 2 * height  # input, map and overlay side by side
    thirds = [slice(0, width // 3), slice(width // 3, 2 * width // 3), slice(2 * width // 3, None)]
    body = slice(height // 3, None)  # below the titles, which differ
    for panel in thirds[:2]:  # same input, same map
        assert np.array_equal(anomalous[body, panel], normal[body, panel])
    assert np.abs(anomalous[body, thirds[2]] - normal[body, thirds[2]]).sum() > 0


def test_raw_maps_use_their_own_range_and_scaled_maps_zero_to_one(rng):
    raw = rng.random((8, 8)) * 5 + 2
    assert colour_range(raw, "feature_diff") == pytest.approx((raw.min(), raw.max()))
    assert colour_range(raw, "gradients") == (0.0, 1.0)
    low, high = colour_range(np.full((4, 4), 3.0), "feature_diff")
    assert low == 3.0 and high > low  # a constant map still gets a colour scale
