"""The strips of the report and VisualDL (image | anomaly map | overlay) against matplotlib."""
import io

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image

from utils.thumbnails import GAP, OVERLAY_ALPHA, heat_colours, jpeg_bytes, strip


def jet(values):
    """matplotlib's own jet colours, as uint8."""
    return (np.asarray(colormaps["jet"](values))[..., :3] * 255).round().astype(np.int32)


def panels(picture, width):
    return [picture[:, i * (width + GAP):i * (width + GAP) + width].astype(np.int32)
            for i in range(3)]


def test_heat_colours_are_matplotlibs_jet_over_the_given_range(rng):
    anomaly_map = rng.uniform(-1.0, 3.0, (6, 7))
    coloured = heat_colours(anomaly_map, (0.0, 2.0)).astype(np.int32)
    expected = jet(np.clip(anomaly_map / 2.0, 0, 1))
    assert np.abs(coloured - expected).max() <= 8  # 256 levels; jet moves 4 per level
    assert (coloured[anomaly_map >= 2.0] == jet(1.0)).all()
    assert (coloured[anomaly_map <= 0.0] == jet(0.0)).all()


def test_strip_keeps_the_aspect_ratio_and_blends_the_overlay(rng):
    image = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)  # wide: 80 x 40
    anomaly_map = np.zeros((16, 16), dtype=np.float32)
    anomaly_map[:, 8:] = 1.0  # right half hot
    picture = strip(image, anomaly_map, (0.0, 1.0), side=64)
    assert picture.shape == (32, 3 * 64 + 2 * GAP, 3) and picture.dtype == np.uint8
    shown, heat, overlay = panels(picture, 64)
    np.testing.assert_array_equal(shown, cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA))
    assert (heat[:, :24] == jet(0.0)).all() and (heat[:, 40:] == jet(1.0)).all()
    blended = np.round(shown * (1 - OVERLAY_ALPHA) + heat * OVERLAY_ALPHA)
    assert np.abs(overlay - blended).max() <= 1
    assert (picture[:, 64:64 + GAP] == 255).all()


def test_the_defect_is_outlined_in_white_on_the_overlay():
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[20:40, 10:30] = 1.0
    picture = strip(image, np.zeros((64, 64)), (0.0, 1.0), mask=mask, side=64)
    overlay = panels(picture, 64)[2]
    white = (overlay == 255).all(axis=2)
    rows, columns = np.nonzero(white)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (20, 39, 10, 29)
    assert not white[25:35, 15:25].any()  # an outline, not a filled region
    no_defect = strip(image, np.zeros((64, 64)), (0.0, 1.0), mask=mask * 0.4, side=64)
    assert not (panels(no_defect, 64)[2] == 255).all(axis=2).any()  # below 0.5: no defect pixel


def test_without_a_map_only_the_image_float_or_uint8(rng):
    image = rng.random((50, 50, 3))
    picture = strip(image, side=32)
    assert picture.shape == (32, 32, 3)
    assert abs(int(picture.mean()) - int(round(image.mean() * 255))) <= 2


def test_jpeg_bytes_decode_to_the_strip():
    ramp = np.linspace(0.0, 1.0, 30)
    image = np.stack([ramp[:, None] * ramp[None, :]] * 3, axis=2)
    picture = strip(image, ramp[:, None] * np.ones(30), side=48)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes(picture))))
    assert decoded.shape == picture.shape
    assert np.abs(decoded.astype(int) - picture.astype(int)).mean() < 4
