"""Image ROC-AUC and the paper's localization AUC against brute-force computations."""
import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import auc

from metrics import PaperLocalizationAUC, image_auroc, loc_auc_paper
from utils.errors import UserError


def mann_whitney_auc(labels, scores):
    """P(score of an anomalous image > score of a normal one), ties counting 1/2."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def reference_loc_auc(maps, masks):
    """The reference algorithm: for t = 0.000 ... 0.999 binarise, open each binary map with the
    3x3 ellipse, TPR / FPR with the soft masks, then the trapezoid rule."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    tpr, fpr = [], []
    for t in [0.001 * i for i in range(1000)]:
        binary = (maps >= t).astype(np.uint8)
        opened = np.stack([cv2.morphologyEx(b, cv2.MORPH_OPEN, kernel) for b in binary])
        opened = opened.astype(np.float64)
        tpr.append(np.sum(opened * masks) / np.sum(masks))
        false_positive = np.sum(opened * (1 - masks))
        true_negative = np.sum((1 - opened) * (1 - masks))
        fpr.append(false_positive / (false_positive + true_negative))
    return auc(fpr, tpr)


def blurred_maps(rng, n, h, w, low=0.0, high=1.0, sigma=2.0):
    maps = np.stack([gaussian_filter(rng.random((h, w)), sigma) for _ in range(n)])
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    return (low + (high - low) * maps).astype(np.float32)


def soft_masks(rng, n, h, w):
    masks = np.zeros((n, h, w))
    for mask in masks:
        y, x = rng.integers(2, h - 6), rng.integers(2, w - 6)
        mask[y:y + rng.integers(3, 6), x:x + rng.integers(3, 6)] = 1.0
    return np.clip(np.stack([gaussian_filter(m, 0.7) for m in masks]) * 1.3, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_image_auroc_equals_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 30))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 5, n).astype(float) if seed % 2 else rng.standard_normal(n)
    assert image_auroc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores),
                                                       abs=1e-12)


def test_image_auroc_direction_anomalous_is_positive():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]) == 0.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], [1]])
def test_image_auroc_needs_both_classes(labels):
    with pytest.raises(UserError):
        image_auroc(np.array(labels), np.arange(len(labels), dtype=float))


@pytest.mark.parametrize("seed", range(4))
def test_loc_auc_equals_the_thousand_threshold_loop(seed):
    rng = np.random.default_rng(seed)
    maps = blurred_maps(rng, 3, 24, 28)
    masks = soft_masks(rng, 3, 24, 28)
    assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks),
                                                       abs=1e-12)


def test_loc_auc_with_maps_outside_0_1_and_binary_masks(rng):
    maps = blurred_maps(rng, 3, 20, 20, low=-0.4, high=1.6)
    masks = (soft_masks(rng, 3, 20, 20) > 0.5).astype(np.float64)
    assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks), abs=1e-12)


def test_loc_auc_with_constant_maps(rng):
    masks = soft_masks(rng, 2, 16, 16)
    for value in (0.0, 0.3, 1.0, 1.7, -0.2):
        maps = np.full((2, 16, 16), value, np.float32)
        assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks),
                                                           abs=1e-12)
    maps = np.stack([np.full((16, 16), 0.2), blurred_maps(rng, 1, 16, 16)[0]]).astype(np.float32)
    assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks), abs=1e-12)


def test_loc_auc_with_a_one_pixel_defect(rng):
    maps = blurred_maps(rng, 2, 16, 16)
    masks = np.zeros((2, 16, 16))
    masks[0, 7, 9] = 1.0
    masks[1, 0, 0] = 0.6  # a soft corner pixel
    assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks), abs=1e-12)
    # a single hot pixel is removed by the opening at every threshold above its neighbours
    maps = np.full((2, 16, 16), 0.1, np.float32)
    maps[0, 7, 9] = 0.9
    assert loc_auc_paper(maps, masks) == pytest.approx(reference_loc_auc(maps, masks), abs=1e-12)


def test_loc_auc_of_a_hand_made_case():
    """Three vertical bands of a 10x10 map; the hand-derived curve is
    (1, 1) -> (2/3, 8/11) -> (0, 8/11) -> (0, 0), whose area is 17/22.

    cols 0-3: map 0.95, mask 1      cols 4-6: map 0.55, mask 0      cols 7-9: map 0.25, mask 0.5
    defect area 40 + 15 = 55, normal area 30 + 15 = 45.
    t <= 0.25: all pixels on -> (1, 1); 0.25 < t <= 0.55: cols 0-6 on -> TPR 40/55, FPR 30/45;
    0.55 < t <= 0.95: cols 0-3 on -> TPR 40/55, FPR 0; above: nothing.
    A lone 0.99 pixel inside the middle band is removed by the opening (else it would add the
    point (1/45, 0) and change the area).
    """
    maps = np.zeros((1, 10, 10), np.float32)
    masks = np.zeros((1, 10, 10))
    maps[0, :, 0:4], masks[0, :, 0:4] = 0.95, 1.0
    maps[0, :, 4:7], masks[0, :, 4:7] = 0.55, 0.0
    maps[0, :, 7:10], masks[0, :, 7:10] = 0.25, 0.5
    maps[0, 5, 5] = 0.99
    assert loc_auc_paper(maps, masks) == pytest.approx(17 / 22, abs=1e-12)
    metric = PaperLocalizationAUC()
    metric.update(maps, masks)
    fpr, tpr = metric.curve()
    assert len(fpr) == len(tpr) == 1000
    assert (fpr[0], tpr[0]) == (1.0, 1.0)
    assert sorted(set(zip(np.round(fpr, 12), np.round(tpr, 12)))) == sorted(
        {(1.0, 1.0), (round(2 / 3, 12), round(8 / 11, 12)), (0.0, round(8 / 11, 12)),
         (0.0, 0.0)})


def test_batches_accumulate_to_the_same_auc(rng):
    maps = blurred_maps(rng, 5, 20, 24, low=-0.1, high=1.2)
    masks = soft_masks(rng, 5, 20, 24)
    whole = PaperLocalizationAUC()
    whole.update(maps, masks)
    parts = PaperLocalizationAUC()
    parts.update(maps[:2], masks[:2])
    parts.update(maps[2:], masks[2:])
    assert parts.compute() == pytest.approx(whole.compute(), abs=1e-12)
    np.testing.assert_allclose(parts.curve(), whole.curve(), atol=1e-12)
    assert whole.compute() == pytest.approx(reference_loc_auc(maps, masks), abs=1e-12)


def test_loc_auc_without_defect_pixels_is_nan():
    assert np.isnan(loc_auc_paper(np.zeros((1, 8, 8)), np.zeros((1, 8, 8))))
    assert np.isnan(PaperLocalizationAUC().compute())
