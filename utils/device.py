"""Picking the device at run time, so that the same code runs on paddlepaddle and paddlepaddle-gpu."""
import ctypes
import os

import paddle

from utils.errors import UserError


def gpu_available() -> bool:
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset limit)."""
    return len(os.sched_getaffinity(0))


def cpu_thread_count(config: dict) -> int:
    return config["cpu_threads"] or usable_cores()


def setup_device(config: dict) -> str:
    """Set Paddle's device from `device` (auto: a GPU when there is one) and use all CPU cores
    (Paddle on CPU runs one thread unless told otherwise). Returns 'gpu' or 'cpu'."""
    device = config["device"]
    if device == "auto":
        device = "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise UserError("config key 'device' is 'gpu' but this Paddle has no usable GPU "
                        "(install paddlepaddle-gpu, or use -o device=cpu)")
    paddle.set_device(device)
    if device == "cpu":
        paddle.base.core.set_num_threads(cpu_thread_count(config))
        keep_freed_memory()
    return device


# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of returning it to
    the kernel. Paddle's CPU tensors come straight from malloc, which maps every block above
    32 MB afresh (a 128 px batch of 64 has many) and unmaps it when freed, so every training
    step paid for zero-filled pages again: batch 64 at 128 px trained 2-2.5x slower. The
    arithmetic is untouched; the resident memory stays at its peak. False where the C library is
    not glibc (nothing is changed there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def use_training_threads(config: dict, device: str, processes: int = 1) -> None:
    """Threads of the eager training step on CPU (`train_cpu_threads`, default 1; 0 picks the
    process's `cpu_threads`, i.e. its share of the cores among `processes` training processes or
    of a run_all.py slot, and 1 with `engine: eager`). The thread count changes the order of
    floating-point sums, so one thread keeps results reproducible across machines' core counts.
    With oneDNN convolutions two threads trained a 32 px batch 1.2-1.4x faster than one on the
    2-core machine measured, and 128 px at batch 8 no faster; with eager convolutions two were
    2-2.5x slower (benchmark.py shows both). Paddle Inference keeps its own `cpu_threads`."""
    if device != "cpu":
        return
    if config["engine"] == "eager":
        automatic = 1
    else:
        automatic = config["cpu_threads"] or max(1, usable_cores() // processes)
    paddle.base.core.set_num_threads(config["train_cpu_threads"] or automatic)
