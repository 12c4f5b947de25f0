"""Pixel ROC-AUC and AUPRO: the same values as the reference implementation below, with a few
bytes per pixel of extra memory where the reference needed 70-90; the paper's localization AUC
with memory that does not grow with the number of maps.

REFERENCE: `reference_pixel_auroc` and `reference_pro_curve` are a verbatim copy of the earlier
metrics.py code (sklearn's roc_auc_score on float64, float64 step arrays per pixel). They are kept
here only as the reference the current functions are compared with.
"""
import tracemalloc
from typing import Callable, Tuple

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from metrics import (AUPRO_FPR_LIMIT, REGION_CONNECTIVITY, PaperLocalizationAUC, area_up_to,
                     aupro, binarize_masks, loc_auc_paper, pixel_auroc, pro_curve)


# ---- REFERENCE: the earlier implementation, unchanged -------------------------------------

def reference_pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    truth = binarize_masks(masks).ravel()
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, np.asarray(maps, dtype=np.float64).ravel()))


def reference_pro_curve(maps: np.ndarray, masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    fpr_step = np.zeros(maps.shape)
    pro_step = np.zeros(maps.shape)
    regions = 0
    for i, mask in enumerate(binarize_masks(masks)):
        labelled, count = ndimage.label(mask, structure=REGION_CONNECTIVITY)
        sizes = np.bincount(labelled.ravel())
        fpr_step[i] = labelled == 0
        pro_step[i] = np.where(labelled > 0, 1.0 / sizes[labelled], 0.0)
        regions += count
    normal = fpr_step.sum()
    if regions == 0 or normal == 0:
        raise ValueError("the PRO curve needs defect regions and defect-free pixels")
    order = np.argsort(-maps.ravel(), kind="stable")
    values = maps.ravel()[order]
    fpr = np.cumsum(fpr_step.ravel()[order]) / normal
    pro = np.cumsum(pro_step.ravel()[order]) / regions
    last_of_tie = np.append(np.diff(values) != 0, True)
    fpr = np.clip(fpr[last_of_tie], 0.0, 1.0)
    pro = np.clip(pro[last_of_tie], 0.0, 1.0)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]])


def reference_aupro(maps: np.ndarray, masks: np.ndarray) -> float:
    try:
        fpr, pro = reference_pro_curve(maps, masks)
    except ValueError:
        return float("nan")
    return area_up_to(fpr, pro, AUPRO_FPR_LIMIT) / AUPRO_FPR_LIMIT


# ---- random cases with many ties ----------------------------------------------------------

MAP_KINDS = ("two_decimals", "three_levels", "constant", "continuous", "defects_on_top")


