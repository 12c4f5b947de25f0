"""Detection and localization tests: scores and saliency maps over a test loader, in batches.

Every localization method works on whole batches with one (hand-written) backward pass per
network evaluation; smooth grad and integrated gradients stream their noisy / scaled copies
through the network in batches of the same size, so memory does not grow with their count.
"""
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import paddle
from paddle import nn

from anomaly_map import (EXPORTABLE_METHODS, AnomalyMapModel, ScoreModel, channel_saliency,
                         gaussian_blur, normalize_min_max, normalize_percentile)
from backprop import InputGradient
from loss_functions import anomaly_score
from engine import make_runner
from metrics import aupro, image_auroc, image_f1_max, loc_auc_paper, pixel_auroc

SMOOTH_GRAD_SIGMA = 0.05  # the reference's sigma multiplier; the noise std is its square


@dataclass
class Evaluation:
    labels: np.ndarray
    scores: np.ndarray
    paths: List[str]
    indices: np.ndarray  # dataset index of every row, in test order
    maps: Optional[np.ndarray] = None  # [N, H, W], test-set order
    masks: Optional[np.ndarray] = None
    method: Optional[str] = None  # the localization method that drew the maps

    @property
    def image_auroc(self) -> float:
        return image_auroc(self.labels, self.scores)

    def loc_auc_paper(self) -> float:
        """The paper's localization AUC over the defective images."""
        defective = self.labels == 1
        return loc_auc_paper(paper_metric_maps(self.maps, self.method)[defective],
                             self.masks[defective])


def paper_metric_maps(maps: np.ndarray, method: str) -> np.ndarray:
    """The maps that the paper's thresholds 0.000..0.999 are applied to.

    Gradient maps are in [0, 1] per image already. feature_diff maps keep the raw discrepancy,
    so they are divided by their largest value over the test set: one monotone rescaling shared
    by all images (no labels used), which pixel ROC-AUC and AUPRO do not see."""
    if method != "feature_diff":
        return maps
    top = float(maps.max())
    return maps / top if top > 0 else maps


class _GrayscaleGradient(nn.Layer):
    """x -> (score, grayscale gradient map before blur): smooth grad's per-copy map."""

    def __init__(self, input_gradient: InputGradient):
        super().__init__()
        self.input_gradient = input_gradient

    def forward(self, x):
        score, grad = self.input_gradient(x)
        return score, normalize_percentile(channel_saliency(grad))


def _blur(maps: np.ndarray, min_max: bool) -> np.ndarray:
    maps = paddle.to_tensor(maps.astype(np.float32))
    if min_max:
        maps = normalize_min_max(maps)
    return gaussian_blur(maps).numpy()


def smooth_grad_noise_std(images: np.ndarray) -> np.ndarray:
    """[N]: the reference's noise std, (0.05 / (max(x) - min(x))) ** 2 per image."""
    flat = images.reshape(len(images), -1)
    spread = flat.max(axis=1) - flat.min(axis=1)
    return (SMOOTH_GRAD_SIGMA / np.where(spread > 0, spread, 1.0)) ** 2


def integration_path(steps: int) -> np.ndarray:
    """The reference's straight path 0 -> x: alphas k / steps for k = 0..steps."""
    return np.arange(steps + 1, dtype=np.float64) / steps


