"""Evaluation metrics: image ROC-AUC and F1, the paper's localization AUC, pixel ROC-AUC, AUPRO.

The paper's localization AUC binarises each map at t = 0.000, 0.001, ..., 0.999, applies a
morphological opening (3x3 ellipse) and sweeps TPR = sum(bin * gt) / sum(gt) against
FPR = sum(bin * (1 - gt)) / sum(1 - gt) over the defective test images (soft masks kept), AUC by
the trapezoid rule. Opening with a flat structuring element commutes with thresholding, so
"open(map >= t)" equals "grey_open(map) >= t": one grey opening per map and a histogram give all
1000 points at once, the same numbers as the 1000-fold loop.

The standard metrics use every test image (good ones too) with masks binarised at 0.5:
pixel ROC-AUC over all pixels, and AUPRO as in the MVTec AD evaluation protocol (Bergmann et al.,
IJCV 2021): the mean overlap of the thresholded map with each connected defect region (8-connected)
against the false-positive rate on defect-free pixels, integrated up to FPR 0.3 and divided by 0.3.
Both are exact, and need little memory beyond the maps and masks: the binarised masks (a byte per
pixel) and a sorted copy of the defect-free pixels' values, in the maps' dtype.
"""
from typing import Tuple

import cv2
import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

from utils.errors import UserError

PAPER_THRESHOLDS = np.array([0.001 * i for i in range(1000)])
OPENING_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
PAPER_AUC_CHUNK = 16  # maps per update in loc_auc_paper: its memory does not grow with N
MASK_LEVEL = 0.5  # a resized (soft) mask pixel is a defect pixel from this value on
AUPRO_FPR_LIMIT = 0.3
REGION_CONNECTIVITY = np.ones((3, 3), dtype=int)  # 8-connected, as the MVTec AD evaluation code


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of the image scores, anomalous (label 1) as the positive class."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise UserError("image ROC-AUC needs both normal and anomalous test images")
    return float(roc_auc_score(labels, scores))


def grey_opening(maps: np.ndarray) -> np.ndarray:
    """[N, H, W] -> each map opened with the paper's 3x3 elliptic structuring element."""
    return np.stack([cv2.morphologyEx(m, cv2.MORPH_OPEN, OPENING_KERNEL) for m in maps])


