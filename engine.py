"""Running a layer on image batches: eagerly, or as a Paddle Inference predictor.

On a CPU, Paddle Inference with oneDNN runs VGG16 several times faster than eager Paddle, so
evaluation (scores, maps, the expert's outputs) goes through a predictor built from the very same
layer; `engine: eager` keeps everything eager. Both return NumPy arrays.
"""
import contextlib
import errno
import os
import sys
import tempfile
from typing import List, Sequence

import numpy as np
import paddle
from paddle import inference, nn

from utils.device import cpu_thread_count


class _Entry(nn.Layer):
    """A thin wrapper, so that exporting never turns the wrapped layer itself into a static one."""

    def __init__(self, layer: nn.Layer):
        super().__init__()
        self.layer = layer

    def forward(self, image):
        return self.layer(image)


@contextlib.contextmanager
def native_output_silenced():
    """Hide what Paddle's C++ side prints straight to the terminal while it builds a graph."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def export_layer(layer: nn.Layer, path_prefix: str, image_shape: Sequence[int]) -> str:
    """Save `layer` (in eval mode) as a static model for [N, *image_shape] float32 input named
    `image`; returns the model file (`.json` in Paddle 3, `.pdmodel` in Paddle 2)."""
    layer.eval()
    spec = paddle.static.InputSpec([None, *image_shape], "float32", "image")
    static = paddle.jit.to_static(_Entry(layer), input_spec=[spec], full_graph=True)
    with native_output_silenced():
        paddle.jit.save(static, path_prefix)
    _check_weights_written(layer, path_prefix + ".pdiparams")
    return find_model_file(path_prefix)


def _check_weights_written(layer: nn.Layer, params_file: str) -> None:
    """Paddle's C++ writer ignores a full disk and leaves a cut weights file: an OSError naming
    it when the file is shorter than the weights it must hold."""
    unique = {value.name: value for value in layer.state_dict().values()}  # shared layers once
    needed = sum(int(np.prod(value.shape)) * value.element_size() for value in unique.values())
    written = os.path.getsize(params_file) if os.path.isfile(params_file) else 0
    if written < needed:
        raise OSError(errno.ENOSPC, f"Paddle wrote {written} of the {needed} bytes of the weights "
                      "(is the disk full?)", params_file)


def find_model_file(path_prefix: str) -> str:
    for suffix in (".json", ".pdmodel"):
        if os.path.isfile(path_prefix + suffix):
            return path_prefix + suffix
    raise FileNotFoundError(f"no {path_prefix}.json or {path_prefix}.pdmodel")


def make_predictor(model_file: str, params_file: str, use_gpu: bool = False,
                   enable_mkldnn: bool = True, cpu_threads: int = 1, precision: str = "fp32",
                   use_tensorrt: bool = False, batch_size: int = 1, gpu_mem: int = 500):
    """A Paddle Inference predictor with the usual deployment switches."""
    config = inference.Config(model_file, params_file)
    if use_gpu:
        config.enable_use_gpu(gpu_mem, 0)
        if use_tensorrt:
            precision_type = {"fp16": inference.PrecisionType.Half,
                              "int8": inference.PrecisionType.Int8}.get(
                precision, inference.PrecisionType.Float32)
            config.enable_tensorrt_engine(precision_mode=precision_type,
                                          max_batch_size=batch_size)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(cpu_threads)
        if enable_mkldnn:
            config.enable_mkldnn()
            config.set_mkldnn_cache_capacity(10)
            # With oneDNN, Paddle 3's in-place buffer reuse overwrites values that later ops
            # (or the outputs) still read: score_gradients' arithmetic came out wrong.
            config.delete_pass("inplace_pass")
            if precision == "bf16":
                config.enable_mkldnn_bfloat16()
        else:
            config.disable_mkldnn()
    config.disable_glog_info()
    with native_output_silenced():
        return inference.create_predictor(config)


def run_predictor(predictor, images: np.ndarray) -> List[np.ndarray]:
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(images.shape)
    handle.copy_from_cpu(np.ascontiguousarray(images, dtype=np.float32))
    with native_output_silenced():  # oneDNN passes print notes at each new input shape
        predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu()
            for name in predictor.get_output_names()]


class EagerRunner:
    def __init__(self, layer: nn.Layer):
        self.layer = layer

    def __call__(self, images: np.ndarray) -> List[np.ndarray]:
        self.layer.eval()
        with paddle.no_grad():
            outputs = self.layer(paddle.to_tensor(images, dtype="float32"))
        return [output.numpy() for output in paddle.utils.flatten(outputs)]


class PredictorRunner:
    """The layer exported to a temporary folder and run by Paddle Inference (oneDNN on CPU).

    Weights are frozen at construction: build a new runner after the layer's weights change.
    """

    def __init__(self, layer: nn.Layer, image_shape: Sequence[int], use_gpu: bool,
                 cpu_threads: int):
        with tempfile.TemporaryDirectory(prefix="kdad-engine-") as folder:
            model_file = export_layer(layer, os.path.join(folder, "model"), image_shape)
            self.predictor = make_predictor(model_file, os.path.join(folder, "model.pdiparams"),
                                            use_gpu=use_gpu, cpu_threads=cpu_threads)

    def __call__(self, images: np.ndarray) -> List[np.ndarray]:
        return run_predictor(self.predictor, images)


def uses_predictor(config: dict, device: str) -> bool:
    return config["engine"] == "inference" or (config["engine"] == "auto" and device == "cpu")


def make_runner(layer: nn.Layer, config: dict, device: str, image_shape: Sequence[int]):
    """The fastest faithful way to run `layer` here: a oneDNN predictor on CPU, eager on GPU."""
    if uses_predictor(config, device):
        return PredictorRunner(layer, image_shape, use_gpu=(device == "gpu"),
                               cpu_threads=cpu_thread_count(config))
    return EagerRunner(layer)
