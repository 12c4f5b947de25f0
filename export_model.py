"""Export a trained cloner, its expert, the anomaly score and the anomaly map as ONE static model.

    python export_model.py --model_path output/demo/demo/final_model.pdparams \
        --save_dir output/demo/inference --localization_method gradients

Input `image`: float32 [N, 3, S, S] (RGB in [0, 1], S the model's mvtec_img_size); outputs: the
anomaly score [N] and the anomaly map [N, S, S]. Writes model.json (model.pdmodel with Paddle 2),
model.pdiparams and inference.yml (size, preprocessing, map kind, image threshold) so that
infer.py needs nothing else.
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
from utils.files import scratch_folder
from utils.image_files import check_folder_preprocessing
from utils.visualize import RAW_MAP_METHODS

MODEL_PREFIX = "model"
GRAPH_SUFFIXES = (".json", ".pdmodel")  # Paddle 3, Paddle 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export score + anomaly map as a static model.")
    parser.add_argument("--model_path", required=True,
                        help="cloner checkpoint, e.g. output/<class>/final_model.pdparams")
    parser.add_argument("--save_dir", default="output/inference",
                        help="model.json, model.pdiparams and inference.yml go here")
    parser.add_argument("--localization_method", choices=EXPORTABLE_METHODS, default=None,
                        help="anomaly map kind (default: the model's saved config, if exportable)")
    add_config_args(parser)
    return parser.parse_args(argv)


def export_info(config: dict, method: str, model_path: str, model_file: str,
                stored: dict = None) -> dict:
    """Everything infer.py needs to feed the model and read its outputs (`stored`: the
    checkpoint's .json, read here when not given)."""
    size = config["mvtec_img_size"]
    stored = load_model_info(model_path) if stored is None else stored
    threshold = stored.get("image_threshold")
    return {
        "model_name": "KDAD",
        "model_file": os.path.basename(model_file),
        "params_file": MODEL_PREFIX + ".pdiparams",
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
    layer = AnomalyMapModel(expert, cloner, config["lamda"], method, config["direction_loss_only"])
    prefix = os.path.join(args.save_dir, MODEL_PREFIX)
    # the graph, its weights and inference.yml replace the previous export as one transaction
    with scratch_folder(args.save_dir) as scratch:
        exported = export_layer(layer, os.path.join(scratch, MODEL_PREFIX), [3, size, size])
        model_file = prefix + os.path.splitext(exported)[1]
        info = export_info(config, method, model_path, model_file, stored)
        stale = [MODEL_PREFIX + suffix for suffix in GRAPH_SUFFIXES
                 if not exported.endswith(suffix)]
        info_file = write_export_info(args.save_dir, info, {
            os.path.basename(model_file): exported,
            MODEL_PREFIX + ".pdiparams": os.path.join(scratch, MODEL_PREFIX + ".pdiparams")},
            remove=stale)  # never leave a graph of another export beside it
    if info["image_threshold"] is None:
        log(f"note: {model_path} has no stored image threshold; infer.py will need "
            "--score_threshold")
    log(f"exported {method} model for [N, 3, {size}, {size}] input: {model_file}, "
        f"{prefix}.pdiparams, {info_file}")
    return model_file


@report_user_errors
def main(argv=None) -> None:
    export(parse_args(argv))


if __name__ == "__main__":
    main()
