"""VisualDL logs of a training run (`use_visualdl: true`, or train.py --use_vdl): the loss of every
epoch, each evaluation's image ROC-AUC and, at the end, the final model's ROC curve on the test
set and a few anomaly maps, in <save_dir>/<class>/vdl/. Watch them with
`visualdl --logdir <save_dir>/<class>/vdl`.

VisualDL shows only the newest record file of a folder, so a run keeps one file: a resumed run
first drops the records of the epochs its checkpoint does not hold, then appends; a new run starts
the file again. VisualDL is an optional package, imported only when the logs are asked for.
"""
import contextlib
import io
import os
import time
from typing import List, Optional, Tuple

import numpy as np
from sklearn.metrics import roc_curve

from test_functions import MapGenerator, score_cached
from utils import plots
from utils.errors import UserError
from utils.files import atomic_write
from utils.thumbnails import strip

VDL_FOLDER = "vdl"
RECORD_FILE = "vdlrecords.train.log"  # VisualDL reads files whose name holds "vdlrecords"
INSTALL = "pip install visualdl==2.5.3 (or pip install -r requirements-extras.txt)"
LOSS_TAG = "train/loss"  # the sum of the epoch's batch losses, as history.json and the log
AUROC_TAG = "test/image_auroc"
ROC_TAG = "test/image_roc"
MAPS_TAG = "test/anomaly_maps"  # one image per example: image | anomaly map | overlay
CAPTIONS_TAG = "test/anomaly_map_captions"  # what each example is (a tag holds one kind of record)
EXAMPLES_PER_GROUP = 1  # plots.example_rows: up to 4 images, the errors first


def _log_writer_class():
    try:
        from visualdl import LogWriter
    except ImportError:
        raise UserError(f"use_visualdl: true needs VisualDL: {INSTALL}") from None
    return LogWriter


def check_visualdl(config: dict) -> None:
    """With use_visualdl: true, a one-line error now, before any training, if VisualDL is absent."""
    if config["use_visualdl"]:
        _log_writer_class()


def _step(record_bytes: bytes) -> Optional[int]:
    """The step of a serialised VisualDL record; None for one that does not parse (cut off: a
    record holds its values as a nested message, so any cut breaks it)."""
    from google.protobuf.message import DecodeError
    from visualdl.proto.record_pb2 import Record
    record = Record()
    try:
        record.ParseFromString(record_bytes)
    except DecodeError:
        return None
    return record.values[0].id if record.values else None


def keep_records(path: str, last_epoch: Optional[int]) -> None:
    """Keep only the records of epochs <= `last_epoch` in the record file `path` (none when
    `last_epoch` is None), stopping at a record cut off by a crash."""
    if not os.path.isfile(path):
        return
    if last_epoch is None:
        os.remove(path)
        return
    from visualdl.reader.record_reader import RecordReader
    from visualdl.writer.record_writer import RecordWriter
    kept = []
    for record_bytes in RecordReader(path).get_all():
        step = _step(record_bytes)
        if step is None:
            break
        if step <= last_epoch:
            kept.append(record_bytes)

    def write(tmp):
        with open(tmp, "wb") as stream:
            writer = RecordWriter(stream)
            for record_bytes in kept:
                writer.write(record_bytes)

    atomic_write(path, write)


def _roc_record(labels: np.ndarray, scores: np.ndarray, step: int):
    """The exact ROC curve (scikit-learn) as a VisualDL record, lowest threshold first as
    VisualDL orders it. LogWriter.add_roc_curve cannot be used: it calls np.float, gone since
    NumPy 1.24, and bins the scores as probabilities in [0, 1]."""
    from visualdl.component.base_component import roc_curve_raw
    fpr, tpr, _ = roc_curve(labels, scores)
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    tp, fp = np.rint(tpr * positives).astype(int), np.rint(fpr * negatives).astype(int)
    return roc_curve_raw(ROC_TAG, tp=tp[::-1].tolist(), fp=fp[::-1].tolist(),
                         tn=(negatives - fp)[::-1].tolist(), fn=(positives - tp)[::-1].tolist(),
                         tpr=tpr[::-1].tolist(), fpr=fpr[::-1].tolist(), step=step,
                         walltime=round(time.time() * 1000))


def map_examples(expert, cloner, test_cache, scores: np.ndarray, config: dict, device: str,
                 normalization=None) -> List[Tuple[str, np.ndarray]]:
    """(what it shows, image | anomaly map | overlay) for a few test images, the errors first:
    the highest-scored normal image, the lowest-scored anomalous one, then the clearest cases."""
    rows = plots.example_rows(test_cache.labels, scores, per_group=EXAMPLES_PER_GROUP)
    images = test_cache.batch([index for index, _ in rows])[0].numpy()
    generator = MapGenerator(expert, cloner, {**config, "engine": "eager"}, device,
                             list(images.shape[1:]), len(images))
    _, maps = generator(images)
    value_range = (0.0, 1.0)
    if config["localization_method"] == "feature_diff":  # raw discrepancies: their own range
        value_range = (float(maps.min()), float(maps.max()))
    return [(f"{why}, score {scores[index]:.4g}",
             strip(plots.display_image(image, normalization), anomaly_map, value_range))
            for (index, why), image, anomaly_map in zip(rows, images, maps)]


class TrainingLog:
    """The VisualDL records of one training run; does nothing when `folder` is None."""

    def __init__(self, folder: Optional[str], last_kept_epoch: Optional[int] = None):
        self.writer = None
        if folder is None:
            return
        log_writer = _log_writer_class()
        keep_records(os.path.join(folder, RECORD_FILE), last_kept_epoch)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints that it appends
            self.writer = log_writer(logdir=folder, file_name=RECORD_FILE)

    def epoch(self, epoch: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(LOSS_TAG, loss, epoch)
            self.writer.flush()  # so that a dashboard shows every finished epoch

    def evaluation(self, epoch: int, image_auroc: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(AUROC_TAG, image_auroc, epoch)
            self.writer.flush()

    def final_model(self, epoch: int, expert, cloner, test_cache, config: dict, device: str,
                    normalization=None) -> None:
        """The final model's ROC curve on the test set and a few of its anomaly maps."""
        if self.writer is None:
            return
        labels, scores = test_cache.labels, score_cached(cloner, test_cache, config)
        if 0 < labels.sum() < len(labels):
            # LogWriter has no public call that takes a finished curve
            self.writer._get_file_writer().add_record(_roc_record(labels, scores, epoch))
        examples = map_examples(expert, cloner, test_cache, scores, config, device, normalization)
        for number, (caption, picture) in enumerate(examples):
            self.writer.add_image(f"{MAPS_TAG}/{number}", picture, epoch)
            self.writer.add_text(f"{CAPTIONS_TAG}/{number}", caption, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
