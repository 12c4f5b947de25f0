"""Copying a batch from host memory to the device it is computed on.

What training caches (images, the expert's outputs) stays in host memory; only each step's batch
is copied. On a GPU the batch is staged in pinned (page-locked) memory and copied without making
the host wait, as paddle.io.DataLoader does with its batches, so the host keeps queueing the next
steps while the copy runs. Paddle does not keep the pinned source of such a copy alive until the
copy has run, and training never waits for the GPU within an epoch, so each staged batch is held
here until an event recorded after its copy has completed.
"""
from collections import deque
from typing import Callable, Optional

import numpy as np
import paddle


class PinnedCopy:
    """host array -> tensor on the current GPU, through pinned memory, without blocking the host."""

    def __init__(self, in_flight: int = 2):
        self.in_flight = in_flight  # staged batches whose copy may still be running
        self.pending = deque()

    def __call__(self, array: np.ndarray) -> paddle.Tensor:
        staged = paddle.to_tensor(np.ascontiguousarray(array), place=paddle.CUDAPinnedPlace())
        on_device = staged.cuda(blocking=False)
        copied = paddle.device.Event()
        copied.record()
        self.pending.append((copied, staged))
        while len(self.pending) > self.in_flight:
            event, _ = self.pending.popleft()
            event.synchronize()  # its copy has run: the pinned buffer may be freed
        return on_device


def batch_copier(device: str) -> Optional[Callable[[np.ndarray], paddle.Tensor]]:
    """How a host batch reaches `device` ('cpu', 'gpu:N', as paddle.get_device() names it): a
    PinnedCopy on a GPU; None on the CPU, where host memory is the device's own."""
    return None if device == "cpu" else PinnedCopy()
