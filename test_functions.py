"""Detection and localization tests: scores and saliency maps over a test loader, in batches.

Every localization method works on whole batches with one (hand-written) backward pass per
network evaluation; smooth grad and integrated gradients batch their noisy / scaled copies too.
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import paddle
from paddle import nn

from anomaly_map import (EXPORTABLE_METHODS, AnomalyMapModel, ScoreModel, channel_saliency,
                         gaussian_blur, normalize_min_max, normalize_percentile)
from backprop import InputGradient
from loss_functions import anomaly_score
from engine import make_runner
from metrics import PaperLocalizationAUC, image_auroc

SMOOTH_GRAD_SIGMA = 0.05  # the reference's sigma multiplier; the noise std is its square


@dataclass
class Evaluation:
    labels: np.ndarray
    scores: np.ndarray
    paths: List[str]
    maps: Optional[np.ndarray] = None  # [N, H, W], test-set order
    masks: Optional[np.ndarray] = None
    loc_auc: PaperLocalizationAUC = field(default_factory=PaperLocalizationAUC)

    @property
    def image_auroc(self) -> float:
        return image_auroc(self.labels, self.scores)


class _GrayscaleGradient(nn.Layer):
    """x -> (score, grayscale gradient map before blur): smooth grad's per-copy map."""

    def __init__(self, input_gradient: InputGradient):
        super().__init__()
        self.input_gradient = input_gradient

    def forward(self, x):
        score, grad = self.input_gradient(x)
        return score, normalize_percentile(channel_saliency(grad))


def _chunks(array: np.ndarray, size: int):
    for start in range(0, len(array), size):
        yield array[start:start + size]


def _run_chunked(runner: Callable, inputs: np.ndarray, size: int) -> List[np.ndarray]:
    parts = [runner(chunk) for chunk in _chunks(inputs, size)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


def _blur(maps: np.ndarray, min_max: bool) -> np.ndarray:
    maps = paddle.to_tensor(maps)
    if min_max:
        maps = normalize_min_max(maps)
    return gaussian_blur(maps).numpy()


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

    def __call__(self, images: np.ndarray):
        if self.method in EXPORTABLE_METHODS:
            return tuple(self.runner(images))
        if self.method == "smooth_grad":
            return self._smooth_grad(images)
        return self._integrated_gradients(images)

    def _smooth_grad(self, images: np.ndarray):
        """Mean of the grayscale gradient maps of `samples` noisy copies, min-max, blur; noise
        std (0.05 / (max(x) - min(x))) ** 2 per image, as in the reference code."""
        n = len(images)
        spread = (images.reshape(n, -1).max(1) - images.reshape(n, -1).min(1))
        std = (SMOOTH_GRAD_SIGMA / np.where(spread > 0, spread, 1.0)) ** 2
        copies = np.repeat(images, self.samples, axis=0)
        noise = self.rng.standard_normal(copies.shape).astype(np.float32)
        copies = copies + noise * np.repeat(std, self.samples)[:, None, None, None].astype(
            np.float32)
        _, maps = _run_chunked(self.runner, copies, self.batch_size)
        mean_maps = maps.reshape(n, self.samples, *maps.shape[1:]).mean(axis=1)
        scores = self.clean_scores(images)
        return scores, _blur(mean_maps.astype(np.float32), min_max=True)

    def clean_scores(self, images: np.ndarray) -> np.ndarray:
        return _run_chunked(self.runner, images, self.batch_size)[0]

    def _integrated_gradients(self, images: np.ndarray):
        """Gradients along the straight path 0 -> x (steps + 1 points, summed / steps, as the
        reference), times x; per pixel the largest |value| over channels, then as `gradients`."""
        n = len(images)
        alphas = np.arange(self.steps + 1, dtype=np.float32) / self.steps
        path = (alphas[None, :, None, None, None] * images[:, None]).reshape(
            -1, *images.shape[1:])
        scores, grads = _run_chunked(self.runner, path, self.batch_size)
        grads = grads.reshape(n, self.steps + 1, *images.shape[1:]).sum(axis=1) / self.steps
        attribution = np.abs(grads * images).max(axis=1)
        maps = normalize_percentile(paddle.to_tensor(attribution.astype(np.float32)))
        clean = scores.reshape(n, self.steps + 1)[:, -1]
        return clean, gaussian_blur(maps).numpy()


def make_scorer(expert, cloner, config: dict, device: str, image_shape) -> Callable:
    """images [N, 3, H, W] -> scores [N]."""
    runner = make_runner(ScoreModel(expert, cloner, config["lamda"],
                                    config["direction_loss_only"]), config, device, image_shape)
    return lambda images: runner(images)[0]


def detection_test(scorer: Callable, loader) -> Evaluation:
    """Image scores of the whole loader; `.image_auroc` is the detection ROC-AUC."""
    return evaluate(loader, scorer=scorer)


def evaluate(loader, scorer: Callable = None, map_generator: MapGenerator = None,
             progress: Callable = None, keep_maps: bool = True) -> Evaluation:
    """One streaming pass: scores (and maps) batch by batch; the paper's AUC is accumulated over
    the defective images. `keep_maps=False` keeps no map or mask (memory stays flat)."""
    labels, scores, indices, maps, masks = [], [], [], [], []
    loc_auc = PaperLocalizationAUC()
    for images, batch_labels, batch_masks, batch_indices in (progress or iter)(loader):
        images = images.numpy()
        batch_labels, batch_masks = batch_labels.numpy(), batch_masks.numpy()
        if map_generator is None:
            batch_scores = scorer(images)
        else:
            batch_scores, batch_maps = map_generator(images)
            if keep_maps:
                maps.append(batch_maps)
                masks.append(batch_masks)
            defective = batch_labels == 1
            if defective.any():
                loc_auc.update(batch_maps[defective], batch_masks[defective])
        labels.append(batch_labels)
        scores.append(batch_scores)
        indices.append(batch_indices.numpy())
    dataset = loader.dataset
    order = np.concatenate(indices)
    return Evaluation(
        labels=np.concatenate(labels), scores=np.concatenate(scores).astype(np.float64),
        paths=[dataset.paths[i] for i in order],
        maps=np.concatenate(maps) if maps else None,
        masks=np.concatenate(masks) if masks else None, loc_auc=loc_auc)


def score_cached(cloner, cache, config: dict) -> np.ndarray:
    """Scores of every image of an ExpertCache, the cloner run eagerly in eval mode."""
    cloner.eval()
    scores = []
    with paddle.no_grad():
        for images, expert_stages in cache.batches():
            scores.append(anomaly_score(cloner(images), expert_stages, config["lamda"],
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
