"""Pixel ROC-AUC, AUPRO and image F1-max against brute-force computations, and test.py's outputs.

The brute-force versions share nothing with metrics.py: pairs of pixels for the ROC-AUC, a flood
fill for the regions and a loop over every distinct threshold for the PRO curve and the F1.
"""
import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import test as test_script
from metrics import aupro, image_f1_max, loc_auc_paper, pixel_auroc, pro_curve

LIMIT = 0.3


# ---- brute force --------------------------------------------------------------------------

def brute_pixel_auroc(maps, masks):
    """P(defect pixel > normal pixel) + P(tie) / 2 over all pairs."""
    truth = masks >= 0.5
    positive, negative = maps[truth][:, None], maps[~truth][None, :]
    return float(((positive > negative) + 0.5 * (positive == negative)).mean())


def brute_regions(mask):
    """8-connected regions of a binary mask, by flood fill: a list of pixel lists."""
    seen, regions = np.zeros(mask.shape, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, region = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] \
                            and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(region)
    return regions


def brute_aupro(maps, masks, limit=LIMIT):
    truth = masks >= 0.5
    regions = [(i, region) for i, mask in enumerate(truth) for region in brute_regions(mask)]
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        hit = maps >= threshold
        fpr = hit[~truth].mean()
        pro = np.mean([np.mean([hit[i][p] for p in region]) for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area / limit


def brute_f1(labels, scores, threshold):
    called = scores >= threshold
    tp = np.sum(called & (labels == 1))
    return 2 * tp / (2 * tp + np.sum(called & (labels == 0)) + np.sum(~called & (labels == 1)))


# ---- random cases -------------------------------------------------------------------------

@st.composite
def maps_and_masks(draw, levels=None):
    """Maps with many ties (a few levels) or continuous values, and masks with at least one
    defect pixel and one normal pixel; some masks soft (values around 0.5)."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    if levels is None:
        levels = draw(st.sampled_from([3, 50, 0]))
    if levels:
        maps = draw(arrays(np.int64, (n, h, w), elements=st.integers(0, levels - 1))) / levels
    else:
        maps = draw(arrays(np.float64, (n, h, w),
                           elements=st.floats(0, 1, allow_nan=False, width=32)))
    masks = draw(arrays(np.float64, (n, h, w), elements=st.sampled_from([0.0, 0.4, 0.5, 1.0])))
    truth = masks >= 0.5
    if truth.all() or not truth.any():
        masks.flat[0] = 0.0 if truth.all() else 1.0
    return maps, masks


@settings(max_examples=60, deadline=None)
@given(maps_and_masks())
def test_pixel_auroc_equals_pairwise_count(case):
    maps, masks = case
    assert pixel_auroc(maps, masks) == pytest.approx(brute_pixel_auroc(maps, masks), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(maps_and_masks())
def test_aupro_equals_threshold_by_threshold_curve(case):
    maps, masks = case
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(
    arrays(np.int64, n, elements=st.integers(0, 1)),
    arrays(np.int64, n, elements=st.integers(0, 6)))))
def test_image_f1_max_equals_best_threshold(case):
    labels, scores = case
    scores = scores / 3.0
    if not labels.any():
        assert all(math.isnan(v) for v in image_f1_max(labels, scores))
        return
    best = max(brute_f1(labels, scores, t) for t in np.unique(scores))
    f1, threshold = image_f1_max(labels, scores)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert brute_f1(labels, scores, threshold) == pytest.approx(best, abs=1e-12)
    assert threshold in scores


# ---- edge cases ---------------------------------------------------------------------------

def test_constant_maps():
    masks = np.zeros((2, 5, 5))
    masks[0, 1:3, 1:3] = 1
    maps = np.full((2, 5, 5), 0.3)
    assert pixel_auroc(maps, masks) == 0.5
    # every pixel at once: the curve is the straight line (0, 0) -> (1, 1)
    assert aupro(maps, masks) == pytest.approx(LIMIT / 2)
    f1, threshold = image_f1_max(np.array([0, 1, 1]), np.array([2.0, 2.0, 2.0]))
    assert f1 == pytest.approx(0.8) and threshold == 2.0


def test_one_pixel_regions_count_as_much_as_large_ones():
    masks = np.zeros((1, 8, 8))
    masks[0, 0, 0] = 1  # a 1-pixel region ...
    masks[0, 4:8, 4:8] = 1  # ... and a 16-pixel one
    maps = np.zeros((1, 8, 8))
    maps[0, 0, 0] = 1.0  # only the tiny region is found, with no false positive
    fpr, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0  # half of the regions, not 1/17
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks))
    assert pixel_auroc(maps, masks) == pytest.approx(brute_pixel_auroc(maps, masks))


def test_diagonal_pixels_are_one_region():
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # 8-connected: one region of two pixels
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    _, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.5)  # one region half covered (two regions would give 0.5 too
    maps[0, 1, 1] = 0.5  # ... so tell them apart at the second threshold)
    _, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.5) and pro[2] == pytest.approx(1.0)


def test_anomalous_image_without_defect_pixels_counts_as_normal():
    """A defect type whose masks are empty: its pixels are defect-free pixels."""
    rng = np.random.default_rng(1)
    maps = rng.random((3, 6, 6))
    masks = np.zeros((3, 6, 6))
    masks[1, 2:4, 2:4] = 1  # image 2 is 'anomalous' but has an empty mask
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks))
    assert pixel_auroc(maps, masks) == pytest.approx(brute_pixel_auroc(maps, masks))


def test_without_defect_or_normal_pixels_the_metrics_are_undefined():
    maps = np.random.default_rng(0).random((2, 4, 4))
    for masks in (np.zeros((2, 4, 4)), np.ones((2, 4, 4))):
        assert math.isnan(pixel_auroc(maps, masks)) and math.isnan(aupro(maps, masks))


def test_masks_are_binarised_at_one_half():
    maps = np.array([[[0.9, 0.8, 0.1, 0.0]]])
    masks = np.array([[[0.5, 0.49, 0.2, 0.0]]])  # only the first pixel is a defect pixel
    assert pixel_auroc(maps, masks) == 1.0
    assert aupro(maps, masks) == pytest.approx(1.0)


# ---- test.py writes them all, and maps.npz holds what they were computed from --------------

@pytest.mark.slow
def test_test_script_metrics_agree_with_saved_maps(trained_model, tmp_path):
    out = tmp_path / "results"
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(out),
                      "--save_maps", "--no_pictures", "-o", f"log_dir={tmp_path}"])
    metrics = json.load(open(out / "metrics.json"))
    saved = np.load(out / "maps.npz")
    assert sorted(saved.files) == ["labels", "maps", "masks", "paths"]
    with open(out / "scores.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert saved["paths"].tolist() == [row["path"] for row in rows]  # the same test order
    assert saved["labels"].tolist() == [int(row["label"]) for row in rows]
    maps, masks, labels = saved["maps"], saved["masks"], saved["labels"]
    assert maps.shape == masks.shape == (12, 64, 64)
    assert not masks[labels == 0].any() and masks[labels == 1].max() == 1.0
    assert metrics["pixel_auroc"] == pytest.approx(brute_pixel_auroc(maps, masks), abs=1e-9)
    assert metrics["aupro"] == pytest.approx(aupro(maps, masks))
    assert metrics["loc_auc_paper"] == pytest.approx(
        loc_auc_paper(maps[labels == 1], masks[labels == 1]))
    scores = np.array([float(row["score"]) for row in rows])
    assert metrics["image_f1_max"] == pytest.approx(
        max(brute_f1(labels, scores, t) for t in scores))
    assert {"image_auroc", "image_f1_threshold"} <= set(metrics)
