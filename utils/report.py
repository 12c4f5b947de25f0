"""report.html: one self-contained page to inspect a whole test set, opened from the file system
(no server, no network): the metrics, the ROC curve, a histogram of the scores, and every image as
image | anomaly map | overlay with its score, verdict and ground truth, sorted by score with the
threshold marked, so that false alarms and misses stand out.

Thumbnails are small JPEGs inside the page, and the list draws only the rows on screen, so a few
thousand images stay quick. Every text from a file name goes in as data and is shown as text,
never parsed as HTML.
"""
import base64
import html
import json
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from utils import plots
from utils.files import atomic_write_text

REPORT_FILE = "report.html"
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_template.html")
OUTCOMES = {(1, True): "TP", (0, True): "FP", (1, False): "FN", (0, False): "TN"}


@dataclass(frozen=True)
class ReportRow:
    name: str  # shown, e.g. "scratch/003.png"
    path: str  # the full path, shown on hover
    score: float
    anomalous: bool  # the verdict
    label: Optional[int]  # ground truth, 1 anomalous / 0 normal; None when unknown
    truth: str  # what the ground truth is called, e.g. the defect type; "" when unknown
    thumbnail: bytes  # JPEG of image | anomaly map | overlay (utils/thumbnails.py)
    link: str = ""  # a file to open from the row, relative to the report's folder

    @property
    def outcome(self) -> str:
        """TP, FP (false alarm), FN (miss), TN; "" without ground truth."""
        return "" if self.label is None else OUTCOMES[(int(self.label), bool(self.anomalous))]


@dataclass(frozen=True)
class Threshold:
    value: float
    name: str  # short, for legends and the list, e.g. "model threshold"
    rule: str  # how it was chosen, e.g. "mean + 3 std of the training images' scores"
    decides: bool  # True for the one threshold that gives the verdicts
    inclusive: bool = False  # an image is above it when score >= value (else score > value)

    def above(self, scores):
        """True where a score (a number or an array) is above the threshold."""
        scores = np.asarray(scores)
        return scores >= self.value if self.inclusive else scores > self.value


def sort_rows(rows: Sequence[ReportRow]) -> List[ReportRow]:
    """Highest score first; equal scores by name."""
    return sorted(rows, key=lambda row: (-row.score, row.name))


def _script_json(value) -> str:
    """JSON that cannot end the <script> element it sits in, whatever its strings hold."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _svg_image(figure, alt: str) -> str:
    data = base64.b64encode(plots.svg_text(figure).encode("utf-8")).decode("ascii")
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _figures(scores: np.ndarray, labels: Optional[np.ndarray],
             thresholds: Sequence[Threshold]) -> List[str]:
    colours = ["tab:red", "tab:purple", "tab:orange"]
    marks = [(t.value, t.name, colours[i % len(colours)])
             for i, t in enumerate(thresholds)]
    figures = []
    if labels is not None and 0 < labels.sum() < len(labels):
        figures.append(_svg_image(plots.roc_figure(labels, scores, "image ROC", marks),
                                  "image ROC curve"))
    if len(scores):
        figures.append(_svg_image(plots.score_histogram(scores, labels, marks),
                                  "histogram of the image scores"))
    return figures


def _table(pairs: Sequence[Tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                   for name, value in pairs)


def report_data(rows: Sequence[ReportRow], thresholds: Sequence[Threshold]) -> dict:
    """What the page's script draws: the rows in display order and where each threshold falls
    (`position`: how many rows, from the top, are above it)."""
    rows = sort_rows(rows)
    scores = np.array([row.score for row in rows], dtype=np.float64)
    return {
        "rows": [{"n": row.name, "p": row.path, "s": row.score, "v": int(row.anomalous),
                  "g": None if row.label is None else int(row.label), "t": row.truth,
                  "o": row.outcome, "l": row.link.replace(os.sep, "/"),
                  "i": "data:image/jpeg;base64," + base64.b64encode(row.thumbnail).decode("ascii")}
                 for row in rows],
        "thresholds": [{"value": t.value, "name": t.name, "rule": t.rule, "decides": t.decides,
                        "position": int(t.above(scores).sum())} for t in thresholds],
    }


def write_report(path: str, title: str, rows: Sequence[ReportRow],
                 thresholds: Sequence[Threshold], details: Sequence[Tuple[str, str]] = (),
                 metrics: Sequence[Tuple[str, str]] = (),
                 columns: str = "image | anomaly map | overlay") -> str:
    """Write report.html at `path`; `details` (model, method, ...) and `metrics` are
    (name, value) pairs shown as given, `columns` says what the thumbnails show. Exactly one
    threshold `decides` the verdicts."""
    if sum(t.decides for t in thresholds) != 1:
        raise ValueError("exactly one threshold must decide the verdicts")
    labels = [row.label for row in rows]
    known = np.array(labels) if rows and None not in labels else None
    scores = np.array([row.score for row in rows], dtype=np.float64)
    outcomes = [row.outcome for row in rows]
    counts = [("images", str(len(rows))),
              ("anomalous verdicts", str(sum(row.anomalous for row in rows)))]
    if known is not None:
        counts += [("false alarms (normal, called anomalous)", str(outcomes.count("FP"))),
                   ("misses (anomalous, called normal)", str(outcomes.count("FN")))]
    with open(TEMPLATE, encoding="utf-8") as stream:
        page = stream.read()
    parts = {
        "__TITLE__": html.escape(title),
        "__COLUMNS__": html.escape(columns),
        "__DETAILS__": _table(list(details) + [(t.name, f"{t.value:.6g} ({t.rule})")
                                               for t in thresholds]),
        "__METRICS__": _table(list(metrics) + counts),
        "__FIGURES__": "".join(_figures(scores, known, thresholds)),
        "__DATA__": _script_json(report_data(rows, thresholds)),
    }
    # one pass: text put in is never searched for markers again
    page = re.sub("|".join(parts), lambda match: parts[match.group(0)], page)
    atomic_write_text(path, page)
    return path
