"""ONNX Runtime sessions for an exported model.onnx, as engine.py builds Paddle Inference
predictors; onnxruntime is optional (requirements-extras.txt)."""
from typing import List

import numpy as np

from utils.errors import UserError
from utils.optional import import_optional

ONNX_SUFFIX = ".onnx"


def is_onnx(model_file: str) -> bool:
    return model_file.lower().endswith(ONNX_SUFFIX)


def onnxruntime_module(model_file: str):
    return import_optional("onnxruntime", f"running {model_file}")


def make_session(model_file: str, use_gpu: bool = False, cpu_threads: int = 1):
    """An InferenceSession on the CPU (or CUDA with onnxruntime-gpu), notes kept off stderr."""
    ort = onnxruntime_module(model_file)
    providers = ["CPUExecutionProvider"]
    if use_gpu:
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise UserError(f"--use_gpu True, but this onnxruntime has no CUDA provider (it has "
                            f"{', '.join(available)}); install onnxruntime-gpu, or pass "
                            "--use_gpu False")
        providers = ["CUDAExecutionProvider", *providers]
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notes about folded constants
    return ort.InferenceSession(model_file, options, providers=providers)


def session_applied(session, model_file: str, cpu_threads: int) -> dict:
    """What an ONNX Runtime session applies, in the vocabulary of engine.build_predictor's report."""
    runtime = f"ONNX Runtime {onnxruntime_module(model_file).__version__}"
    device = "gpu:0" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
    threads = f", {cpu_threads} thread(s)" if device == "cpu" else ""
    return {"runtime": runtime, "device": device, "precision": "fp32", "enable_mkldnn": False,
            "tensorrt": None, "summary": f"{runtime} on {device}{threads}, fp32"}


def run_session(session, images: np.ndarray) -> List[np.ndarray]:
    """The session's outputs for a float32 [N, 3, S, S] batch, in the model's output order."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    return session.run(None, feed)
