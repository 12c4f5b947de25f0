"""The expert's stage outputs for a whole split, computed once and reused every epoch.

Training has no augmentation and the expert is frozen, so its outputs for a training image never
change, yet they are most of a training step's FLOPs. Each image's outputs do not depend on the
other images of its batch, so losses are bit-identical to recomputing the expert every step
(`expert_cache: none`, kept as the reference variant). `float16` halves the memory (losses then
differ in the 4th significant digit); `disk` keeps the arrays in memory-mapped files. On a GPU
everything cached stays in host memory and only each step's batch is copied over
(utils/device_copy.py): a CIFAR-10 class at 224 px would otherwise hold gigabytes of GPU memory.
"""
import os
import tempfile
from typing import Callable, List, Tuple

import numpy as np
import paddle

from dataloader import build_loader
from utils.device_copy import batch_copier
from utils.errors import UserError
from utils.files import TMP_PREFIX


class ExpertCache:
    """Images (and, unless storage is 'none', the expert's four stage outputs) of a dataset."""

    def __init__(self, dataset, expert_runner: Callable, batch_size: int, storage: str = "memory",
                 folder: str = None, num_workers: int = 0, progress: Callable = None,
                 device: str = None, to_device: Callable = None):
        """`device`: where the steps run (paddle.get_device() by default); `to_device` copies a
        host batch there (utils/device_copy.batch_copier(device) by default, None on the CPU)."""
        self.expert_runner = expert_runner
        self.to_device = to_device or batch_copier(device or paddle.get_device())
        self.storage = storage
        self.batch_size = batch_size
        self._tmp = None
        loader = build_loader(dataset, batch_size, num_workers)
        images, labels, stages = None, [], None
        offset = 0
        for batch_images, batch_labels, _, _ in (progress or iter)(loader):
            batch_images = batch_images.numpy()
            if images is None:
                images = self._allocate("images", (len(dataset), *batch_images.shape[1:]),
                                        np.float32, folder)
            images[offset:offset + len(batch_images)] = batch_images
            if storage != "none":
                outputs = expert_runner(batch_images)
                if stages is None:
                    dtype = np.float16 if storage == "float16" else np.float32
                    stages = [self._allocate(f"stage{i + 1}", (len(dataset), *o.shape[1:]), dtype,
                                             folder) for i, o in enumerate(outputs)]
                for stage, output in zip(stages, outputs):
                    stage[offset:offset + len(batch_images)] = output
            labels.append(batch_labels.numpy())
            offset += len(batch_images)
        self.labels = np.concatenate(labels)
        if self.to_device is not None or storage in ("disk", "float16"):
            # NumPy indexing per batch: on a GPU only the batch is copied over; on the CPU for
            # disk and float16 (Paddle's CPU gather has no float16 kernel)
            self.images, self.stages = images, stages
        else:
            self.images = paddle.to_tensor(images)
            self.stages = [paddle.to_tensor(stage) for stage in stages] if stages else None

    def _allocate(self, name: str, shape: tuple, dtype, folder: str):
        if self.storage != "disk":
            return np.empty(shape, dtype=dtype)
        path = None
        try:
            if self._tmp is None:  # named for utils.files.finish_commits to remove after a crash
                self._tmp = tempfile.TemporaryDirectory(
                    prefix=f"{TMP_PREFIX}{os.getpid()}-expert-cache-", dir=folder)
            path = os.path.join(self._tmp.name, name + ".npy")
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            if hasattr(os, "posix_fallocate"):  # reserve the blocks now: writing a memory map
                with open(path, "rb+") as stream:  # on a full disk would kill the process
                    os.posix_fallocate(stream.fileno(), 0, os.path.getsize(path))
            return array
        except OSError as error:
            raise UserError(f"cannot write the expert cache {path or folder}: "
                            f"{error.strerror or error} (it needs "
                            f"{np.prod(shape) * np.dtype(dtype).itemsize / 2 ** 20:.0f} MiB; "
                            "free some space, or use expert_cache: memory)") from None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> Tuple[paddle.Tensor, List[paddle.Tensor]]:
        """Images [B, 3, H, W] and the expert's stage outputs for these dataset indices."""
        if isinstance(self.images, paddle.Tensor):
            index = indices if isinstance(indices, paddle.Tensor) else paddle.to_tensor(
                np.asarray(indices, dtype=np.int64))
            images = paddle.gather(self.images, index)
            if self.stages is None:  # the reference variant: run the expert again
                stages = [paddle.to_tensor(o) for o in self.expert_runner(images.numpy())]
            else:
                stages = [paddle.gather(stage, index) for stage in self.stages]
            return images, _float32(stages)
        order = indices.numpy() if isinstance(indices, paddle.Tensor) else np.asarray(indices)
        move = self.to_device or paddle.to_tensor
        images = self.images[order]
        if self.stages is None:  # the reference variant on a GPU: run the expert again
            stages = self.expert_runner(images)
        else:
            stages = [np.asarray(stage[order], dtype=np.float32) for stage in self.stages]
        return move(images), [move(stage) for stage in stages]

    def epoch(self, index_batches):
        """(images, stages) for each list of indices (e.g. a batch sampler's epoch); all the
        indices are copied to the device at once, so the steps do no host-to-device copy."""
        index_batches = list(index_batches)
        if not isinstance(self.images, paddle.Tensor) or not index_batches:
            yield from (self.batch(indices) for indices in index_batches)
            return
        flat = paddle.to_tensor(np.concatenate(index_batches).astype(np.int64))
        start = 0
        for indices in index_batches:
            yield self.batch(flat[start:start + len(indices)])
            start += len(indices)

    def batches(self, batch_size: int = None):
        """(images, stages) in dataset order."""
        size = batch_size or self.batch_size
        for start in range(0, len(self), size):
            yield self.batch(list(range(start, min(start + size, len(self)))))


def _float32(stages: List[paddle.Tensor]) -> List[paddle.Tensor]:
    return [stage.astype("float32") if stage.dtype != paddle.float32 else stage
            for stage in stages]
