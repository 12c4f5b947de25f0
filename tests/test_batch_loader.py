"""Loaders: the same batches as Paddle's DataLoader, and a failing item's error reaches the caller
(Paddle's own loader hangs for ever with num_workers 0)."""
import threading

import numpy as np
import paddle
import pytest

from dataloader import build_loader
from utils.batch_loader import BatchLoader, WorkerLoader
from utils.errors import UserError


class Items(paddle.io.Dataset):
    """(image, label, mask, index) items whose values encode the index; item `bad` raises."""

    def __init__(self, count: int = 11, bad: int = None):
        super().__init__()
        self.count, self.bad = count, bad

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index == self.bad:
            raise UserError(f"cannot read image item{index}.png: broken")
        image = np.full((3, 4, 4), index / 10, np.float32)
        return image, np.int64(index % 2), np.full((4, 4), index, np.float32), np.int64(index)


def batches_of(loader):
    return [[field.numpy() for field in batch] for batch in loader]


def test_batches_equal_paddles_dataloader():
    dataset = Items()
    expected = batches_of(paddle.io.DataLoader(dataset, batch_size=4, return_list=True))
    for loader in (BatchLoader(dataset, 4), build_loader(dataset, 4)):
        got = batches_of(loader)
        assert len(got) == len(expected) == len(loader) == 3
        for ours, theirs in zip(got, expected):
            for a, b in zip(ours, theirs):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
    assert build_loader(dataset, 4).dataset is dataset


def iterate_in_thread(loader, timeout=60):
    """Iterate `loader` in a thread; returns what was raised (None) or 'hung'."""
    outcome = []

    def run():
        try:
            for _ in loader:
                pass
            outcome.append(None)
        except Exception as error:  # what the loader raised is the result
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else "hung"


@pytest.mark.parametrize("bad", [0, 5, 10])
def test_a_failing_item_raises_its_own_error(bad):
    outcome = iterate_in_thread(build_loader(Items(bad=bad), 4))
    assert isinstance(outcome, UserError), outcome
    assert f"item{bad}.png" in str(outcome)


@pytest.mark.parametrize("bad", [0, 10])
def test_a_failing_item_in_a_worker_raises_its_own_error(bad):
    """Paddle's worker processes report a generic SystemError; the item's own error is raised
    instead. (Paddle's multi-process loader must run in the main thread: no hang to guard.)"""
    with pytest.raises(UserError) as error:
        batches_of(build_loader(Items(bad=bad), 4, num_workers=2))
    assert f"item{bad}.png" in str(error.value)


def test_leaving_early_does_not_hang():
    loader = BatchLoader(Items(count=40), 4)
    for position, _ in enumerate(loader):
        if position == 2:
            break
    assert len(batches_of(loader)) == 10


def test_worker_loader_delivers_every_batch_in_order():
    got = batches_of(WorkerLoader(Items(), 4, num_workers=2))
    assert [list(batch[3]) for batch in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
