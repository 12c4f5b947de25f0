"""From images to anomaly scores and anomaly maps, as Paddle layers that export as they are.

The post-processing follows the reference code: a gradient map is sum_c |g|, scaled by its
(min, 99th percentile) and clipped to [0, 1], then blurred with a Gaussian of sigma 4 (SciPy's
`gaussian_filter`: reflect mode, truncate 4); guided backprop and smooth grad add a min-max
scaling before the blur. Written with Paddle ops so that the exported model outputs the map.
"""
import math
from typing import List, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from backprop import InputGradient
from loss_functions import SCORE_STAGES, anomaly_score
from network import DistillationPair

BLUR_SIGMA = 4.0
PERCENTILE = 99.0
EXPORTABLE_METHODS = ("gradients", "gbp", "feature_diff")


def channel_saliency(grad: paddle.Tensor) -> paddle.Tensor:
    """[N, 3, H, W] -> [N, H, W]: sum over channels of |gradient|."""
    return grad.abs().sum(axis=1)


def _per_image(values: paddle.Tensor, low: paddle.Tensor, high: paddle.Tensor) -> paddle.Tensor:
    """(values - low) / (high - low) per image, clipped to [0, 1]; 0 where high == low."""
    span = high - low
    safe = paddle.where(span > 0, span, paddle.ones_like(span))
    scaled = paddle.clip((values - low) / safe, 0.0, 1.0)
    return paddle.where(span > 0, scaled, paddle.zeros_like(scaled))


def normalize_percentile(maps: paddle.Tensor) -> paddle.Tensor:
    """[N, H, W]: scaled by (min, 99th percentile) and clipped, like NumPy's linear percentile.

    Only the top 1 % of the values is sorted (topk): the same numbers as a full sort, faster, and
    within TensorRT's TopK limit (k <= 3840) up to 600 x 600 maps once exported to ONNX."""
    h, w = maps.shape[1], maps.shape[2]
    size = h * w
    values = maps.reshape([-1, size])
    position = PERCENTILE / 100.0 * (size - 1)
    below = int(math.floor(position))
    fraction = position - below
    above = min(below + 1, size - 1)
    largest = paddle.topk(values, k=size - below, axis=1)[0]  # descending: rank r is at size-1-r
    at_below = largest[:, size - 1 - below:size - below]
    at_above = largest[:, size - 1 - above:size - above]
    low = values.min(axis=1, keepdim=True)
    high = at_below + (at_above - at_below) * fraction
    return _per_image(values, low, high).reshape([-1, h, w])


def normalize_min_max(maps: paddle.Tensor) -> paddle.Tensor:
    """[N, H, W] scaled to [0, 1] per image."""
    h, w = maps.shape[1], maps.shape[2]
    flat = maps.reshape([-1, h * w])
    return _per_image(flat, flat.min(axis=1, keepdim=True),
                      flat.max(axis=1, keepdim=True)).reshape([-1, h, w])


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> List[float]:
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (x / sigma) ** 2) for x in range(-radius, radius + 1)]
    total = sum(weights)
    return [weight / total for weight in weights]


def _symmetric_pad(x: paddle.Tensor, radius: int, axis: int) -> paddle.Tensor:
    """SciPy's 'reflect' border (d c b a | a b c d | d c b a) along one axis of [N, 1, H, W]."""
    size = x.shape[axis]
    head = paddle.flip(paddle.slice(x, [axis], [0], [radius]), [axis])
    tail = paddle.flip(paddle.slice(x, [axis], [size - radius], [size]), [axis])
    return paddle.concat([head, x, tail], axis=axis)


def gaussian_blur(maps: paddle.Tensor, sigma: float = None) -> paddle.Tensor:
    """[N, H, W] blurred like scipy.ndimage.gaussian_filter(map, sigma) (needs H, W >= 4 sigma);
    sigma defaults to the paper's 4."""
    weights = gaussian_kernel(BLUR_SIGMA if sigma is None else sigma)
    radius = len(weights) // 2
    kernel = paddle.to_tensor(weights, dtype=maps.dtype)
    x = maps.unsqueeze(1)
    x = F.conv2d(_symmetric_pad(x, radius, 2), kernel.reshape([1, 1, -1, 1]))
    x = F.conv2d(_symmetric_pad(x, radius, 3), kernel.reshape([1, 1, 1, -1]))
    return x.squeeze(1)


