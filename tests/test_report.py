"""report.html: its data (rows, order, verdicts, thresholds, escaping) read back in Python, the
pages that test.py --report and predict.py --report write, and the page in headless Chromium."""
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from PIL import Image

import predict
import test as test_script
from script_helpers import user_error  # noqa: F401  (a fixture)
from utils.report import REPORT_FILE, ReportRow, Threshold, write_report
from utils.thumbnails import THUMBNAIL_SIDE, jpeg_bytes, strip

HOSTILE = '</script><script>alert(1)</script><img src=x onerror=alert(2)> & "q" \u2028'
DATA = re.compile(r'<script id="report-data" type="application/json">(.*?)</script>', re.S)


def report_json(path) -> dict:
    """The data the page's script draws, as written into report.html."""
    return json.loads(DATA.search(open(path, encoding="utf-8").read()).group(1))


def thumbnail(seed: int, side: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    return jpeg_bytes(strip(rng.random((side, side, 3)), rng.random((8, 8)), side=side))


def synthetic_rows(count: int, seed: int = 0, labelled: bool = True, threshold: float = 0.5):
    """`count` rows with random scores (one tie at the threshold), verdicts score > threshold."""
    rng = np.random.default_rng(seed)
    scores = rng.random(count)
    scores[count // 2] = threshold
    labels = rng.integers(0, 2, count)
    picture = thumbnail(seed)
    return [ReportRow(f"{'bad' if label else 'good'}/{i:05d}.png", f"/data/{i:05d}.png",
                      float(score), bool(score > threshold), int(label) if labelled else None,
                      "crack" if label else "good", picture)
            for i, (score, label) in enumerate(zip(scores, labels))]


def expected_outcome(label, verdict):
    return {(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}[(label, verdict)]


def test_rows_are_sorted_with_their_verdicts_outcomes_and_threshold_positions(tmp_path):
    rows = synthetic_rows(41)
    thresholds = [Threshold(0.5, "model threshold", "a rule", decides=True),
                  Threshold(0.5, "F1-max threshold", "another rule", decides=False,
                            inclusive=True)]
    path = write_report(str(tmp_path / REPORT_FILE), "t", rows, thresholds)
    data = report_json(path)
    scores = [row["s"] for row in data["rows"]]
    assert sorted(scores, reverse=True) == scores
    assert sorted(row["n"] for row in data["rows"]) == sorted(row.name for row in rows)
    by_name = {row.name: row for row in rows}
    for shown in data["rows"]:
        row = by_name[shown["n"]]
        assert shown["s"] == row.score and shown["g"] == row.label and shown["t"] == row.truth
        assert shown["v"] == int(row.score > 0.5)
        assert shown["o"] == expected_outcome(row.label, shown["v"])
        assert base64.b64decode(shown["i"].split(",", 1)[1]) == row.thumbnail
    all_scores = np.array([row.score for row in rows])
    strict, inclusive = data["thresholds"]
    assert strict["decides"] and not inclusive["decides"]
    assert strict["position"] == int((all_scores > 0.5).sum())  # the tie stays below
    assert inclusive["position"] == int((all_scores >= 0.5).sum()) == strict["position"] + 1
    assert all(row["v"] == 1 for row in data["rows"][:strict["position"]])
    assert all(row["v"] == 0 for row in data["rows"][strict["position"]:])


def test_names_from_files_cannot_break_out_of_the_page(tmp_path):
    rows = [ReportRow(HOSTILE, "/x/" + HOSTILE, 0.7, True, 1, HOSTILE, thumbnail(1)),
            ReportRow("ok.png", "/x/ok.png", 0.2, False, 0, "good", thumbnail(2))]
    title = "<b>title</b> __DATA__"
    path = write_report(str(tmp_path / REPORT_FILE), title, rows,
                        [Threshold(0.5, "model threshold", "<i>rule</i>", decides=True)],
                        details=[("model", "<model>.pdparams")])
    page = open(path, encoding="utf-8").read()
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>rule" not in page
    assert page.count("</script>") == 2  # the data's and the program's own
    assert "&lt;b&gt;title&lt;/b&gt; __DATA__" in page  # markers in a title are not replaced
    assert "&lt;model&gt;.pdparams" in page
    data = report_json(path)
    assert data["rows"][0]["n"] == HOSTILE and data["rows"][0]["t"] == HOSTILE


def test_exactly_one_threshold_decides(tmp_path):
    rows = synthetic_rows(3)
    for thresholds in ([], [Threshold(0.5, "a", "", True), Threshold(0.6, "b", "", True)]):
        with pytest.raises(ValueError):
            write_report(str(tmp_path / REPORT_FILE), "t", rows, thresholds)


def figures(page: str) -> list:
    """The SVG text of each figure of the page."""
    sources = re.findall(r'<img class="figure" alt="[^"]*" '
                         r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    return [base64.b64decode(source).decode("utf-8") for source in sources]


def test_roc_curve_only_with_ground_truth(tmp_path):
    threshold = [Threshold(0.5, "threshold", "", decides=True)]
    with_truth = write_report(str(tmp_path / "a.html"), "t", synthetic_rows(20), threshold)
    without = write_report(str(tmp_path / "b.html"), "t", synthetic_rows(20, labelled=False),
                           threshold)
    labelled, unlabelled = (figures(open(path, encoding="utf-8").read())
                            for path in (with_truth, without))
    assert len(labelled) == 2 and len(unlabelled) == 1
    assert all("<svg" in svg for svg in labelled + unlabelled)
    assert "false positive rate" in labelled[0] or "<path" in labelled[0]


def test_a_few_thousand_images_cost_little_more_than_their_thumbnails(tmp_path):
    rows = synthetic_rows(3000)
    path = write_report(str(tmp_path / REPORT_FILE), "many", rows,
                        [Threshold(0.5, "threshold", "", decides=True)])
    data = report_json(path)
    assert len(data["rows"]) == 3000
    thumbnails = sum(len(row["i"]) for row in data["rows"])
    assert os.path.getsize(path) < thumbnails + 3000 * 150 + 200_000  # text per row, figures


def tree_digest(folder) -> str:
    digest = hashlib.sha256()
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            digest.update(name.encode())
            digest.update(open(os.path.join(root, name), "rb").read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def test_report(trained_model, demo_root, tmp_path_factory):
    """test.py --report on the trained demo model: its output folder."""
    out = tmp_path_factory.mktemp("test_report")
    before = tree_digest(demo_root)
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(out),
                      "--report", "--no_pictures", "-o", f"log_dir={out}", "-o", "engine=eager"])
    assert tree_digest(demo_root) == before  # the report writes nothing beside its folder
    return out


@pytest.mark.slow
def test_test_report_lists_every_test_image(test_report, trained_model):
    with open(test_report / "scores.csv", newline="") as stream:
        expected = {row["path"]: row for row in csv.DictReader(stream)}
    metrics = json.load(open(test_report / "metrics.json"))
    stored = json.load(open(os.path.splitext(trained_model["model_path"])[0] + ".json"))
    data = report_json(test_report / REPORT_FILE)
    assert sorted(row["p"] for row in data["rows"]) == sorted(expected)
    scores = [row["s"] for row in data["rows"]]
    assert scores == sorted(scores, reverse=True)
    for row in data["rows"]:
        assert row["s"] == pytest.approx(float(expected[row["p"]]["score"]), rel=1e-6)
        assert row["g"] == int(expected[row["p"]]["label"])
        assert row["t"] == os.path.basename(os.path.dirname(row["p"]))
        assert row["g"] == int(row["t"] != "good")
        assert row["v"] == int(row["s"] > stored["image_threshold"])
        assert row["o"] == expected_outcome(row["g"], row["v"])
        assert os.path.samefile(test_report / row["l"], row["p"])  # the link opens the image
    model, f1 = data["thresholds"]
    assert model["decides"] and model["value"] == stored["image_threshold"]
    assert f1["value"] == metrics["image_f1_threshold"] and not f1["decides"]
    assert f1["position"] == sum(s >= f1["value"] for s in scores)
    page = open(test_report / REPORT_FILE, encoding="utf-8").read()
    for key in ("image_auroc", "loc_auc_paper", "pixel_auroc", "aupro"):
        assert f"{metrics[key]:.4f}" in page, key
    assert len(figures(page)) == 2


@pytest.mark.slow
def test_without_maps_the_report_shows_the_images(trained_model, tmp_path):
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(tmp_path),
                      "--report", "--no_pictures", "-o", "localization_test=false",
                      "-o", f"log_dir={tmp_path}", "-o", "engine=eager"])
    data = report_json(tmp_path / REPORT_FILE)
    assert len(data["rows"]) == len(open(tmp_path / "scores.csv").readlines()) - 1
    for row in data["rows"]:
        with Image.open(io.BytesIO(base64.b64decode(row["i"].split(",", 1)[1]))) as picture:
            assert picture.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)  # the image alone, no map
    assert "each row: image</span>" in open(tmp_path / REPORT_FILE, encoding="utf-8").read()


