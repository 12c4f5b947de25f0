"""Run an exported KDAD model: score, verdict and heatmap per image, with Paddle Inference
(model.json / model.pdmodel) or with ONNX Runtime (model.onnx), chosen by the model file.

    python infer.py --model_file output/demo/inference/model.json \
        --image_path data/demo/demo/test --save_dir output/demo/infer
    python infer.py --model_file output/demo/onnx/model.onnx \
        --image_path data/demo/demo/test --save_dir output/demo/infer_onnx

Preprocessing is training's (RGB, PIL bilinear resize to the exported size, [0, 1]); the size,
the map kind and the image threshold come from the inference.yml that export_model.py wrote beside
the model. Writes <save_dir>/predictions.csv (path,score,threshold,anomalous) and one picture per
image, as predict.py does.
"""
import argparse
import os
import time
from typing import List, Tuple

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import numpy as np

from dataset import load_image
from engine import build_predictor, find_model_file, run_predictor
from utils.benchmark import Benchmark
from utils.config import MAX_THREADS
from utils.device import gpu_available, usable_cores
from utils.errors import UserError, report_user_errors
from utils.export_info import (checked_export_files, export_info_path,
                               read_export_info)
from utils.files import finish_commits
from utils.image_files import chunks, list_images, picture_names
from utils.onnx_runtime import is_onnx, make_session, run_session, session_applied
from utils.predictions import (PREDICTIONS_CSV, Prediction, add_prediction_args,
                               check_prediction_args, choose_threshold, write_predictions_csv)
from utils.visualize import display_image, save_prediction_figure

PRECISIONS = ("fp32", "fp16", "int8", "bf16")