def gradient_map(grad: paddle.Tensor, min_max: bool = False) -> paddle.Tensor:
    """The reference's map from an input gradient: grayscale, optional min-max, blur."""
    maps = normalize_percentile(channel_saliency(grad))
    if min_max:
        maps = normalize_min_max(maps)
    return gaussian_blur(maps)


def bilinear_taps(out_size: int, in_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resizing along one axis with half-pixel centres (align_corners=False, as
    F.interpolate and OpenCV's INTER_LINEAR): (low index, high index, weight of high) per output."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (source - low).astype(np.float32)


def _resize_axis(x: paddle.Tensor, size: int, axis: int) -> paddle.Tensor:
    low, high, fraction = bilinear_taps(size, x.shape[axis])
    below = paddle.index_select(x, paddle.to_tensor(low), axis=axis)
    above = paddle.index_select(x, paddle.to_tensor(high), axis=axis)
    shape = [1] * len(x.shape)
    shape[axis] = size
    return below + (above - below) * paddle.to_tensor(fraction.reshape(shape))


def upsample_bilinear(maps: paddle.Tensor, size: Sequence[int]) -> paddle.Tensor:
    """[N, h, w] -> [N, H, W], bilinear, written as gathers: F.interpolate (a float-array
    attribute) and a matmul over a 1-pixel axis both fail in Paddle Inference's oneDNN executor."""
    return _resize_axis(_resize_axis(maps, int(size[0]), 1), int(size[1]), 2)


def feature_discrepancy_map(cloner_stages, expert_stages, lamda: float, image_size,
                            direction_only: bool = False) -> paddle.Tensor:
    """[N, H, W]: per-location (1 - cos over channels) + lamda * mean squared error over channels
    for stages 2..4, each upsampled (bilinear) to the image size and summed, then blurred.

    The mean over channels makes the spatial mean of the squared-error term equal to the score's
    MSE term of that stage."""
    total = None
    for l in SCORE_STAGES:
        c, e = cloner_stages[l], expert_stages[l]
        local = 1 - F.cosine_similarity(c, e, axis=1)
        if not direction_only:
            local = local + lamda * ((c - e) ** 2).mean(axis=1)
        local = upsample_bilinear(local, image_size)
        total = local if total is None else total + local
    return gaussian_blur(total)


class ScoreModel(nn.Layer):
    """x [N, 3, H, W] -> anomaly score [N]."""

    def __init__(self, expert, cloner, lamda: float, direction_only: bool = False):
        super().__init__()
        self.pair = DistillationPair(expert, cloner)
        self.lamda, self.direction_only = lamda, direction_only

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        cloner_stages, expert_stages = self.pair(x)
        return anomaly_score(cloner_stages, expert_stages, self.lamda, self.direction_only)


class AnomalyMapModel(nn.Layer):
    """x [N, 3, H, W] -> (anomaly score [N], anomaly map [N, H, W]) for one localization method.

    `gradients` and `gbp` maps are in [0, 1] per image; `feature_diff` maps keep the raw
    discrepancy so that they compare across images (an image-independent scale).
    `max_pool_rule`: "switches" for a graph that converts to ONNX (backprop.MAX_POOL_RULES).
    """

    def __init__(self, expert, cloner, lamda: float, method: str = "gradients",
                 direction_only: bool = False, max_pool_rule: str = "unpool"):
        super().__init__()
        if method not in EXPORTABLE_METHODS:
            raise ValueError(f"AnomalyMapModel supports {EXPORTABLE_METHODS}, not {method!r}")
        self.method = method
        self.lamda, self.direction_only = lamda, direction_only
        self.pair = DistillationPair(expert, cloner)
        self.input_gradient = InputGradient(expert, cloner, lamda, direction_only,
                                            guided=(method == "gbp"),
                                            max_pool_rule=max_pool_rule)

    def forward(self, x: paddle.Tensor):
        if self.method == "feature_diff":
            cloner_stages, expert_stages = self.pair(x)
            score = anomaly_score(cloner_stages, expert_stages, self.lamda, self.direction_only)
            maps = feature_discrepancy_map(cloner_stages, expert_stages, self.lamda,
                                           x.shape[2:], self.direction_only)
            return score, maps
        score, grad = self.input_gradient(x)
        return score, gradient_map(grad, min_max=(self.method == "gbp"))
