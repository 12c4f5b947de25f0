"""CSV files written atomically, every line ending in LF (csv.writer's default is CRLF)."""
import csv
from typing import Iterable, Sequence

from utils.files import atomic_write


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """`header`, then one line per row, with LF line endings on every platform."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
