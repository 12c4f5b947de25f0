"""The verdict for an image (anomalous when its score is above the image threshold) and the CSV
that lists them."""
import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

from utils.config import MAX_BATCH_SIZE
from utils.errors import UserError
from utils.csv_files import write_csv
from utils.files import printable

PREDICTIONS_CSV = "predictions.csv"  # what predict.py and infer.py write in --save_dir
CSV_COLUMNS = ("path", "score", "threshold", "anomalous")


@dataclass(frozen=True)
class Prediction:
    path: str
    score: float
    threshold: float

    @property
    def anomalous(self) -> bool:
        return self.score > self.threshold

    @property
    def verdict(self) -> str:
        return "anomalous" if self.anomalous else "normal"


def choose_threshold(stored: Optional[float], override: Optional[float], source: str) -> float:
    """--score_threshold when given, else the image threshold stored with the model."""
    if override is not None:
        return float(override)
    if stored is None:
        raise UserError(f"{source} holds no image_threshold; pass --score_threshold")
    return float(stored)


def write_predictions_csv(path: str, predictions: Sequence[Prediction]) -> None:
    """path,score,threshold,anomalous (1 or 0), one row per image, in the order given."""
    write_csv(path, CSV_COLUMNS, ([printable(p.path), f"{p.score:.8g}", f"{p.threshold:.8g}",
                                   int(p.anomalous)] for p in predictions))


def add_prediction_args(parser: argparse.ArgumentParser, save_dir: str, threshold_source: str,
                        batch_size: int = None) -> None:
    """The flags predict.py and infer.py share, under the same names."""
    parser.add_argument("--image_path", "--input_file", "-i", dest="image_path", required=True,
                        help="an image, or a folder of images (sub-folders included); "
                             "--input_file and -i are other names of this flag")
    parser.add_argument("--save_dir", default=save_dir,
                        help=f"pictures and {PREDICTIONS_CSV} (path,score,threshold,anomalous) "
                             "go here")
    parser.add_argument("-b", "--batch_size", type=int, default=batch_size,
                        help="images per batch" + ("" if batch_size else
                                                   " (default: the config's eval_batch_size)"))
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="heatmap display threshold in [0, 1]: the overlay shows map values "
                             "above it (feature_diff maps: above that fraction of the way from "
                             "the map's minimum to its maximum)")
    parser.add_argument("--score_threshold", type=float, default=None,
                        help=f"image threshold for the verdict (default: {threshold_source})")


def check_prediction_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Values argparse's types cannot refuse on their own."""
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        parser.error(f"--batch_size must be in [1, {MAX_BATCH_SIZE}], got {args.batch_size}")
