"""Evaluate a trained cloner: detection and localization metrics, scores, maps and pictures.

    python test.py --config configs/config.yaml --dataset_root Dataset/MVTec --normal_class bottle
    python test.py --model_path output/bottle/final_model.pdparams --save_dir results/bottle
    python test.py --model_path output/bottle/final_model.pdparams --save_dir out --report

The model's own settings (architecture, image size, lamda, expert) come from the config.yaml that
training saved beside the checkpoint, so --model_path alone is enough.
"""
import argparse
import json
import math
import os
import time

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import numpy as np
from tqdm import tqdm

from dataloader import build_test_loader, input_size
from test_functions import Evaluation, MapGenerator, evaluate, evaluation_metrics, make_scorer
from trained_model import add_model_args, load_model, resolve_model
from utils import plots
from utils.checkpoint import load_model_info
from utils.csv_files import write_csv
from utils.device import setup_device
from utils.errors import UserError, report_user_errors
from utils.files import atomic_write, atomic_write_text, finish_commits, printable
from utils.logger import get_logger
from utils.report import REPORT_FILE, ReportRow, Threshold, write_report
from utils.thumbnails import jpeg_bytes, strip


def write_scores_csv(path: str, paths, labels, scores) -> None:
    """path,label,score (label 1 = anomalous), one row per test image."""
    write_csv(path, ("path", "label", "score"),
              ([printable(name), int(label), f"{score:.8g}"] for name, label, score in
               zip(paths, labels, scores)))


def save_maps_npz(path: str, result) -> None:
    def write(tmp):
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, maps=result.maps, masks=result.masks,
                                labels=result.labels, paths=np.array(result.paths))

    atomic_write(path, write)


def short_name(path: str) -> str:
    """The image's folder and file name, e.g. scratch/003.png (printable as UTF-8)."""
    return "/".join(printable(path).replace("\\", "/").split("/")[-2:])


def save_pictures(save_dir: str, result: Evaluation, dataset, metrics: dict,
                  model_path: str, title: str, log=print) -> list:
    """roc_curve.png, anomaly_maps.png (errors first) and, from the model's history.json,
    training_curves.png; returns the files written."""
    threshold = metrics.get("image_f1_threshold")
    written = [plots.plot_roc(result.labels, result.scores,
                              os.path.join(save_dir, plots.ROC_FILE), title, threshold)]
    rows, reasons = zip(*plots.example_rows(result.labels, result.scores))
    rows = list(rows)
    captions = [f"{short_name(result.paths[r])} ({why})" for r, why in zip(rows, reasons)]
    maps = result.maps[rows] if result.maps is not None else None
    map_range = colour_range(result) if maps is not None else (0.0, 1.0)
    written.append(plots.plot_examples(
        [dataset[int(result.indices[r])][0] for r in rows], result.labels[rows],
        result.scores[rows], captions,
        os.path.join(save_dir, plots.EXAMPLES_FILE), maps=maps,
        masks=result.masks[rows] if maps is not None else None, threshold=threshold,
        normalization=getattr(dataset, "normalization", None), map_range=map_range,
        title=title + ": errors at the F1-max threshold first"))
    history_path = os.path.join(os.path.dirname(model_path), "history.json")
    if os.path.isfile(history_path):
        with open(history_path, encoding="utf-8") as stream:
            history = json.load(stream)
        written.append(plots.plot_training_history(
            history, os.path.join(save_dir, plots.TRAINING_FILE), title))
    else:
        log(f"note: {history_path} not found; no training curves")
    return written


def colour_range(result: Evaluation) -> tuple:
    """The maps' shared colour scale: [0, 1] for gradient maps (scaled per image), the test
    set's range for raw discrepancies (feature_diff)."""
    if result.method == "feature_diff":
        return float(result.maps.min()), float(result.maps.max())
    return 0.0, 1.0


def report_thresholds(model_path: str, metrics: dict) -> list:
    """The model's stored threshold gives the verdicts (as predict.py and infer.py); the F1-max
    threshold of this test set is marked beside it, or gives them when the model stores none."""
    info = load_model_info(model_path)
    f1_threshold = metrics.get("image_f1_threshold")
    thresholds = []
    if info.get("image_threshold") is not None:
        thresholds.append(Threshold(float(info["image_threshold"]), "model threshold",
                                    info.get("threshold_rule", "stored with the model"),
                                    decides=True))
    if f1_threshold is not None and math.isfinite(f1_threshold):
        thresholds.append(Threshold(f1_threshold, "F1-max threshold",
                                    "the best F1 on this test set, chosen with its labels",
                                    decides=not thresholds, inclusive=True))
    return thresholds


def save_report(path: str, result: Evaluation, dataset, metrics: dict, summary: dict,
                title: str) -> str:
    """report.html: every test image with its map, score, verdict and ground truth."""
    thresholds = report_thresholds(summary["model_path"], metrics)
    decides = next(t for t in thresholds if t.decides)
    classes = getattr(dataset, "classes", None)  # the one-class datasets' class of each image
    normalization = getattr(dataset, "normalization", None)
    map_range = colour_range(result) if result.maps is not None else None
    rows = []
    for r in tqdm(range(len(result.labels)), desc="report", disable=None, leave=False):
        index = int(result.indices[r])
        image = plots.display_image(dataset[index][0], normalization)
        maps = (result.maps[r], map_range, result.masks[r]) if map_range else ()
        image_path = result.paths[r]
        truth = (f"class {classes[index]}" if classes is not None
                 else os.path.basename(os.path.dirname(image_path)))
        rows.append(ReportRow(
            name=short_name(image_path), path=image_path, score=float(result.scores[r]),
            anomalous=bool(decides.above(result.scores[r])),
            label=int(result.labels[r]), truth=truth, thumbnail=jpeg_bytes(strip(image, *maps)),
            link=os.path.relpath(image_path, os.path.dirname(os.path.abspath(path)))
            if os.path.isfile(image_path) else ""))
    names = [("image ROC-AUC", "image_auroc"), ("image F1-max", "image_f1_max"),
             ("localization AUC (paper's metric)", "loc_auc_paper"),
             ("pixel ROC-AUC", "pixel_auroc"), ("AUPRO (FPR <= 0.3)", "aupro")]
    shown = [(label, f"{metrics[key]:.4f}") for label, key in names
             if key in metrics and math.isfinite(metrics[key])]
    details = [("model", summary["model_path"]),
               ("localization method", summary["localization_method"] or "none (no masks)")]
    columns = "image | anomaly map | overlay (defect outlined)" if map_range else "image"
    return write_report(path, title, rows, thresholds, details, shown, columns)


