"""Per-category results as Markdown tables (categories as columns, plus Mean) and JSON."""
import math
from typing import Dict, List, Optional

from utils.config import MVTEC_CATEGORIES

# The earlier Paddle port's column order and names for MVTec AD.
MVTEC_COLUMNS = ("bottle", "hazelnut", "capsule", "metal_nut", "leather", "pill", "wood",
                 "carpet", "tile", "grid", "cable", "transistor", "toothbrush", "screw", "zipper")
assert sorted(MVTEC_COLUMNS) == sorted(MVTEC_CATEGORIES)
# Reported per-category results (%, MVTec AD): the paper's code and the earlier Paddle port.
REPORTED = {
    "image_auroc": {
        "Paper / reference code": [99.39, 98.37, 80.46, 73.58, 95.05, 82.7, 94.29, 79.25, 91.57,
                                   78.01, 89.19, 85.55, 92.17, 83.31, 93.24, 87.74],
        "Earlier Paddle port": [99.29, 98.89, 81.17, 75.32, 95.01, 84.43, 94.12, 80.1, 92.5,
                                78.11, 89.43, 85.75, 92.5, 83.5, 94.51, 88.30]},
    "loc_auc_paper": {
        "Paper / reference code": [96.32, 94.62, 95.86, 86.38, 98.05, 89.63, 84.8, 95.64, 82.77,
                                   91.78, 82.4, 76.45, 96.12, 95.96, 93.9, 90.71],
        "Earlier Paddle port": [96.20, 94.32, 96.12, 86.59, 98.06, 89.98, 85.29, 95.69, 82.87,
                                91.84, 83.46, 76.49, 96.02, 96.20, 94.91, 90.94]},
}
STANDARD_METRICS = (("pixel_auroc", "Pixel ROC-AUC"), ("aupro", "AUPRO (FPR <= 0.3)"),
                    ("image_f1_max", "Image F1-max"))
METRICS = ("image_auroc", "loc_auc_paper") + tuple(key for key, _ in STANDARD_METRICS) + (
    "best_image_auroc",)
# The test-set ROC-AUC of the model that training kept as best on that same test set
# (best_model): an optimistic selection, shown apart from the final model's.
BEST_ROW = "This run, best-on-test model (optimistic)"


def column_order(dataset: str, categories: List[str]) -> List[str]:
    """MVTec AD in the earlier port's order (categories not run are left out), else as given."""
    if dataset == "mvtec":
        return [name for name in MVTEC_COLUMNS if name in categories]
    return list(categories)


def column_title(dataset: str, category) -> str:
    return str(category).replace("_", " ").title() if dataset == "mvtec" else str(category)


def _value(metrics: Optional[dict], key: str) -> Optional[float]:
    value = (metrics or {}).get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def mean_of(results: Dict[str, Optional[dict]], key: str) -> Optional[float]:
    """Mean over the categories that have the metric (a fraction); None when none has."""
    values = [_value(metrics, key) for metrics in results.values()]
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def _cell(value: Optional[float]) -> str:
    """A fraction as a percentage with two decimals, as the reported tables."""
    return "—" if value is None else f"{100.0 * value:.2f}"


def _mean_cell(results: Dict[str, Optional[dict]], key: str) -> str:
    present = sum(_value(metrics, key) is not None for metrics in results.values())
    cell = _cell(mean_of(results, key))
    return cell if present in (0, len(results)) else f"{cell} ({present}/{len(results)})"


def _table(header: str, columns: List[str], rows: List[List[str]]) -> List[str]:
    lines = [f"| {header} | " + " | ".join(columns) + " | Mean |",
             "|" + "---|" * (len(columns) + 2)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def results_markdown(dataset: str, results: Dict[str, Optional[dict]],
                     failed: Dict[str, str], setup: str) -> str:
    """The tables of one data set: detection, the paper's localization AUC, standard metrics.

    `results` maps each category to its metrics.json (None when it has none yet)."""
    order = column_order(dataset, list(results))
    titles = [column_title(dataset, category) for category in order]
    ordered = {category: results[category] for category in order}
    name = "MVTecAD" if dataset == "mvtec" else dataset
    complete = dataset == "mvtec" and len(order) == len(MVTEC_COLUMNS)
    lines = [f"# KDAD results on {name}", "", setup, ""]
    sections = [("image_auroc", f"Detection test on {name} (image ROC-AUC, %)"),
                ("loc_auc_paper", f"Localization test on {name} (the paper's localization AUC, %)")]
    for key, title in sections:
        if all(_value(metrics, key) is None for metrics in ordered.values()):
            continue
        rows = [[label] + [f"{v:.2f}" for v in values]
                for label, values in REPORTED.get(key, {}).items()] if complete else []
        rows.append(["This run"] + [_cell(_value(ordered[c], key)) for c in order]
                    + [_mean_cell(ordered, key)])
        if key == "image_auroc" and any(_value(m, "best_image_auroc") is not None
                                        for m in ordered.values()):
            rows.append([BEST_ROW] + [_cell(_value(ordered[c], "best_image_auroc"))
                                      for c in order] + [_mean_cell(ordered, "best_image_auroc")])
        lines += [f"### {title}", ""] + _table("Repo", titles, rows) + [""]
    rows = [[label] + [_cell(_value(ordered[c], key)) for c in order] + [_mean_cell(ordered, key)]
            for key, label in STANDARD_METRICS
            if any(_value(metrics, key) is not None for metrics in ordered.values())]
    if rows:
        lines += [f"### Standard metrics on {name} (this run, %)", ""]
        lines += _table("Metric", titles, rows) + [""]
    if failed:
        lines += ["### Failed categories", ""]
        lines += [f"- {category}: {error}" for category, error in failed.items()] + [""]
    missing = [c for c in order if ordered[c] is None and c not in failed]
    if missing:
        lines += ["Not run yet: " + ", ".join(map(str, missing)), ""]
    return "\n".join(lines)


def results_json(dataset: str, results: Dict[str, Optional[dict]], failed: Dict[str, str],
                 setup: dict) -> dict:
    return {"dataset": dataset, **setup, "categories": results,
            "mean": {key: mean_of(results, key) for key in METRICS}, "failed": failed}
