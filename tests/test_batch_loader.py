"""Loaders: the same batches as Paddle's DataLoader, and a failing item's error reaches the caller
(Paddle's own loader hangs for ever with num_workers 0)."""
import os
import subprocess
import sys
import threading

import numpy as np
import paddle
import pytest

from conftest import ROOT
from dataloader import build_loader
from utils.batch_loader import BatchLoader
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


WORKERS_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import utils.quiet
from test_batch_loader import Items, batches_of
from utils.batch_loader import WorkerLoader
from utils.errors import UserError
print([batch[3].tolist() for batch in batches_of(WorkerLoader(Items(), 4, num_workers=2))])
for bad in (0, 10):
    try:
        batches_of(WorkerLoader(Items(bad=bad), 4, num_workers=2))
    except UserError as error:
        print(error)
"""


def test_worker_processes_deliver_in_order_and_a_failure_raises_its_own_error():
    """With worker processes Paddle reports a generic SystemError; the failing item's own error
    is raised instead. Run in a fresh process: forking this test process, which has run Paddle
    with its thread pools, can leave a worker stuck."""
    script = WORKERS_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]",
        "cannot read image item0.png: broken", "cannot read image item10.png: broken"]


def test_leaving_early_does_not_hang():
    loader = BatchLoader(Items(count=40), 4)
    for position, _ in enumerate(loader):
        if position == 2:
            break
    assert len(batches_of(loader)) == 10


HOST_ONLY = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import utils.quiet
import paddle
from test_batch_loader import Items
from utils.batch_loader import BatchLoader, WorkerLoader


def current_device():  # as if the device were a GPU that must not receive evaluation batches
    raise AssertionError("a batch was placed on the current device")


paddle.tensor.creation._current_expected_place_ = current_device
paddle.io.reader._current_expected_place = current_device
for loader in (BatchLoader(Items(), 4), WorkerLoader(Items(), 4, num_workers=2)):
    print(all(field.place.is_cpu_place() for batch in loader for field in batch))
"""


@pytest.mark.slow
def test_batches_stay_in_host_memory_whatever_the_device():
    """Evaluation reads every batch as NumPy (or feeds it to a predictor): a copy to the GPU and
    back would be wasted, so both loaders place their tensors in host memory explicitly."""
    script = HOST_ONLY.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["True", "True"]
