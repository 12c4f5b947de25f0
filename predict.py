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
from utils.config import LOCALIZATION_METHODS, add_config_args
from utils.device import setup_device
from utils.errors import report_user_errors
from utils.files import finish_commits
from utils.image_files import (check_folder_preprocessing, chunks, list_images,
                               picture_names)
from utils.predictions import (PREDICTIONS_CSV, Prediction, add_prediction_args,
                               check_prediction_args, choose_threshold, write_predictions_csv)
from utils.report import REPORT_FILE, ReportRow, Threshold, write_report
from utils.thumbnails import jpeg_bytes, strip
from utils.visualize import colour_range, display_image, save_prediction_figure


# --config and -o change how the model runs, never what it is.
RUN_CONFIG_HELP = ("YAML config whose run settings (device, engine, cpu_threads, eval_batch_size, "
                   "localization_method, smooth_grad_samples, ...) replace those of the "
                   "config.yaml saved beside --model_path; the model's own settings "
                   "(architecture, image size, lamda, expert) always come from that saved file")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Anomaly score, verdict and heatmap per image, from a trained cloner. "
                    "--model_path alone is enough: the model's settings come from the "
                    "config.yaml saved beside it.")
    parser.add_argument("--model_path", required=True,
                        help="cloner checkpoint, e.g. output/<class>/final_model.pdparams")
    add_prediction_args(parser, "output/predict", "the one stored in the checkpoint's .json")
    parser.add_argument("--localization_method", choices=LOCALIZATION_METHODS, default=None,
                        help="default: the one in the model's saved config")
    parser.add_argument("--report", action="store_true",
                        help=f"also write <save_dir>/{REPORT_FILE}: every image with its anomaly "
                             "map, score and verdict on one page, sorted by score")
    add_config_args(parser, data_args=False, config_help=RUN_CONFIG_HELP)
    args = parser.parse_args(argv)
    check_prediction_args(parser, args)
    return args


def predict(args: argparse.Namespace, log=print) -> list:
    """Predictions for every image of --image_path; writes the pictures and predictions.csv."""
    config, model_path = resolve_model(args)
    check_folder_preprocessing(config, model_path)
    if args.localization_method:
        config["localization_method"] = args.localization_method
    info = load_model_info(model_path)
    threshold = choose_threshold(info.get("image_threshold"), args.score_threshold,
                                 info_path(model_path))
    paths = list_images(args.image_path, exclude=args.save_dir)
    device = setup_device(config)
    expert, cloner, config = load_model(config, model_path, log, info=info)
    size, method = config["mvtec_img_size"], config["localization_method"]
    batch_size = args.batch_size or eval_batch_size(config)
    generator = MapGenerator(expert, cloner, config, device, [3, size, size], batch_size)
    pictures = dict(zip(paths, picture_names(paths, args.image_path)))
    shown_names = {path: os.path.relpath(path, args.image_path) if os.path.isdir(args.image_path)
                   else os.path.basename(path) for path in paths}
    finish_commits(args.save_dir, below=True)  # temporary files of a run that was killed
    predictions, rows = [], []
    for batch in chunks(paths, batch_size):
        scores, maps = generator(np.stack([load_image(path, size) for path in batch]))
        for path, score, anomaly_map in zip(batch, scores, maps):
            prediction = Prediction(path, float(score), threshold)
            picture = os.path.join(args.save_dir, pictures[path])
            image = display_image(path)
            save_prediction_figure(picture, image, anomaly_map, prediction, method,
                                   args.threshold)
            predictions.append(prediction)
            if args.report:
                rows.append(ReportRow(
                    shown_names[path], path, prediction.score,
                    prediction.anomalous, label=None, truth="", link=pictures[path],
                    thumbnail=jpeg_bytes(strip(image, anomaly_map,
                                               colour_range(anomaly_map, method)))))
            log(f"{path}: score {prediction.score:.6g} (threshold {threshold:.6g}) "
                f"{prediction.verdict} -> {picture}")
    csv_path = os.path.join(args.save_dir, PREDICTIONS_CSV)
    write_predictions_csv(csv_path, predictions)
    anomalous = sum(p.anomalous for p in predictions)
    log(f"{anomalous} of {len(predictions)} image(s) anomalous ({method} maps); wrote {csv_path}")
    if args.report:
        rule = ("--score_threshold" if args.score_threshold is not None
                else info.get("threshold_rule", "stored with the model"))
        report = write_report(
            os.path.join(args.save_dir, REPORT_FILE), f"predictions: {args.image_path}", rows,
            [Threshold(threshold, "threshold", rule, decides=True)],
            [("model", model_path), ("localization method", method),
             ("image path", args.image_path)])
        log(f"wrote {report}")
    return predictions


@report_user_errors
def main(argv=None) -> None:
    predict(parse_args(argv))


if __name__ == "__main__":
    main()
