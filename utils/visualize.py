"""The picture written for each image: the input, its anomaly map with a colour bar, and the
overlay, titled with score, threshold and verdict (matplotlib, Agg canvas, no window)."""
import os
from typing import Tuple

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable
from PIL import Image

from dataset import read_image
from utils.files import atomic_write, printable
from utils.predictions import Prediction

MAX_DISPLAY_SIDE = 1024  # larger inputs are shown downscaled
COLOURMAP = "jet"
OVERLAY_ALPHA = 0.5
RAW_MAP_METHODS = ("feature_diff",)  # maps in discrepancy units; the others are in [0, 1]
FIGURE_WIDTH, FIGURE_DPI = 12.0, 80  # inches, dots per inch
PANEL_LEFTS, PANEL_WIDTH = (0.01, 0.34, 0.69), 0.3  # figure fractions
TITLE_SPACE = 0.75  # inches above the panels for the two title lines


def _panel_boxes(aspect: float):
    """(figure size, three panel boxes) for an image of height / width `aspect`: fixed boxes
    draw once, where a layout engine would draw every picture twice."""
    panel_height = min(max(FIGURE_WIDTH * PANEL_WIDTH * aspect, 1.5), 6.0)
    height = panel_height + TITLE_SPACE + 0.1
    boxes = [(left, 0.1 / height, PANEL_WIDTH, panel_height / height) for left in PANEL_LEFTS]
    return (FIGURE_WIDTH, height), boxes


def display_image(path: str) -> np.ndarray:
    """[H, W, 3] uint8: the image as the model reads it (RGB, 16-bit scaled), not resized."""
    image = read_image(path, "RGB")
    image.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE), Image.BILINEAR)
    return np.asarray(image)


def colour_range(anomaly_map: np.ndarray, method: str) -> Tuple[float, float]:
    """(0, 1) for maps already scaled to [0, 1]; a raw map's own (min, max) otherwise."""
    if method not in RAW_MAP_METHODS:
        return 0.0, 1.0
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    return low, max(high, low + float(np.finfo(np.float32).eps))


def save_prediction_figure(path: str, image: np.ndarray, anomaly_map: np.ndarray,
                           prediction: Prediction, method: str,
                           display_threshold: float = 0.5) -> None:
    """Input | anomaly map (colour bar, white line at the display cut) | overlay, on anomalous
    images, of the map where it is above `display_threshold` of the way up its colour range.
    The [S, S] map is stretched back to the input's own size and aspect ratio."""
    height, width = image.shape[:2]
    shown = cv2.resize(anomaly_map.astype(np.float32), (width, height),
                       interpolation=cv2.INTER_LINEAR)
    low, high = colour_range(anomaly_map, method)
    cut = low + display_threshold * (high - low)
    size, boxes = _panel_boxes(height / width)
    figure = Figure(figsize=size, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_axes(box) for box in boxes]
    axes[0].imshow(image)
    axes[0].set_title("input")
    heat = axes[1].imshow(shown, cmap=COLOURMAP, vmin=low, vmax=high)
    axes[1].set_title(f"anomaly map ({method})")
    # the bar hugs the map whatever the image's aspect ratio
    bar_axes = make_axes_locatable(axes[1]).append_axes("right", size="5%", pad=0.06)
    bar = figure.colorbar(heat, cax=bar_axes)
    bar.ax.axhline(cut, color="white", linewidth=2)
    axes[2].imshow(image)
    if prediction.anomalous:
        axes[2].imshow(np.ma.masked_less_equal(shown, cut), cmap=COLOURMAP, vmin=low, vmax=high,
                       alpha=OVERLAY_ALPHA)
        axes[2].set_title(f"overlay: map > {cut:.3g}")
    else:  # the map always has a hottest region; marking it on a normal image misleads
        axes[2].set_title("normal: no overlay")
    for axis in axes:
        axis.set_axis_off()
    name = printable(os.path.basename(prediction.path))
    figure.suptitle(f"{name}: score {prediction.score:.4g}, "
                    f"threshold {prediction.threshold:.4g} -> {prediction.verdict.upper()}",
                    color="tab:red" if prediction.anomalous else "tab:green", fontsize=13,
                    y=1.0 - 0.12 / size[1], verticalalignment="top")
    atomic_write(path, lambda tmp: figure.savefig(  # compress_level 1: fast, PNG stays lossless
        tmp, format="png", pil_kwargs={"compress_level": 1}))
