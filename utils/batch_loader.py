"""Loaders whose errors reach the caller: a broken image stops the script with its own message.

Paddle's DataLoader reads batches in a background thread (or worker processes). An exception
there, such as the UserError that names an unreadable image, kills that thread and leaves the
main thread waiting forever (num_workers 0), or surfaces as a generic "Blocking queue is killed"
SystemError (num_workers > 0). `BatchLoader` reads in this process, one batch ahead in a
thread, and re-raises whatever reading raised; `WorkerLoader` keeps Paddle's worker processes and,
when one of them fails, reads the failed batch again here so that its error names the file.

Both yield tensors in host memory: their consumers (the expert cache, evaluation) read them as
NumPy arrays or feed them to a predictor, so a copy to the GPU and back would be wasted.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paddle
from paddle.io.dataloader.collate import default_collate_fn


def _to_tensors(batch) -> list:
    return [paddle.to_tensor(field, place=paddle.CPUPlace()) if isinstance(field, np.ndarray)
            else field for field in batch]


class BatchLoader:
    """Batches of `dataset` as lists of tensors, like paddle.io.DataLoader(return_list=True)."""

    def __init__(self, dataset: paddle.io.Dataset, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.batch_sampler = paddle.io.BatchSampler(dataset, shuffle=shuffle,
                                                    batch_size=batch_size, drop_last=drop_last)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _read(self, indices) -> list:
        return default_collate_fn([self.dataset[index] for index in indices])

    def __iter__(self):
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = None
            for indices in self.batch_sampler:
                upcoming = reader.submit(self._read, indices)
                if pending is not None:
                    yield _to_tensors(pending.result())  # re-raises what reading raised
                pending = upcoming
            if pending is not None:
                yield _to_tensors(pending.result())


class WorkerLoader:
    """paddle.io.DataLoader with worker processes; a worker's failure is raised again here,
    from the item that caused it."""

    def __init__(self, dataset: paddle.io.Dataset, batch_size: int, num_workers: int,
                 shuffle: bool = False):
        self.loader = paddle.io.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                           num_workers=num_workers, drop_last=False,
                                           return_list=True, use_shared_memory=True,
                                           places=paddle.CPUPlace())
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        delivered = 0
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception:
                _stop_workers(batches)
                self._reraise_from(delivered)
                raise
            delivered += 1
            yield batch

    def _reraise_from(self, delivered: int) -> None:
        """Read the batches that were not delivered (all of them if shuffled) here: the bad item
        raises its own error."""
        start = 0 if self.shuffle else delivered
        for position, indices in enumerate(self.loader.batch_sampler):
            if position >= start:
                for index in indices:
                    self.dataset[index]


def _stop_workers(batches) -> None:
    """End the worker processes of a failed Paddle iterator. Left to itself it would wait for
    them without a time limit when it is garbage-collected, and a worker whose neighbour failed
    can be blocked for ever."""
    shutdown = getattr(batches, "_try_shutdown_all", None)
    if shutdown is not None:
        shutdown(1)  # seconds to wait for each worker
    for worker in getattr(batches, "_workers", []):
        if worker.is_alive():
            worker.terminate()


def make_loader(dataset: paddle.io.Dataset, batch_size: int, num_workers: int = 0,
                shuffle: bool = False):
    """A loader over `dataset` whose errors reach the caller."""
    if num_workers == 0:
        return BatchLoader(dataset, batch_size, shuffle)
    return WorkerLoader(dataset, batch_size, num_workers, shuffle)
