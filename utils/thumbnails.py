"""Image | anomaly map | overlay side by side in one small RGB strip (and its JPEG), for the HTML
report and VisualDL: the pictures' colours (jet), the ground-truth defect outlined in white."""
import io
from typing import Optional, Tuple

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image

from metrics import MASK_LEVEL
from utils.plots import MAP_COLORS

THUMBNAIL_SIDE = 128  # px, the longer side of each of the three panels
JPEG_QUALITY = 75  # about 6 KB a strip of real images
OVERLAY_ALPHA = 0.45  # as in anomaly_maps.png
GAP = 2  # px of white between the panels
_COLOURS = (colormaps[MAP_COLORS](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(
    np.uint8)  # [256, 3] lookup table


def as_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 from uint8, or from floats in [0, 1]."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def heat_colours(anomaly_map: np.ndarray, value_range: Tuple[float, float]) -> np.ndarray:
    """[H, W] map -> [H, W, 3] uint8 in the jet colours, `value_range` spanning the scale."""
    low, high = value_range
    scaled = (np.asarray(anomaly_map, dtype=np.float64) - low) / max(high - low, 1e-12)
    return _COLOURS[(np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.intp)]


def _fit(side: int, shape) -> Tuple[int, int]:
    """(width, height) with the longer side `side` and the aspect ratio of `shape` [H, W]."""
    height, width = shape[:2]
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    shrinking = size[0] < array.shape[1]
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def strip(image: np.ndarray, anomaly_map: Optional[np.ndarray] = None,
          value_range: Tuple[float, float] = (0.0, 1.0), mask: Optional[np.ndarray] = None,
          side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """[h, 3w + gaps, 3] uint8: the image, its map in colour and the two blended, the defect
    (mask >= 0.5) outlined on the overlay; only the image without a map. The map and mask are
    stretched to the image's own aspect ratio, as in the pictures."""
    size = _fit(side, image.shape)
    picture = _resize(as_uint8(image), size)
    if anomaly_map is None:
        return picture
    heat = heat_colours(_resize(np.asarray(anomaly_map, dtype=np.float32), size), value_range)
    overlay = (picture * (1.0 - OVERLAY_ALPHA) + heat * OVERLAY_ALPHA).round().astype(np.uint8)
    if mask is not None and float(np.max(mask)) >= MASK_LEVEL:
        defect = (_resize(np.asarray(mask, dtype=np.float32), size) >= MASK_LEVEL).astype(np.uint8)
        contours, _ = cv2.findContours(defect, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    gap = np.full((size[1], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([picture, gap, heat, gap, overlay], axis=1)


def jpeg_bytes(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A [H, W, 3] uint8 array as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