def test_report_needs_a_save_dir(user_error, trained_model):
    message = user_error(test_script.main, ["--model_path", trained_model["model_path"],
                                            "--report"])
    assert "--report" in message and "--save_dir" in message


@pytest.mark.slow
def test_predict_report_lists_every_image_with_its_picture(trained_model, demo_root, tmp_path,
                                                           capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    good = os.path.join(demo_root, "demo", "test", "good", "000.png")
    blob = os.path.join(demo_root, "demo", "test", "blob", "000.png")
    hostile = "<img src=x onerror=alert(1)> & 'q'.png"
    shutil.copy(good, folder / hostile)
    shutil.copy(blob, folder / "sub" / "blob.png")
    out = tmp_path / "out"
    predict.main(["--image_path", str(folder), "--model_path", trained_model["model_path"],
                  "--save_dir", str(out), "--report", "-o", "engine=eager"])
    capsys.readouterr()
    with open(out / "predictions.csv", newline="") as stream:
        expected = {row["path"]: row for row in csv.DictReader(stream)}
    data = report_json(out / REPORT_FILE)
    assert sorted(row["p"] for row in data["rows"]) == sorted(expected)
    assert sorted(row["n"] for row in data["rows"]) == sorted([hostile, "sub/blob.png"])
    for row in data["rows"]:
        assert row["s"] == pytest.approx(float(expected[row["p"]]["score"]), rel=1e-6)
        assert row["v"] == int(expected[row["p"]]["anomalous"])
        assert row["g"] is None and row["o"] == ""
        with Image.open(out / row["l"]) as picture:  # the full-size picture beside the report
            assert picture.format == "PNG"
    page = open(out / REPORT_FILE, encoding="utf-8").read()
    assert "<img src=x" not in page and len(figures(page)) == 1  # scores only, no ROC


# --- in a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run "
                             "installs it)")
