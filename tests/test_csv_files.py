"""CSV files: LF line endings on every platform, and values that survive commas and quotes."""
import csv

from utils.csv_files import write_csv


def test_lines_end_in_lf_and_read_back_unchanged(tmp_path):
    rows = [["a,b.png", 1, "0.5"], ['say "hi".png', 0, "1e-08"], ["plain.png", 1, "3"]]
    path = tmp_path / "table.csv"
    write_csv(str(path), ("path", "label", "score"), rows)
    data = path.read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    assert data.count(b"\n") == 1 + len(rows)
    with open(path, newline="", encoding="utf-8") as stream:
        assert list(csv.reader(stream)) == [["path", "label", "score"]] + [
            [str(value) for value in row] for row in rows]


def test_rows_may_be_a_generator(tmp_path):
    path = tmp_path / "table.csv"
    write_csv(str(path), ("n",), ([n] for n in range(3)))
    assert path.read_text() == "n\n0\n1\n2\n"