class PaperLocalizationAUC:
    """The paper's localization AUC, accumulated batch by batch (memory stays flat)."""

    def __init__(self, thresholds: np.ndarray = PAPER_THRESHOLDS):
        self.thresholds = thresholds
        self.true_positive = np.zeros(len(thresholds))
        self.false_positive = np.zeros(len(thresholds))
        self.defect_area = 0.0
        self.normal_area = 0.0

    def _counts(self, levels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """For every threshold index i: sum of weights over pixels with level >= thresholds[i]."""
        passed = np.searchsorted(self.thresholds, levels.ravel(), side="right")
        per_count = np.bincount(passed, weights=weights.ravel(),
                                minlength=len(self.thresholds) + 1)
        return np.cumsum(per_count[::-1])[::-1][1:]

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """maps, masks: [N, H, W] of defective images; masks in [0, 1] (soft values kept)."""
        levels = grey_opening(np.asarray(maps, dtype=np.float64))
        masks = np.asarray(masks, dtype=np.float64)
        self.true_positive += self._counts(levels, masks)
        self.false_positive += self._counts(levels, 1.0 - masks)
        self.defect_area += masks.sum()
        self.normal_area += (1.0 - masks).sum()

    def curve(self):
        return self.false_positive / self.normal_area, self.true_positive / self.defect_area

    def compute(self) -> float:
        if self.defect_area == 0 or self.normal_area == 0:
            return float("nan")
        fpr, tpr = self.curve()
        return float(auc(fpr, tpr))


def loc_auc_paper(maps: np.ndarray, masks: np.ndarray) -> float:
    """The paper's localization AUC of defective images' maps [N, H, W] against masks."""
    metric = PaperLocalizationAUC()
    for start in range(0, len(maps), PAPER_AUC_CHUNK):
        metric.update(maps[start:start + PAPER_AUC_CHUNK], masks[start:start + PAPER_AUC_CHUNK])
    return metric.compute()


def image_f1_max(labels: np.ndarray, scores: np.ndarray) -> Tuple[float, float]:
    """(largest F1 over all thresholds, that threshold): an image is called anomalous when its
    score >= the threshold; the lowest such threshold when several reach the maximum."""
    labels = np.asarray(labels)
    if not labels.any():
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2 * precision * recall / np.where(denominator > 0,
                                                                     denominator, 1), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def binarize_masks(masks: np.ndarray) -> np.ndarray:
    return np.asarray(masks) >= MASK_LEVEL


def _normal_values(maps: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The map values of the defect-free pixels, sorted ascending (a copy in the maps' dtype)."""
    values = maps[~truth]
    values.sort()
    return values


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC-AUC of all pixels of all test images [N, H, W]; nan without defect or normal pixels."""
    # the Mann-Whitney statistic: the fraction of (defect, defect-free) pixel pairs in which the
    # defect pixel has the larger value, ties counting 1/2, by binary searches of the defect
    # pixels' values in the sorted defect-free values
    maps = np.asarray(maps)
    truth = binarize_masks(masks)
    defect = maps[truth]
    if defect.size in (0, truth.size):
        return float("nan")
    normal = _normal_values(maps, truth)
    if not (np.isfinite(normal[[0, -1]]).all() and np.isfinite(defect).all()):
        raise ValueError("pixel ROC-AUC needs finite map values")
    below = int(np.searchsorted(normal, defect, side="left").sum())
    below_or_tied = int(np.searchsorted(normal, defect, side="right").sum())
    return (below + below_or_tied) / (2 * defect.size * normal.size)


def _defect_pixels(maps: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """(map values, 1 / size of their region) of the defect pixels, and the number of regions."""
    values, weights, regions = [], [], 0
    for image, mask in zip(maps, truth):
        labelled, count = ndimage.label(mask, structure=REGION_CONNECTIVITY)
        sizes = np.bincount(labelled.ravel())
        values.append(image[mask])
        weights.append(1.0 / sizes[labelled[mask]])
        regions += count
    return np.concatenate(values), np.concatenate(weights), regions


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) curve over all thresholds "map >= t", from (0, 0) to (1, 1)."""
    # FPR(t): the fraction of defect-free pixels >= t. PRO(t): the sum over the defect pixels
    # >= t of 1 / (number of regions * size of the pixel's region), so it changes only at defect
    # pixels' values; thresholds passing defect-free pixels only lie on horizontal runs, and the
    # points inside a run are left out (no area changes). Kept: the point at each distinct
    # defect value and, when the next threshold above it passes defect-free pixels only, the
    # point there (the end of a run), the same numbers as at those thresholds in the full curve.
    maps = np.asarray(maps)
    truth = binarize_masks(masks)
    defect, weights, regions = _defect_pixels(maps, truth)
    normal = _normal_values(maps, truth)
    if regions == 0 or normal.size == 0:
        raise ValueError("the PRO curve needs defect regions and defect-free pixels")
    order = np.argsort(-defect, kind="stable")
    defect, pro = defect[order], np.cumsum(weights[order]) / regions
    last_of_tie = np.append(np.diff(defect) != 0, True)
    levels, pro = defect[last_of_tie], pro[last_of_tie]  # distinct defect values, descending
    pro_above = np.concatenate([[0.0], pro[:-1]])  # PRO at the next threshold above each level
    passed = normal.size - np.searchsorted(normal, levels, side="left")  # normal >= level
    passed_above = normal.size - np.searchsorted(normal, levels, side="right")  # normal > level
    # defect-free values strictly between a level and the level above: a point just above it
    gap = passed_above > np.concatenate([[0], passed[:-1]])
    keep = np.stack([gap, np.ones_like(gap)], axis=1).ravel()
    fpr = np.stack([passed_above, passed], axis=1).ravel()[keep] / normal.size
    pro = np.stack([pro_above, pro], axis=1).ravel()[keep]
    pro = np.clip(pro, 0.0, 1.0)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]])


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the curve (x ascending) from x = 0 to x = limit, the curve
    interpolated linearly at the limit."""
    inside = x <= limit
    area = np.trapezoid(y[inside], x[inside])
    beyond = np.flatnonzero(~inside)
    if beyond.size:
        i = beyond[0]  # the first point past the limit; i >= 1 since x[0] = 0
        y_limit = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y[i - 1] + y_limit) * (limit - x[i - 1])
    return float(area)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by it (1.0 is perfect); nan when the
    test set has no defect region or no defect-free pixel."""
    try:
        fpr, pro = pro_curve(maps, masks)
    except ValueError:
        return float("nan")
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit
