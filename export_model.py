"""Export a trained cloner, its expert, the anomaly score and the anomaly map as ONE static model.

    python export_model.py --model_path output/demo/demo/final_model.pdparams \
        --save_dir output/demo/inference --localization_method gradients
    python export_model.py --model_path output/demo/demo/final_model.pdparams \
        --save_dir output/demo/onnx --format onnx

Input `image`: float32 [N, 3, S, S] (RGB in [0, 1], S the model's mvtec_img_size); outputs: the
anomaly score [N] and the anomaly map [N, S, S]. Writes model.json (model.pdmodel with Paddle 2)
and model.pdiparams for Paddle Inference, or model.onnx (`--format onnx`, through paddle2onnx)
for ONNX Runtime, OpenVINO or TensorRT; and inference.yml (size, preprocessing, map kind, image
threshold) so that infer.py needs nothing else. A folder holds one exported model.
"""
import argparse
import os

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import paddle

from anomaly_map import EXPORTABLE_METHODS, AnomalyMapModel
from engine import export_layer
from trained_model import load_model, resolve_model
from utils.checkpoint import load_model_info
from utils.config import add_config_args
from utils.errors import UserError, report_user_errors
from utils.export_info import write_export_info
from utils.files import current_path, scratch_folder
from utils.image_files import check_folder_preprocessing
from utils.onnx_export import DEFAULT_OPSET, OPSET_RANGE, to_onnx
from utils.optional import require
from utils.visualize import RAW_MAP_METHODS

MODEL_PREFIX = "model"
PARAMS_FILE = MODEL_PREFIX + ".pdiparams"
FORMATS = ("paddle", "onnx")
# every file an export writes: each export removes the others', as inference.yml describes one
MODEL_SUFFIXES = (".json", ".pdmodel", ".pdiparams", ".onnx")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export score + anomaly map as a static model.")
    parser.add_argument("--model_path", required=True,
                        help="cloner checkpoint, e.g. output/<class>/final_model.pdparams")
    parser.add_argument("--save_dir", default="output/inference",
                        help="the model files and inference.yml go here")
    parser.add_argument("--localization_method", choices=EXPORTABLE_METHODS, default=None,
                        help="anomaly map kind (default: the model's saved config, if exportable)")
    parser.add_argument("--format", choices=FORMATS, default="paddle",
                        help="paddle: model.json + model.pdiparams for Paddle Inference; onnx: "
                             "model.onnx (needs paddle2onnx)")
    parser.add_argument("--opset_version", type=int, default=DEFAULT_OPSET,
                        help="lowest ONNX opset to write (--format onnx; raised when the graph "
                             f"needs more; default {DEFAULT_OPSET})")
    add_config_args(parser, data_args=False)
    args = parser.parse_args(argv)
    if not OPSET_RANGE[0] <= args.opset_version <= OPSET_RANGE[1]:
        parser.error(f"--opset_version must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]}, "
                     f"got {args.opset_version}")
    return args


def export_info(config: dict, method: str, model_path: str, model_file: str,
                stored: dict = None) -> dict:
    """Everything infer.py needs to feed the model and read its outputs (`stored`: the
    checkpoint's .json, read here when not given)."""
    size = config["mvtec_img_size"]
    stored = load_model_info(model_path) if stored is None else stored
    threshold = stored.get("image_threshold")
    onnx = model_file.endswith(".onnx")
    return {
        "model_name": "KDAD",
        "format": "onnx" if onnx else "paddle",
        "model_file": os.path.basename(model_file),
        "params_file": None if onnx else PARAMS_FILE,
        "img_size": size,
        "input": {"name": "image", "shape": [-1, 3, size, size], "dtype": "float32"},
        "outputs": {"score": "[N] anomaly score, higher is more anomalous",
                    "anomaly_map": f"[N, {size}, {size}]"},
        "preprocessing": {"color": "RGB", "resize": f"PIL bilinear to {size}x{size}",
                          "scale": "1/255 to [0, 1]", "normalize": "none"},
        "localization_method": method,
        "anomaly_map_range": ("raw discrepancy (comparable across images)"
                              if method in RAW_MAP_METHODS else "[0, 1] per image"),
        "image_threshold": None if threshold is None else float(threshold),
        "threshold_rule": stored.get("threshold_rule"),
        "lamda": config["lamda"],
        "direction_loss_only": config["direction_loss_only"],
        "source_model": model_path,
        "paddle_version": paddle.__version__,
    }


def export(args: argparse.Namespace, log=print) -> str:
    """Writes the static model and inference.yml; returns the model file."""
    onnx = args.format == "onnx"
    if onnx:
        require("paddle2onnx", "export_model.py --format onnx")
    config, model_path = resolve_model(args)
    check_folder_preprocessing(config, model_path)
    method = args.localization_method or config["localization_method"]
    if method not in EXPORTABLE_METHODS:
        raise UserError(f"localization_method {method!r} cannot be exported as one model (it "
                        "runs the network on many noisy or scaled copies of each image); use "
                        "--localization_method with one of " + ", ".join(EXPORTABLE_METHODS))
    paddle.set_device("cpu")
    stored = load_model_info(model_path)
    expert, cloner, config = load_model(config, model_path, log, info=stored)
    size = config["mvtec_img_size"]
    # the ONNX graph takes the max-pool backward's convertible form: the same numbers
    layer = AnomalyMapModel(expert, cloner, config["lamda"], method, config["direction_loss_only"],
                            max_pool_rule="switches" if onnx else "unpool")
    metadata = export_info(config, method, model_path, "model.onnx", stored) if onnx else None
    # the model files and inference.yml replace the previous export as one transaction
    with scratch_folder(args.save_dir) as scratch:
        written = write_model(layer, scratch, size, metadata, args.opset_version)
        model_file = os.path.join(args.save_dir, os.path.basename(written[0]))
        info = export_info(config, method, model_path, model_file, stored)
        if onnx:
            info["opset_version"] = onnx_opset(written[0])
        names = [os.path.basename(path) for path in written]
        stale = [MODEL_PREFIX + suffix for suffix in MODEL_SUFFIXES
                 if MODEL_PREFIX + suffix not in names
                 and os.path.isfile(current_path(os.path.join(args.save_dir,
                                                              MODEL_PREFIX + suffix)))]
        info_file = write_export_info(args.save_dir, info, dict(zip(names, written)),
                                      remove=stale)  # never leave another export's files
    removed = [name for name in stale if name.endswith(".onnx") != onnx]
    if removed:
        log(f"note: removed {', '.join(removed)} of an earlier export: a folder holds one model, "
            "which its inference.yml describes")
    if info["image_threshold"] is None:
        log(f"note: {model_path} has no stored image threshold; infer.py will need "
            "--score_threshold")
    files = [model_file] if onnx else [model_file, os.path.join(args.save_dir, PARAMS_FILE)]
    log(f"exported {method} model for [N, 3, {size}, {size}] input: {', '.join(files)}, "
        f"{info_file}")
    return model_file


def write_model(layer, folder: str, size: int, onnx_metadata: dict = None,
                opset: int = DEFAULT_OPSET) -> list:
    """Write the model into `folder` (a scratch folder): [graph, weights] for Paddle Inference,
    or [model.onnx] when `onnx_metadata` is given."""
    prefix = os.path.join(folder, MODEL_PREFIX)
    graph = export_layer(layer, prefix, [3, size, size])
    if onnx_metadata is None:
        return [graph, prefix + ".pdiparams"]
    to_onnx(graph, prefix + ".pdiparams", prefix + ".onnx", opset, onnx_metadata)
    return [prefix + ".onnx"]


def onnx_opset(model_file: str) -> int:
    """The default-domain opset that model.onnx declares."""
    import onnx  # installed with paddle2onnx

    model = onnx.load(model_file, load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


@report_user_errors
def main(argv=None) -> None:
    export(parse_args(argv))


if __name__ == "__main__":
    main()