def _json_safe(summary: dict) -> dict:
    """Undefined metrics (nan) as null, so that metrics.json is strict JSON."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in summary.items()}


def _metric_text(metrics: dict) -> str:
    names = [("image_f1_max", "image F1-max"), ("pixel_auroc", "pixel ROC-AUC"),
             ("aupro", "AUPRO (FPR <= 0.3)")]
    return ", ".join(f"{label} {metrics[key]:.4f}" for key, label in names if key in metrics)


def run_test(config: dict, model_path: str, save_dir: str = None, save_maps: bool = False,
             log=print, pictures: bool = True, report: bool = False) -> dict:
    device = setup_device(config)
    expert, cloner, config = load_model(config, model_path, log)
    loader = build_test_loader(config)
    dataset = loader.dataset
    size = input_size(config)
    localize = config["localization_test"] and getattr(dataset, "has_masks", False)
    progress = lambda batches: tqdm(batches, desc="test", disable=None, leave=False)
    started = time.perf_counter()
    if localize:
        generator = MapGenerator(expert, cloner, config, device, [3, size, size],
                                 loader.batch_size)
        result = evaluate(loader, map_generator=generator, progress=progress)
    else:
        if config["localization_test"]:
            log("note: no ground-truth masks for this dataset; localization metrics are skipped")
        scorer = make_scorer(expert, cloner, config, device, [3, size, size])
        result = evaluate(loader, scorer=scorer, progress=progress)
    seconds = time.perf_counter() - started  # networks built, run over the test set
    metrics = evaluation_metrics(result)
    category = config["normal_class"]
    log(f"{config['dataset_name']} '{category}': detection image ROC-AUC "
        f"{metrics['image_auroc']:.4f}"
        + (f", localization AUC (paper's metric, {config['localization_method']}) "
           f"{metrics['loc_auc_paper']:.4f}" if localize else ""))
    log(_metric_text(metrics))
    summary = {**metrics, "dataset": config["dataset_name"], "normal_class": category,
               "localization_method": config["localization_method"] if localize else None,
               "model_path": model_path, "num_images": int(len(result.labels)),
               "num_anomalous": int(result.labels.sum()), "seconds": round(seconds, 2)}
    if not localize:
        summary["note"] = ("localization metrics skipped: no ground-truth masks"
                           if config["localization_test"] else "localization_test is false")
    if save_dir:
        finish_commits(save_dir)  # temporary files of a run that was killed
        os.makedirs(save_dir, exist_ok=True)
        written = [os.path.join(save_dir, "scores.csv")]
        write_scores_csv(written[0], result.paths, result.labels, result.scores)
        if save_maps and result.maps is not None:
            written.append(os.path.join(save_dir, "maps.npz"))
            save_maps_npz(written[-1], result)
        if pictures:
            written += save_pictures(save_dir, result, dataset, metrics, model_path,
                                     f"{config['dataset_name']} '{category}'", log)
        if report:
            written.append(save_report(os.path.join(save_dir, REPORT_FILE), result, dataset,
                                       metrics, summary,
                                       f"{config['dataset_name']} '{category}': test report"))
        # written last: its presence marks a finished test (run_all.py relies on it)
        atomic_write_text(os.path.join(save_dir, "metrics.json"),
                          json.dumps(_json_safe(summary), indent=2) + "\n")
        names = ["metrics.json"] + [os.path.basename(path) for path in written]
        log(f"wrote {', '.join(names[:-1])} and {names[-1]} in {save_dir}")
    return {"summary": summary, "result": result}


@report_user_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description="Detection and localization test of a cloner.")
    add_model_args(parser)
    parser.add_argument("--save_dir", default=None,
                        help="write metrics.json, scores.csv (path,label,score) and the pictures "
                             "(roc_curve.png, anomaly_maps.png, training_curves.png) here")
    parser.add_argument("--save_maps", action="store_true",
                        help="also write maps.npz (maps, masks, labels, paths in test order)")
    parser.add_argument("--no_pictures", action="store_true", help="skip the pictures")
    parser.add_argument("--report", action="store_true",
                        help=f"also write {REPORT_FILE} in --save_dir: every test image with its "
                             "anomaly map, score, verdict and ground truth, sorted by score")
    args = parser.parse_args(argv)
    if args.report and not args.save_dir:
        raise UserError(f"--report needs --save_dir (the folder that gets {REPORT_FILE})")
    config, model_path = resolve_model(args)
    log = get_logger("test", os.path.join(config["log_dir"],
                                          f"{config['normal_class']}_test.log")).info
    run_test(config, model_path, args.save_dir, args.save_maps, log,
             pictures=not args.no_pictures, report=args.report)


if __name__ == "__main__":
    main()
