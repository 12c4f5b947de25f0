"""Pictures of a test run: image ROC curve, example anomaly maps, training curves (Agg)."""
import io
from typing import List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from utils.files import atomic_write  # noqa: E402

ROC_FILE, EXAMPLES_FILE, TRAINING_FILE = "roc_curve.png", "anomaly_maps.png", "training_curves.png"
MAP_COLORS = "jet"
DPI = 100


def _save(figure, path: str) -> str:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI,
                                                  bbox_inches="tight"))
    plt.close(figure)
    return path


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str = "",
               marks: Sequence[Tuple[float, str, str]] = ()):
    """The image-level ROC curve (anomalous = positive); each (threshold, label, colour) of
    `marks` is drawn at its point (an image is called anomalous when its score >= threshold)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(4.2, 4.2))
    axes.plot(fpr, tpr, color="tab:blue", lw=2,
              label=f"image ROC-AUC {roc_auc_score(labels, scores):.4f}")
    axes.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    for threshold, label, colour in marks:
        called = scores >= threshold
        axes.plot(called[labels == 0].mean(), called[labels == 1].mean(), "o", color=colour,
                  label=f"{label} {threshold:.4g}")
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (normal images)",
             ylabel="true positive rate (anomalous images)", title=title or "image ROC")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: str, title: str = "",
             threshold: Optional[float] = None) -> str:
    """roc_figure saved as `path`, with the point of the F1-max `threshold` marked."""
    marks = [] if threshold is None else [(threshold, "F1-max threshold", "tab:red")]
    return _save(roc_figure(labels, scores, title, marks), path)


def score_histogram(scores: np.ndarray, labels: Optional[np.ndarray] = None,
                    marks: Sequence[Tuple[float, str, str]] = ()):
    """Histogram of the image scores (normal and anomalous apart when `labels` are known), with
    a vertical line at each (threshold, label, colour) of `marks`."""
    scores = np.asarray(scores, dtype=np.float64)
    figure, axes = plt.subplots(figsize=(5.6, 3.0))
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 4)))
    if labels is None:
        axes.hist(scores, bins=bins, color="tab:blue", alpha=0.7, label="images")
    else:
        labels = np.asarray(labels)
        for value, name, colour in ((0, "normal", "tab:green"), (1, "anomalous", "tab:red")):
            if (labels == value).any():
                axes.hist(scores[labels == value], bins=bins, color=colour, alpha=0.55,
                          label=f"{name} ({int((labels == value).sum())})")
    for threshold, label, colour in marks:
        axes.axvline(threshold, color=colour, lw=1.5, ls="--", label=f"{label} {threshold:.4g}")
    axes.set(xlabel="anomaly score", ylabel="images", title="image scores")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def svg_text(figure) -> str:
    """A figure as SVG text (the figure is closed)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def example_rows(labels: np.ndarray, scores: np.ndarray,
                 per_group: int = 2) -> List[Tuple[int, str]]:
    """(index, why it is shown) for the example grid: the errors first (highest-scored normal
    images, then lowest-scored anomalous ones), then the clearest cases (highest-scored
    anomalous, lowest-scored normal); no image twice."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    normal = np.flatnonzero(labels == 0)
    anomalous = np.flatnonzero(labels == 1)
    normal = normal[np.argsort(-scores[normal], kind="stable")]
    anomalous = anomalous[np.argsort(scores[anomalous], kind="stable")]
    groups = [(normal[:per_group], "highest-scored normal"),
              (anomalous[:per_group], "lowest-scored anomalous"),
              (anomalous[::-1][:per_group], "highest-scored anomalous"),
              (normal[::-1][:per_group], "lowest-scored normal")]
    rows, seen = [], set()
    for members, why in groups:
        for index in members:
            if int(index) not in seen:
                seen.add(int(index))
                rows.append((int(index), why))
    return rows


def display_image(image: np.ndarray, normalization=None) -> np.ndarray:
    """[3, H, W] network input -> [H, W, 3] in [0, 1] (undoing a mean/std normalisation)."""
    image = np.asarray(image, dtype=np.float32)
    if normalization is not None:
        mean, std = normalization
        image = image * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    return np.clip(image.transpose(1, 2, 0), 0.0, 1.0)


def _outcome(label: int, score: float, threshold: Optional[float]) -> str:
    if threshold is None:
        return "anomalous" if label else "normal"
    called = score >= threshold
    return {(1, True): "TP", (1, False): "FN (missed)", (0, True): "FP (false alarm)",
            (0, False): "TN"}[(int(label), bool(called))]


def _caption(caption: str, label: int, score: float, threshold: Optional[float]) -> str:
    return f"{caption}\n{_outcome(label, score, threshold)}, score {score:.4g}"


def plot_examples(images: Sequence[np.ndarray], labels: np.ndarray, scores: np.ndarray,
                  captions: Sequence[str], path: str, maps: Optional[np.ndarray] = None,
                  masks: Optional[np.ndarray] = None, threshold: Optional[float] = None,
                  normalization=None, map_range=(0.0, 1.0), title: str = "") -> str:
    """With maps, one row per image: the image, its ground truth, the anomaly map and an overlay
    with the ground-truth outline (white; dashed where the resized mask stays below 0.5, so that
    the metrics see no defect pixel there); all maps share one colour scale (`map_range`).
    Without maps, the images in reading order, four to a row."""
    if maps is None:
        return _plot_images(images, labels, scores, captions, path, threshold, normalization,
                            title)
    columns = ["image", "ground truth", "anomaly map", "overlay"]
    rows = len(images)
    figure, axes = plt.subplots(rows, len(columns), figsize=(9.6, 2.3 * rows + 0.4),
                                squeeze=False, layout="constrained")
    shown = None
    for r in range(rows):
        picture = display_image(images[r], normalization)
        axes[r, 0].imshow(picture)
        axes[r, 0].set_title(_caption(captions[r], labels[r], scores[r], threshold), fontsize=7)
        axes[r, 1].imshow(masks[r], cmap="gray", vmin=0, vmax=1)
        shown = axes[r, 2].imshow(maps[r], cmap=MAP_COLORS, vmin=map_range[0],
                                  vmax=map_range[1])
        axes[r, 3].imshow(picture)
        axes[r, 3].imshow(maps[r], cmap=MAP_COLORS, vmin=map_range[0], vmax=map_range[1],
                          alpha=0.45)
        top = float(masks[r].max())
        if top >= 0.5:  # the defect pixels of the metrics
            axes[r, 3].contour(masks[r], levels=[0.5], colors="white", linewidths=0.8)
        elif top > 0:  # a defect thinner than a pixel at this size: no defect pixel left
            axes[r, 3].contour(masks[r], levels=[top / 2], colors="white", linewidths=0.8,
                               linestyles="dashed")
        for c, name in enumerate(columns):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0 and c > 0:
                axes[r, c].set_title(name, fontsize=8)
    figure.colorbar(shown, ax=axes, shrink=0.3, aspect=30, label="anomaly map")
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def _plot_images(images, labels, scores, captions, path, threshold, normalization,
                 title) -> str:
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.5 * rows + 0.4),
                                squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(display_image(images[i], normalization))
        ax.set_title(_caption(captions[i], labels[i], scores[i], threshold), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def plot_training_history(history: dict, path: str, title: str = "") -> str:
    """Loss per epoch and the test-set image ROC-AUC at the evaluated epochs (history.json)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(history["epoch"], history["loss"], color="tab:blue", lw=1.5)
    left.set(xlabel="epoch", ylabel="loss (sum over the epoch's batches)", title="training loss")
    if min(history["loss"], default=1) > 0:
        left.set_yscale("log")
        left.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        left.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        left.yaxis.set_minor_formatter(ticker.NullFormatter())
    right.plot(history["eval_epoch"], history["image_auroc"], "o-", color="tab:green", lw=1.5,
               ms=3)
    right.set(xlabel="epoch", ylabel="image ROC-AUC", ylim=(-0.02, 1.02),
              title="test-set image ROC-AUC (monitoring)")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
