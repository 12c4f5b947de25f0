"""Evaluation streams: with maps not kept, its peak memory does not grow with the test set.

A cheap proxy of the real measurement (benchmark.py runs test.py on 50 and 500 images and reads
the peak RSS): NumPy's allocations are traced, the networks replaced by a map generator that
makes a fresh [B, H, W] map per batch.
"""
import tracemalloc

import numpy as np
import paddle

from test_functions import evaluate

BATCH, SIZE = 8, 64


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
            yield (paddle.zeros([BATCH, 3, 4, 4]), paddle.to_tensor(labels),
                   paddle.to_tensor(masks), paddle.arange(b * BATCH, (b + 1) * BATCH))


def map_generator(images: np.ndarray):
    n = len(images)
    return np.random.default_rng(n).random(n), np.random.default_rng(1).random(
        (n, SIZE, SIZE)).astype(np.float32)


def peak_bytes(batches: int, keep_maps: bool) -> int:
    tracemalloc.start()
    try:
        result = evaluate(FakeLoader(batches), map_generator=map_generator, keep_maps=keep_maps)
        assert len(result.scores) == batches * BATCH and np.isfinite(result.loc_auc.compute())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_flat_when_maps_are_not_kept():
    per_batch = 2 * BATCH * SIZE * SIZE * 4  # one batch of maps and masks, float32
    small, large = peak_bytes(4, keep_maps=False), peak_bytes(40, keep_maps=False)
    assert large - small < per_batch
    # the measurement sees growth where there is some: keeping the maps costs ~36 batches more
    kept = peak_bytes(40, keep_maps=True)
    assert kept - large > 30 * per_batch


def test_maps_are_kept_only_when_asked():
    result = evaluate(FakeLoader(3), map_generator=map_generator, keep_maps=True)
    assert result.maps.shape == (3 * BATCH, SIZE, SIZE) and result.masks.shape == result.maps.shape
    assert evaluate(FakeLoader(3), map_generator=map_generator, keep_maps=False).maps is None