# headless, and nothing that reaches the network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]


def chromium(tmp_path, url: str, *flags: str) -> str:
    """Run headless Chromium on `url` with a new empty profile; its stdout."""
    profile = tmp_path / f"profile-{len(os.listdir(tmp_path))}"
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class ListParser(HTMLParser):
    """The list's rows and markers in page order, the text of the names, every <img> source."""

    def __init__(self):
        super().__init__()
        self.items, self.images, self.names, self._in_name = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and classes[:1] in (["row"], ["marker"]):
            self.items.append((classes, attrs))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "div" and "name" in classes:
            self._in_name = 1
            self.names.append("")

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_name = 0

    def handle_data(self, data):
        if self._in_name:
            self.names[-1] += data


def dom(tmp_path, path, fragment: str = "", height: int = 900) -> ListParser:
    parser = ListParser()
    parser.feed(chromium(tmp_path, f"file://{path}{fragment}", f"--window-size=1280,{height}",
                         "--virtual-time-budget=5000", "--dump-dom"))
    return parser


@pytest.mark.slow
@needs_chromium
def test_browser_draws_the_rows_in_score_order_around_the_threshold(tmp_path, test_report,
                                                                   trained_model):
    page = dom(tmp_path, test_report / REPORT_FILE, height=6000)  # tall: every row on screen
    data = report_json(test_report / REPORT_FILE)
    rows = [attrs for classes, attrs in page.items if classes[0] == "row"]
    assert [int(attrs["data-rank"]) for attrs in rows] == list(range(1, len(data["rows"]) + 1))
    scores = [float(attrs["data-score"]) for attrs in rows]
    assert scores == sorted(scores, reverse=True)
    assert page.names == [row["n"] for row in data["rows"]]
    model = data["thresholds"][0]
    kinds = [classes for classes, _ in page.items]
    marker = kinds.index(["marker", "decides"])
    above = sum(1 for classes in kinds[:marker] if classes[0] == "row")
    assert above == model["position"] == sum(s > model["value"] for s in scores)


