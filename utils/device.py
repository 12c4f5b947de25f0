"""Picking the device at run time, so that the same code runs on paddlepaddle and paddlepaddle-gpu."""
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
    return device


def use_training_threads(config: dict, device: str) -> None:
    """Threads of the eager training step on CPU (`train_cpu_threads`, default 1): eager Paddle's
    CPU backward ran 2-2.5x slower with two math-library threads than with one on the 2-core
    machines measured (benchmark.py shows both). Paddle Inference keeps its own `cpu_threads`."""
    if device == "cpu":
        paddle.base.core.set_num_threads(config["train_cpu_threads"] or usable_cores())
