"""Running a layer on image batches: eagerly, or as a Paddle Inference predictor.

On a CPU, Paddle Inference with oneDNN runs VGG16 several times faster than eager Paddle, so
evaluation (scores, maps, the expert's outputs) goes through a predictor built from the very same
layer; `engine: eager` keeps everything eager. Both return NumPy arrays.

TensorRT: Paddle 3 exports PIR models (model.json), and Paddle Inference's
Config.enable_tensorrt_engine only acts on Paddle 2 programs (.pdmodel); a PIR predictor never
reads it (AnalysisPredictor::OptimizeInferencePirProgram) and would run plain GPU kernels. So a
PIR model is converted first with paddle.tensorrt and explicit min/opt/max input shapes, as
PaddleX does: its TensorRT-able subgraphs become `pd_op.tensorrt_engine` operators, which are
counted and reported.
"""
import contextlib
import errno
import os
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import paddle
from paddle import inference, nn

from utils.device import cpu_thread_count
from utils.errors import UserError

# what paddle.tensorrt.export.PrecisionMode calls our --precision values; int8 needs a model
# with quantize/dequantize operators, which export_model.py does not write
TENSORRT_PRECISIONS = {"fp32": "FP32", "fp16": "FP16"}
TENSORRT_ENGINE_OP = "pd_op.tensorrt_engine"


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


def current_gpu_id() -> int:
    """The GPU this process computes on. paddle.distributed.launch gives each rank its own through
    FLAGS_selected_gpus, which paddle.set_device('gpu') follows (so does Paddle Inference here)."""
    device = paddle.device.get_device()
    if device.startswith("gpu:"):
        return int(device.split(":")[1])
    return int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])


def tensorrt_input_shapes(image_shape: Sequence[int], batch_size: int) -> Dict[str, List[int]]:
    """min/opt/max shapes of the input `image` for the TensorRT engines: one image up to
    `batch_size` images, tuned for full batches."""
    return {"min": [1, *image_shape], "opt": [batch_size, *image_shape],
            "max": [batch_size, *image_shape]}


def convert_for_tensorrt(model_file: str, folder: str, image_shape: Sequence[int],
                         batch_size: int, precision: str) -> Tuple[str, str, dict]:
    """Convert a PIR model with paddle.tensorrt into `folder`: (model file, weights file,
    {'engines': TensorRT engines, 'operators_left': operators that stay with Paddle})."""
    if not model_file.endswith(".json"):
        raise UserError(f"TensorRT here converts Paddle 3 models (model.json), not {model_file}: "
                        "export the model again with this Paddle")
    if precision not in TENSORRT_PRECISIONS:
        raise UserError(f"TensorRT {precision} needs a quantized model, which export_model.py "
                        "does not write: use --precision fp16 or fp32")
    try:
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert
    except (ImportError, OSError) as error:  # no paddle.tensorrt, tensorrt or libnvinfer
        raise UserError("--use_tensorrt needs paddlepaddle-gpu built with TensorRT and the "
                        f"TensorRT Python package ({type(error).__name__}: {error})") from None
    shapes = tensorrt_input_shapes(image_shape, batch_size)
    trt_input = Input(min_input_shape=tuple(shapes["min"]), optim_input_shape=tuple(shapes["opt"]),
                      max_input_shape=tuple(shapes["max"]), input_data_type="float32")
    trt_config = TensorRTConfig(inputs=[trt_input])
    trt_config.precision_mode = getattr(PrecisionMode, TENSORRT_PRECISIONS[precision])
    trt_config.save_model_dir = os.path.join(folder, "model")
    try:
        with native_output_silenced():
            program = convert(model_file, trt_config)
    except Exception as error:  # a converter's failure, with Paddle's many-line message
        message = str(error).strip().splitlines()
        raise UserError(f"TensorRT could not convert {model_file} ({type(error).__name__}: "
                        f"{message[0] if message else ''})") from None
    names = [op.name() for op in program.global_block().ops]
    engines = names.count(TENSORRT_ENGINE_OP)
    if engines == 0:
        raise UserError(f"TensorRT took none of the operators of {model_file}: run without "
                        "--use_tensorrt")
    left = sum(name.startswith("pd_op.") and name not in (
        TENSORRT_ENGINE_OP, "pd_op.data", "pd_op.feed", "pd_op.fetch") for name in names)
    return (trt_config.save_model_dir + ".json", trt_config.save_model_dir + ".pdiparams",
            {"engines": engines, "operators_left": left})


def build_predictor(model_file: str, params_file: str, use_gpu: bool = False,
                    enable_mkldnn: bool = True, cpu_threads: int = 1, precision: str = "fp32",
                    use_tensorrt: bool = False, batch_size: int = 1, gpu_mem: int = 500,
                    gpu_id: int = None, image_shape: Sequence[int] = None):
    """A Paddle Inference predictor with the usual deployment switches, and what was applied:
    {'runtime', 'device', 'precision', 'enable_mkldnn', 'tensorrt' (None, or the engines and the
    operators left to Paddle), 'summary' (one line)}. `image_shape` [3, S, S] is needed for
    TensorRT; the predictor runs on `gpu_id` (default: this process's GPU, current_gpu_id())."""
    applied = {"runtime": "Paddle Inference", "device": "cpu", "precision": "fp32",
               "enable_mkldnn": False, "tensorrt": None}
    tensorrt = use_gpu and use_tensorrt
    with tempfile.TemporaryDirectory(prefix="kdad-tensorrt-") if tensorrt else \
            contextlib.nullcontext() as folder:
        if tensorrt:
            model_file, params_file, applied["tensorrt"] = convert_for_tensorrt(
                model_file, folder, image_shape, batch_size, precision)
            applied["precision"] = precision
        config = inference.Config(model_file, params_file)
        if use_gpu:
            gpu_id = current_gpu_id() if gpu_id is None else gpu_id
            config.enable_use_gpu(gpu_mem, gpu_id)
            applied["device"] = f"gpu:{gpu_id}"
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
                    # Paddle keeps float32 without a word on a CPU lacking AVX-512 (the same
                    # check as EnableMkldnnBfloat16 in analysis_config.cc)
                    applied["precision"] = "bf16" if paddle.base.core.supports_bfloat16() \
                        else "fp32"
                applied["enable_mkldnn"] = True
            else:
                config.disable_mkldnn()
        config.disable_glog_info()
        with native_output_silenced():
            predictor = inference.create_predictor(config)
    applied["summary"] = _predictor_summary(applied, cpu_threads)
    return predictor, applied


def _predictor_summary(applied: dict, cpu_threads: int) -> str:
    """e.g. 'Paddle Inference on gpu:1, TensorRT fp16 (3 engine(s), 2 operator(s) left to
    Paddle)' or 'Paddle Inference on cpu, oneDNN, 4 thread(s), fp32'."""
    parts = [f"Paddle Inference on {applied['device']}"]
    if applied["device"] == "cpu":
        parts += (["oneDNN"] if applied["enable_mkldnn"] else []) + [f"{cpu_threads} thread(s)"]
    trt = applied["tensorrt"]
    parts.append(applied["precision"] if trt is None else
                 f"TensorRT {applied['precision']} ({trt['engines']} engine(s), "
                 f"{trt['operators_left']} operator(s) left to Paddle)")
    return ", ".join(parts)


def make_predictor(*args, **kwargs):
    """A Paddle Inference predictor (build_predictor's, without its report)."""
    return build_predictor(*args, **kwargs)[0]


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
