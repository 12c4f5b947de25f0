"""Evaluation metrics: image ROC-AUC and the paper's localization AUC.

The paper's localization AUC binarises each map at t = 0.000, 0.001, ..., 0.999, applies a
morphological opening (3x3 ellipse) and sweeps TPR = sum(bin * gt) / sum(gt) against
FPR = sum(bin * (1 - gt)) / sum(1 - gt) over the defective test images (soft masks kept), AUC by
the trapezoid rule. Opening with a flat structuring element commutes with thresholding, so
"open(map >= t)" equals "grey_open(map) >= t": one grey opening per map and a histogram give all
1000 points at once, the same numbers as the 1000-fold loop.
"""
import cv2
import numpy as np
from sklearn.metrics import auc, roc_auc_score

from utils.errors import UserError

PAPER_THRESHOLDS = np.array([0.001 * i for i in range(1000)])
OPENING_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


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
    metric.update(maps, masks)
    return metric.compute()