def str2bool(text: str) -> bool:
    """True/False flags as TIPC passes them (`--use_gpu=False`)."""
    value = text.strip().lower()
    if value in ("true", "t", "yes", "1"):
        return True
    if value in ("false", "f", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Paddle Inference or ONNX Runtime on an exported KDAD model.")
    parser.add_argument("--model_file", required=True,
                        help="model.json (Paddle 3) or model.pdmodel (Paddle 2), either name "
                             "finding the other when only that one exists; or model.onnx, run "
                             "with ONNX Runtime")
    parser.add_argument("--params_file", default=None,
                        help="default: model.pdiparams beside the model file")
    add_prediction_args(parser, "output/infer", "inference.yml's", batch_size=1)
    parser.add_argument("--use_gpu", type=str2bool, default=False)
    parser.add_argument("--enable_mkldnn", type=str2bool, default=True,
                        help="oneDNN on CPU (several times faster); Paddle Inference only")
    parser.add_argument("--cpu_threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: CPU with oneDNN; fp16: GPU with TensorRT (int8 is refused: "
                             "it needs a quantized model)")
    parser.add_argument("--use_tensorrt", type=str2bool, default=False)
    parser.add_argument("--gpu_mem", type=int, default=500, help="initial GPU memory (MB)")
    parser.add_argument("--enable_benchmark", type=str2bool, default=False,
                        help="time preprocess / inference / postprocess, report memory")
    args = parser.parse_args(argv)
    check_prediction_args(parser, args)
    if args.cpu_threads is not None and not 1 <= args.cpu_threads <= MAX_THREADS:
        parser.error(f"--cpu_threads must be in [1, {MAX_THREADS}], got {args.cpu_threads}")
    if args.cpu_threads is None:
        args.cpu_threads = usable_cores()
    return args


def check_options(args: argparse.Namespace) -> None:
    """Combinations the runtime cannot honour are errors, not silent fallbacks."""
    if is_onnx(args.model_file):
        if args.use_tensorrt or args.precision != "fp32":
            raise UserError("--use_tensorrt and --precision other than fp32 apply to Paddle "
                            f"Inference; ONNX Runtime runs {args.model_file} in fp32")
        return
    if args.use_gpu and not gpu_available():
        raise UserError("--use_gpu True, but this Paddle build has no usable GPU (install "
                        "paddlepaddle-gpu, or pass --use_gpu False)")
    if args.use_tensorrt and not args.use_gpu:
        raise UserError("--use_tensorrt True needs --use_gpu True")
    if args.precision in ("fp16", "int8") and not args.use_tensorrt:
        raise UserError(f"--precision {args.precision} needs --use_gpu True --use_tensorrt True")
    if args.precision == "bf16" and (args.use_gpu or not args.enable_mkldnn):
        raise UserError("--precision bf16 runs on CPU with --enable_mkldnn True")


def resolve_model_files(model_file: str, params_file: str = None, log=print) -> Tuple[str, str]:
    """(graph file, weights file): `model.pdmodel` and `model.json` stand for each other; a
    model.onnx holds its weights (None)."""
    if is_onnx(model_file):
        if not os.path.isfile(model_file):
            raise UserError(f"model file not found: {model_file}")
        return model_file, None
    prefix, extension = os.path.splitext(model_file)
    if not os.path.isfile(model_file):
        try:
            found = find_model_file(prefix)
        except FileNotFoundError:
            found = None
        if found is None or extension not in (".json", ".pdmodel"):
            raise UserError(f"model file not found: {model_file}")
        log(f"note: {model_file} does not exist; using {found} (Paddle 3 writes model.json, "
            "Paddle 2 model.pdmodel)")
        model_file, prefix = found, os.path.splitext(found)[0]
    params_file = params_file or prefix + ".pdiparams"
    if not os.path.isfile(params_file):
        raise UserError(f"weights file not found: {params_file}")
    return model_file, params_file


def create_runner(args: argparse.Namespace, model_file: str, params_file: str, size: int):
    """(images -> the model's outputs, what was applied): ONNX Runtime for a model.onnx, else a
    Paddle Inference predictor with the command line's switches (engine.build_predictor); a
    broken model is one line."""
    try:
        if is_onnx(model_file):
            session = make_session(model_file, args.use_gpu, args.cpu_threads)
            return (lambda images: run_session(session, images)), session_applied(
                session, model_file, args.cpu_threads)
        predictor, applied = build_predictor(
            model_file, params_file, use_gpu=args.use_gpu, enable_mkldnn=args.enable_mkldnn,
            cpu_threads=args.cpu_threads, precision=args.precision,
            use_tensorrt=args.use_tensorrt, batch_size=args.batch_size, gpu_mem=args.gpu_mem,
            image_shape=[3, size, size])
        return (lambda images: run_predictor(predictor, images)), applied
    except UserError:
        raise
    except Exception as error:  # Paddle and ONNX Runtime raise many types, many-line messages
        message = str(error).strip().splitlines()
        weights = f" with {params_file}" if params_file else ""
        raise UserError(f"cannot load {model_file}{weights} "
                        f"({type(error).__name__}: {message[0] if message else ''})") from None


def split_outputs(outputs: List[np.ndarray], size: int,
                  source: str) -> Tuple[np.ndarray, np.ndarray]:
    """(scores [N], maps [N, S, S]) from the predictor's outputs, told apart by their shapes."""
    scores = [o for o in outputs if o.ndim == 1]
    maps = [o for o in outputs if o.ndim == 3]
    if len(scores) != 1 or len(maps) != 1:
        raise UserError(f"{source} outputs shapes {[list(o.shape) for o in outputs]}; expected "
                        "a score [N] and an anomaly map [N, S, S] (export with export_model.py)")
    if maps[0].shape[1:] != (size, size):
        raise UserError(f"{source} outputs {list(maps[0].shape[1:])} maps but its inference.yml "
                        f"says img_size {size}")
    return scores[0], maps[0]


def run_config(args: argparse.Namespace, applied: dict) -> dict:
    """The settings that were applied (engine.build_predictor, session_applied), in auto_log's
    vocabulary, and the runtime."""
    return {"runtime_device": applied["device"].split(":")[0], "ir_optim": True,
            "enable_tensorrt": applied["tensorrt"] is not None,
            "precision": applied["precision"], "enable_mkldnn": applied["enable_mkldnn"],
            "cpu_math_library_num_threads": args.cpu_threads, "runtime": applied["runtime"]}


def infer(args: argparse.Namespace, log=print) -> dict:
    """Scores and maps of every input image; writes predictions.csv and the pictures."""
    check_options(args)
    model_file, params_file = resolve_model_files(args.model_file, args.params_file, log)
    info = read_export_info(model_file)
    run_files = checked_export_files(info, model_file, params_file)
    size, method = info["img_size"], info["localization_method"]
    threshold = choose_threshold(info["image_threshold"], args.score_threshold,
                                 export_info_path(model_file))
    paths = list_images(args.image_path, exclude=args.save_dir)
    pictures = picture_names(paths, args.image_path)
    finish_commits(args.save_dir, below=True)  # temporary files of a run that was killed
    run_model, applied = create_runner(args, *run_files, size)
    log(f"predictor: {applied['summary']}")
    benchmark = None
    if args.enable_benchmark:
        benchmark = Benchmark("KDAD", applied["precision"], args.batch_size,
                              f"[N, 3, {size}, {size}]", run_config(args, applied),
                              os.path.join(args.save_dir, "auto_log.log"))
        run_model(np.stack([load_image(p, size) for p in paths[:args.batch_size]]))
    predictions, all_maps, started = [], [], time.perf_counter()
    for start, batch in zip(range(0, len(paths), args.batch_size), chunks(paths, args.batch_size)):
        if benchmark:
            benchmark.start()
        images = np.stack([load_image(path, size) for path in batch])
        if benchmark:
            benchmark.stamp()
        scores, maps = split_outputs(run_model(images), size, model_file)
        if benchmark:
            benchmark.stamp()
        for offset, (path, score, anomaly_map) in enumerate(zip(batch, scores, maps)):
            prediction = Prediction(path, float(score), threshold)
            picture = os.path.join(args.save_dir, pictures[start + offset])
            save_prediction_figure(picture, display_image(path), anomaly_map, prediction, method,
                                   args.threshold)
            predictions.append(prediction)
            log(f"{path}: score {prediction.score:.6g} (threshold {threshold:.6g}) "
                f"{prediction.verdict}")
        all_maps.append(maps)
        if benchmark:
            benchmark.end(len(batch))
    csv_path = os.path.join(args.save_dir, PREDICTIONS_CSV)
    write_predictions_csv(csv_path, predictions)
    log(f"{sum(p.anomalous for p in predictions)} of {len(predictions)} image(s) anomalous; "
        f"wrote {csv_path} and {len(predictions)} picture(s) in "
        f"{time.perf_counter() - started:.1f} s")
    if benchmark:
        benchmark.report(log)
    return {"predictions": predictions, "maps": np.concatenate(all_maps), "info": info,
            "predictor": applied}


@report_user_errors
def main(argv=None) -> None:
    infer(parse_args(argv))


if __name__ == "__main__":
    main()