@pytest.mark.slow
@needs_chromium
def test_browser_shows_hostile_names_as_text_and_filters_errors(tmp_path):
    rows = synthetic_rows(30) + [ReportRow(HOSTILE, "/x/y.png", 0.99, True, 0, "good",
                                           thumbnail(3))]
    path = write_report(str(tmp_path / REPORT_FILE), "t", rows,
                        [Threshold(0.5, "model threshold", "rule", decides=True)])
    page = dom(tmp_path, path, "#errors", height=8000)
    assert all(src.startswith("data:image/") for src in page.images)  # no <img src=x> made
    assert page.names[0] == HOSTILE
    data = report_json(path)
    errors = [row["n"] for row in data["rows"] if row["o"] in ("FP", "FN")]
    shown = [classes for classes, _ in page.items if classes[0] == "row"]
    assert page.names == errors and all(classes[1] in ("FP", "FN") for classes in shown)


@pytest.mark.slow
@needs_chromium
def test_browser_builds_only_the_rows_on_screen_of_thousands(tmp_path):
    path = write_report(str(tmp_path / REPORT_FILE), "many", synthetic_rows(3000),
                        [Threshold(0.5, "model threshold", "rule", decides=True)])
    position = report_json(path)["thresholds"][0]["position"]
    top = dom(tmp_path, path)
    assert 3 <= len(top.items) <= 40  # a screen's worth, not 3000
    assert [int(attrs["data-rank"]) for _, attrs in top.items[:3]] == [1, 2, 3]
    near = dom(tmp_path, path, "#threshold")  # jumps to the marker
    ranks = [int(attrs["data-rank"]) for classes, attrs in near.items if classes[0] == "row"]
    assert ["marker", "decides"] in [classes for classes, _ in near.items]
    assert len(near.items) <= 40 and min(ranks) <= position < max(ranks)


@pytest.mark.slow
@needs_chromium
def test_screenshot_shows_the_page_with_its_thumbnails(tmp_path, test_report):
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"file://{test_report / REPORT_FILE}", "--window-size=1280,1600",
             "--virtual-time-budget=5000", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000  # not blank
    first = report_json(test_report / REPORT_FILE)["rows"][0]["i"]
    strip_picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1]))))
    match = cv2.matchTemplate(pixels, strip_picture, cv2.TM_CCOEFF_NORMED)
    assert match.max() > 0.95  # the first row's image | map | overlay is drawn, at full size
    row, _ = np.unravel_index(np.argmax(match), match.shape)
    assert row > 300  # in the list, below the summary