class MapGenerator:
    """images [N, 3, H, W] -> (scores [N], anomaly maps [N, H, W]) for `localization_method`."""

    def __init__(self, expert, cloner, config: dict, device: str, image_shape, batch_size: int):
        self.method = config["localization_method"]
        self.batch_size = batch_size
        lamda, direction_only = config["lamda"], config["direction_loss_only"]
        self.rng = np.random.default_rng(config["seed"] or 0)
        self.samples, self.steps = config["smooth_grad_samples"], config["ig_steps"]
        if self.method in EXPORTABLE_METHODS:
            layer = AnomalyMapModel(expert, cloner, lamda, self.method, direction_only)
        else:
            layer = InputGradient(expert, cloner, lamda, direction_only)
            if self.method == "smooth_grad":
                layer = _GrayscaleGradient(layer)
        self.runner = make_runner(layer, config, device, image_shape)

    def __call__(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.method in EXPORTABLE_METHODS:
            scores, maps = self.runner(images)
            return scores, maps
        if self.method == "smooth_grad":
            return self._smooth_grad(images)
        return self._integrated_gradients(images)

    def _copies(self, count: int, per_image: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(image index, copy index) of copies 0 .. count * per_image - 1, a batch at a time."""
        for start in range(0, count * per_image, self.batch_size):
            copy = np.arange(start, min(start + self.batch_size, count * per_image))
            yield copy // per_image, copy % per_image

    def _smooth_grad(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mean of the grayscale gradient maps of `samples` noisy copies, min-max, blur. The noise
        is drawn copy by copy in image order (image 0's copies first)."""
        std = smooth_grad_noise_std(images).astype(np.float32)
        total = np.zeros((len(images), *images.shape[2:]), dtype=np.float64)
        for owner, _ in self._copies(len(images), self.samples):
            noise = self.rng.standard_normal((len(owner), *images.shape[1:]), dtype=np.float32)
            _, maps = self.runner(images[owner] + noise * std[owner, None, None, None])
            np.add.at(total, owner, maps)
        scores = self.runner(images)[0]
        return scores, _blur(total / self.samples, min_max=True)

    def _integrated_gradients(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Gradients along the straight path 0 -> x (steps + 1 points, summed / steps, as the
        reference), times x; per pixel the largest |value| over channels, then as `gradients`."""
        alphas = integration_path(self.steps)
        total = np.zeros(images.shape, dtype=np.float64)
        scores = np.zeros(len(images), dtype=np.float64)
        for owner, step in self._copies(len(images), self.steps + 1):
            path = images[owner] * alphas[step, None, None, None].astype(np.float32)
            path_scores, grads = self.runner(path)
            np.add.at(total, owner, grads)
            end = step == self.steps  # alpha = 1: the image itself
            scores[owner[end]] = path_scores[end]
        attribution = np.abs(total / self.steps * images).max(axis=1)
        maps = normalize_percentile(paddle.to_tensor(attribution.astype(np.float32)))
        return scores.astype(np.float32), gaussian_blur(maps).numpy()


def evaluation_metrics(result: Evaluation) -> dict:
    """Detection metrics, and the localization metrics when the evaluation has maps."""
    f1, threshold = image_f1_max(result.labels, result.scores)
    metrics = {"image_auroc": result.image_auroc, "image_f1_max": f1,
               "image_f1_threshold": threshold}
    if result.maps is not None:
        metrics.update(loc_auc_paper=result.loc_auc_paper(),
                       pixel_auroc=pixel_auroc(result.maps, result.masks),
                       aupro=aupro(result.maps, result.masks))
    return metrics


def make_scorer(expert, cloner, config: dict, device: str, image_shape) -> Callable:
    """images [N, 3, H, W] -> scores [N]."""
    runner = make_runner(ScoreModel(expert, cloner, config["lamda"],
                                    config["direction_loss_only"]), config, device, image_shape)
    return lambda images: runner(images)[0]


def detection_test(scorer: Callable, loader) -> Evaluation:
    """Image scores of the whole loader; `.image_auroc` is the detection ROC-AUC."""
    return evaluate(loader, scorer=scorer)


def evaluate(loader, scorer: Callable = None, map_generator: MapGenerator = None,
             progress: Callable = None) -> Evaluation:
    """One streaming pass: scores (and maps, masks) batch by batch, kept in test order."""
    labels, scores, indices, maps, masks = [], [], [], [], []
    for images, batch_labels, batch_masks, batch_indices in (progress or iter)(loader):
        images = images.numpy()
        if map_generator is None:
            batch_scores = scorer(images)
        else:
            batch_scores, batch_maps = map_generator(images)
            maps.append(batch_maps)
            masks.append(batch_masks.numpy())
        labels.append(batch_labels.numpy())
        scores.append(batch_scores)
        indices.append(batch_indices.numpy())
    dataset = loader.dataset
    order = np.concatenate(indices)
    return Evaluation(
        labels=np.concatenate(labels), scores=np.concatenate(scores).astype(np.float64),
        paths=[dataset.paths[i] for i in order], indices=order,
        maps=np.concatenate(maps) if maps else None,
        masks=np.concatenate(masks) if masks else None,
        method=map_generator.method if map_generator is not None else None)


def score_cached(cloner, cache, config: dict, stages_of=None) -> np.ndarray:
    """Scores of every image of an ExpertCache, the cloner in eval mode: run eagerly, or by
    `stages_of` (images -> the cloner's stage outputs, e.g. onednn_conv.OnednnStages)."""
    cloner.eval()
    stages_of = stages_of or cloner
    scores = []
    with paddle.no_grad():
        for images, expert_stages in cache.batches():
            scores.append(anomaly_score(stages_of(images), expert_stages, config["lamda"],
                                        config["direction_loss_only"]).numpy())
    return np.concatenate(scores).astype(np.float64)


def image_threshold(train_scores: np.ndarray) -> dict:
    """The image threshold stored with a checkpoint, from the training images' scores."""
    mean, std = float(np.mean(train_scores)), float(np.std(train_scores))
    return {"image_threshold": mean + 3.0 * std,
            "threshold_rule": "mean + 3 std of the training images' scores",
            "train_score_stats": {"mean": mean, "std": std, "min": float(np.min(train_scores)),
                                  "max": float(np.max(train_scores)),
                                  "p99": float(np.percentile(train_scores, 99))}}
