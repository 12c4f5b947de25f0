"""The verdict for an image (anomalous when its score is above the image threshold) and the CSV
that lists them."""
import csv
from dataclasses import dataclass
from typing import Optional, Sequence

from utils.errors import UserError
from utils.files import atomic_write, printable

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
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(CSV_COLUMNS)
            for p in predictions:
                writer.writerow([printable(p.path), f"{p.score:.8g}", f"{p.threshold:.8g}",
                                 int(p.anomalous)])

    atomic_write(path, write)
