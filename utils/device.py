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


def use_training_threads(config: dict, device: str) -> None:
    """Threads of the eager training step on CPU (`train_cpu_threads`, default 1): eager Paddle's
    CPU backward ran 2-2.5x slower with two math-library threads than with one on the 2-core
    machines measured (benchmark.py shows both). Paddle Inference keeps its own `cpu_threads`."""
    if device == "cpu":
        paddle.base.core.set_num_threads(config["train_cpu_threads"] or usable_cores())
