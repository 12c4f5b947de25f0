"""Timing of infer.py's three stages per image, throughput and peak memory, printed as a report;
the same measurements also go to PaddlePaddle's auto_log when it is installed."""
import os
import platform
import resource
import time
from typing import Callable, Optional

STAGES = ("preprocess_time", "inference_time", "postprocess_time")


def peak_memory_mb() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0


def _auto_logger(model_name: str, precision: str, batch_size: int, data_shape: str,
                 run_config: dict, save_path: str):
    """auto_log.AutoLogger when the package is importable, else None."""
    try:
        import auto_log
    except ImportError:
        return None
    return auto_log.AutoLogger(
        model_name=model_name, model_precision=precision, batch_size=batch_size,
        data_shape=data_shape, save_path=save_path, inference_config=run_config,
        pids=os.getpid(), process_name=None,
        gpu_ids=0 if run_config.get("runtime_device") == "gpu" else None,
        time_keys=list(STAGES), warmup=0)


class Benchmark:
    """Call start() before a batch, stamp() after its preprocess and inference, end(n) after its
    postprocess; report() prints the totals per image."""

    def __init__(self, model_name: str, precision: str, batch_size: int, data_shape: str,
                 run_config: dict, auto_log_path: Optional[str] = None):
        self.description = {**run_config, "model_name": model_name, "precision": precision,
                            "batch_size": batch_size, "data_shape": data_shape}
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.images = self.batches = 0
        self._stage = 0
        self._last = None
        self.auto_log = _auto_logger(model_name, precision, batch_size, data_shape, run_config,
                                     auto_log_path)

    def start(self) -> None:
        self._stage, self._last = 0, time.perf_counter()
        if self.auto_log:
            self.auto_log.times.start()

    def stamp(self) -> None:
        now = time.perf_counter()
        self.totals[STAGES[self._stage]] += now - self._last
        self._stage, self._last = self._stage + 1, now
        if self.auto_log:
            self.auto_log.times.stamp()

    def end(self, batch_images: int) -> None:
        self.totals[STAGES[-1]] += time.perf_counter() - self._last
        self.images += batch_images
        self.batches += 1
        if self.auto_log:
            self.auto_log.times.end(stamp=True)

    def report(self, log: Callable[[str], None] = print) -> None:
        d, images = self.description, max(self.images, 1)
        total, inference = sum(self.totals.values()), self.totals["inference_time"]
        log("----------------------- KDAD inference benchmark -----------------------")
        log(f"model_name: {d['model_name']}, precision: {d['precision']}, "
            f"input_shape: {d['data_shape']}")
        log(f"runtime: {d.get('runtime', 'Paddle Inference')}, "
            f"runtime_device: {d['runtime_device']}, enable_mkldnn: {d['enable_mkldnn']}, "
            f"cpu_math_library_num_threads: {d['cpu_math_library_num_threads']}, "
            f"enable_tensorrt: {d['enable_tensorrt']}")
        log(f"batch_size: {d['batch_size']}, data_num: {self.images} images in {self.batches} "
            "batches (after one untimed warm-up batch)")
        log(", ".join(f"{stage}(ms): {1000.0 * seconds / images:.2f}"
                      for stage, seconds in self.totals.items()) + " per image")
        log(f"total time spent(s): {total:.3f}, throughput: {self.images / max(total, 1e-9):.2f} "
            f"images/s end to end, {self.images / max(inference, 1e-9):.2f} images/s inference")
        log(f"peak memory (max RSS): {peak_memory_mb():.1f} MB")
        if self.auto_log:
            self.auto_log.report()
        else:
            log("auto_log is not installed (optional): the report above is the full measurement")
