"""Score images with a trained cloner and draw where they look anomalous.

    python predict.py --image_path data/demo/demo/test/blob/000.png \
        --model_path output/demo/demo/final_model.pdparams --save_dir output/predict

For every image: the anomaly score, the verdict (anomalous when the score is above the image
threshold stored beside the checkpoint, or --score_threshold) and <save_dir>/<name>.png with the
input, the anomaly map and the overlay; <save_dir>/predictions.csv lists them all. Architecture,
image size and expert come from the checkpoint's saved config.
"""
import argparse
import os

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import numpy as np

from dataloader import eval_batch_size
from dataset import load_image
from test_functions import MapGenerator
from trained_model import load_model, resolve_model
from utils.checkpoint import info_path, load_model_info
from utils.config import LOCALIZATION_METHODS, MAX_BATCH_SIZE, add_config_args
from utils.device import setup_device
from utils.errors import report_user_errors
from utils.files import finish_commits
from utils.image_files import (check_folder_preprocessing, chunks, list_images,
                               picture_names)
from utils.predictions import Prediction, choose_threshold, write_predictions_csv
from utils.visualize import display_image, save_prediction_figure


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Anomaly score, verdict and heatmap per image.")
    parser.add_argument("--image_path", required=True, help="an image, or a folder of images")
    parser.add_argument("--model_path", required=True,
                        help="cloner checkpoint, e.g. output/<class>/final_model.pdparams")
    parser.add_argument("--save_dir", default="output/predict",
                        help="pictures and predictions.csv go here")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="heatmap display threshold in [0, 1]: the overlay shows map values "
                             "above it (feature_diff maps: above that fraction of the way from "
                             "the map's minimum to its maximum)")
    parser.add_argument("--score_threshold", type=float, default=None,
                        help="image threshold for the verdict (default: the one stored in the "
                             "checkpoint's .json)")
    parser.add_argument("--localization_method", choices=LOCALIZATION_METHODS, default=None,
                        help="default: the one in the model's saved config")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per batch (default: the config's eval_batch_size)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        parser.error(f"--batch_size must be in [1, {MAX_BATCH_SIZE}], got {args.batch_size}")
    return args


def predict(args: argparse.Namespace, log=print) -> list:
    """Predictions for every image of --image_path; writes the pictures and predictions.csv."""
    config, model_path = resolve_model(args)
    check_folder_preprocessing(config, model_path)
    if args.localization_method:
        config["localization_method"] = args.localization_method
    stored = load_model_info(model_path)
    threshold = choose_threshold(stored.get("image_threshold"), args.score_threshold,
                                 info_path(model_path))
    paths = list_images(args.image_path, exclude=args.save_dir)
    device = setup_device(config)
    expert, cloner, config = load_model(config, model_path, log, info=stored)
    size, method = config["mvtec_img_size"], config["localization_method"]
    batch_size = args.batch_size or eval_batch_size(config)
    generator = MapGenerator(expert, cloner, config, device, [3, size, size], batch_size)
    pictures = dict(zip(paths, picture_names(paths, args.image_path)))
    finish_commits(args.save_dir, below=True)  # temporary files of a run that was killed
    predictions = []
    for batch in chunks(paths, batch_size):
        scores, maps = generator(np.stack([load_image(path, size) for path in batch]))
        for path, score, anomaly_map in zip(batch, scores, maps):
            prediction = Prediction(path, float(score), threshold)
            picture = os.path.join(args.save_dir, pictures[path])
            save_prediction_figure(picture, display_image(path), anomaly_map, prediction, method,
                                   args.threshold)
            predictions.append(prediction)
            log(f"{path}: score {prediction.score:.6g} (threshold {threshold:.6g}) "
                f"{prediction.verdict} -> {picture}")
    csv_path = os.path.join(args.save_dir, "predictions.csv")
    write_predictions_csv(csv_path, predictions)
    anomalous = sum(p.anomalous for p in predictions)
    log(f"{anomalous} of {len(predictions)} image(s) anomalous ({method} maps); wrote {csv_path}")
    return predictions


@report_user_errors
def main(argv=None) -> None:
    predict(parse_args(argv))


if __name__ == "__main__":
    main()
