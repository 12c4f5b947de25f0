"""Evaluation streams: its memory grows only by what it must keep, never by the images.

A cheap proxy of the real measurement (benchmark.py runs test.py on 50 and 500 images and reads
the peak RSS): NumPy's allocations are traced, the networks replaced by functions that make a
fresh batch of scores and [B, H, W] maps. Detection keeps one score per image; localization also
keeps every map and mask (the pixel metrics need all of them), nothing more.
"""
import tracemalloc

import numpy as np
import paddle

from test_functions import evaluate

BATCH, SIZE, IMAGE = 8, 64, 128


class FakeLoader:
    """`batches` batches of (images, labels, masks, indices), made on the fly like a DataLoader."""

    def __init__(self, batches: int):
        self.batches = batches
        self.dataset = type("Dataset", (), {"paths": [f"{i}.png" for i in range(batches * BATCH)]})

    def __iter__(self):
        rng = np.random.default_rng(0)
        for b in range(self.batches):
            labels = np.arange(BATCH) % 2
            masks = (rng.random((BATCH, SIZE, SIZE)) > 0.9).astype(np.float32) * labels[:, None,
                                                                                     None]
            yield (paddle.rand([BATCH, 3, IMAGE, IMAGE]), paddle.to_tensor(labels),
                   paddle.to_tensor(masks), paddle.arange(b * BATCH, (b + 1) * BATCH))


class FakeMapGenerator:
    method = "gradients"

    def __call__(self, images: np.ndarray):
        n = len(images)
        return (np.random.default_rng(n).random(n),
                np.random.default_rng(1).random((n, SIZE, SIZE)).astype(np.float32))


def scorer(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).mean(axis=1)


def peak_bytes(batches: int, **models) -> int:
    tracemalloc.start()
    try:
        result = evaluate(FakeLoader(batches), **models)
        assert len(result.scores) == batches * BATCH
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_detection_memory_is_flat():
    image_batch = BATCH * 3 * IMAGE * IMAGE * 4
    small, large = peak_bytes(4, scorer=scorer), peak_bytes(40, scorer=scorer)
    assert large - small < image_batch / 4  # 36 more batches of images: not one is kept


def test_localization_keeps_maps_and_masks_only():
    kept_per_batch = 2 * BATCH * SIZE * SIZE * 4  # one batch of maps and masks, float32
    small = peak_bytes(4, map_generator=FakeMapGenerator())
    large = peak_bytes(40, map_generator=FakeMapGenerator())
    # grows by the 36 batches of maps and masks (and the final concatenation), not by images
    assert 30 * kept_per_batch < large - small < 2 * 36 * kept_per_batch + kept_per_batch


def test_maps_are_kept_in_test_order():
    result = evaluate(FakeLoader(3), map_generator=FakeMapGenerator())
    assert result.maps.shape == (3 * BATCH, SIZE, SIZE) and result.masks.shape == result.maps.shape
    assert list(result.indices) == list(range(3 * BATCH))