def random_case(seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """float32 maps [N, H, W] of one of MAP_KINDS, and masks with blobs, 1-pixel regions,
    soft values and images without defect pixels."""
    rng = np.random.default_rng(seed)
    n, h, w = rng.integers(1, 6), rng.integers(3, 20), rng.integers(3, 20)
    kind = MAP_KINDS[seed % len(MAP_KINDS)]
    masks = ndimage.uniform_filter(rng.random((n, h, w)), size=(1, 3, 3)) > rng.uniform(0.5, 0.7)
    masks = masks.astype(np.float32)
    masks[rng.random((n, h, w)) < 0.03] = 1.0  # scattered pixels: often 1-pixel regions
    masks[rng.random((n, h, w)) < 0.05] = rng.choice([0.4, 0.5])  # soft mask values
    masks[rng.random(n) < 0.3] = 0.0  # images without defect pixels
    if kind == "two_decimals":
        maps = np.round(rng.random((n, h, w)), 2)
    elif kind == "three_levels":
        maps = rng.integers(0, 3, (n, h, w)) / 3
    elif kind == "constant":
        maps = np.full((n, h, w), 0.25)
    elif kind == "continuous":
        maps = rng.random((n, h, w))
    else:  # defect pixels above all defect-free ones, ties among them
        maps = np.round(rng.random((n, h, w)) * 0.5 + 0.5 * (masks >= 0.5), 1)
    return maps.astype(np.float32), masks


def is_subsequence(points, of) -> bool:
    remaining = iter(of)
    return all(any(point == other for other in remaining) for point in points)


@pytest.mark.parametrize("seed", range(60))
def test_pixel_auroc_equals_reference(seed):
    maps, masks = random_case(seed)
    np.testing.assert_allclose(pixel_auroc(maps, masks), reference_pixel_auroc(maps, masks),
                               rtol=0, atol=1e-12)  # nan == nan


@pytest.mark.parametrize("seed", range(60))
def test_aupro_and_pro_curve_equal_reference(seed):
    maps, masks = random_case(seed)
    np.testing.assert_allclose(aupro(maps, masks), reference_aupro(maps, masks),
                               rtol=0, atol=1e-12)
    try:
        reference = reference_pro_curve(maps, masks)
    except ValueError:
        with pytest.raises(ValueError):
            pro_curve(maps, masks)
        return
    fpr, pro = pro_curve(maps, masks)
    # the same points, less those inside horizontal runs ...
    assert is_subsequence(list(zip(fpr, pro)), list(zip(*reference)))
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    # ... so the same curve: equal areas up to any FPR
    for limit in (0.01, 0.1, AUPRO_FPR_LIMIT, 0.5, 0.99, 1.0):
        assert area_up_to(fpr, pro, limit) == pytest.approx(area_up_to(*reference, limit),
                                                            abs=1e-12)


def test_non_finite_maps_are_rejected_like_the_reference():
    maps, masks = random_case(1)
    assert (masks >= 0.5).any() and (masks < 0.5).any()
    for value in (np.nan, np.inf):
        for where in (masks >= 0.5, masks < 0.5):
            bad = maps.copy()
            bad[np.argwhere(where)[0][0]][tuple(np.argwhere(where)[0][1:])] = value
            for metric in (pixel_auroc, reference_pixel_auroc):
                with pytest.raises(ValueError):
                    metric(bad, masks)


# ---- memory -------------------------------------------------------------------------------

MAX_BYTES_PER_PIXEL = 10  # float32 maps: a sorted copy of the defect-free values and two masks


def large_case() -> Tuple[np.ndarray, np.ndarray]:
    """60 float32 maps of 128 x 128 and masks (float32) with a few regions in 48 of them."""
    rng = np.random.default_rng(0)
    maps = rng.random((60, 128, 128), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=np.float32)
    for i in range(12, 60):
        for y, x in rng.integers(0, 110, (3, 2)):
            masks[i, y:y + rng.integers(1, 18), x:x + rng.integers(1, 18)] = 1.0
    maps[masks > 0] += 0.3
    return maps, masks


def peak_bytes(metric: Callable, *args) -> int:
    """Peak of the NumPy allocations made by metric(*args)."""
    tracemalloc.start()
    try:
        metric(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("metric,reference", [(pixel_auroc, reference_pixel_auroc),
                                              (aupro, reference_aupro)])
def test_extra_memory_is_a_few_bytes_per_pixel(metric, reference):
    maps, masks = large_case()
    assert metric(maps, masks) == pytest.approx(reference(maps, masks), abs=1e-12)
    new, old = (peak_bytes(m, maps, masks) / maps.size for m in (metric, reference))
    print(f"{metric.__name__}: {new:.1f} bytes per pixel, reference {old:.1f}")
    assert new < MAX_BYTES_PER_PIXEL < old


def test_paper_auc_memory_does_not_grow_with_the_maps():
    maps, masks = large_case()
    small, large = (peak_bytes(loc_auc_paper, maps[:n], masks[:n]) for n in (20, 60))
    print(f"loc_auc_paper: {small / 2**20:.1f} MB on 20 maps, {large / 2**20:.1f} MB on 60")
    assert large < 1.2 * small
    whole = PaperLocalizationAUC()  # one update for all maps: it grows, the test can see it
    assert peak_bytes(whole.update, maps, masks) > 2 * large
