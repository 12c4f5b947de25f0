"""The pictures: which examples are shown in which order, and that every picture is written."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import test as test_script
from utils import plots


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_example_rows_put_the_errors_first():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.8, 0.5, 0.05, 0.95])
    rows = plots.example_rows(labels, scores, per_group=2)
    assert rows == [(1, "highest-scored normal"), (2, "highest-scored normal"),
                    (3, "lowest-scored anomalous"), (5, "lowest-scored anomalous"),
                    (7, "highest-scored anomalous"), (4, "highest-scored anomalous"),
                    (6, "lowest-scored normal"), (0, "lowest-scored normal")]


def test_example_rows_never_repeat_an_image():
    rows = plots.example_rows(np.array([0, 1, 1]), np.array([0.5, 0.1, 0.9]), per_group=2)
    indices = [index for index, _ in rows]
    assert sorted(indices) == [0, 1, 2] and indices[0] == 0 and indices[1] == 1


def test_display_image_undoes_the_normalisation(rng):
    picture = rng.random((3, 4, 5)).astype(np.float32)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    normalised = (picture - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(plots.display_image(normalised, (mean, std)),
                               picture.transpose(1, 2, 0), atol=1e-6)


def test_every_picture_is_written(tmp_path, rng):
    labels = np.array([0, 0, 1, 1, 1])
    scores = rng.random(5)
    roc = plots.plot_roc(labels, scores, str(tmp_path / "roc.png"), "t", threshold=0.5)
    images = rng.random((5, 3, 16, 16))
    maps, masks = rng.random((5, 16, 16)), (rng.random((5, 16, 16)) > 0.8).astype(float)
    with_maps = plots.plot_examples(images, labels, scores, ["a"] * 5, str(tmp_path / "m.png"),
                                    maps=maps, masks=masks, threshold=0.5)
    without = plots.plot_examples(images[:2], labels[:2], scores[:2], ["a", "b"],
                                  str(tmp_path / "i.png"))
    history = {"epoch": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "eval_epoch": [0, 2],
               "image_auroc": [0.5, 0.75]}
    curves = plots.plot_training_history(history, str(tmp_path / "h.png"))
    width, height = png_size(with_maps)
    assert width > png_size(without)[0] and height > png_size(without)[1]
    for path in (roc, curves):
        assert min(png_size(path)) > 200


@pytest.mark.slow
def test_test_script_saves_the_pictures(trained_model, tmp_path):
    out = tmp_path / "results"
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(out),
                      "-o", "localization_method=feature_diff", "-o", f"log_dir={tmp_path}"])
    for name in (plots.ROC_FILE, plots.EXAMPLES_FILE, plots.TRAINING_FILE):
        assert min(png_size(out / name)) > 200, name
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["localization_method"] == "feature_diff"
    for key in ("loc_auc_paper", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0


@pytest.mark.slow
def test_no_training_curves_without_history(trained_model, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("final_model.pdparams", "config.yaml"):
        os.link(os.path.join(trained_model["model_dir"], name), model_dir / name)
    out = tmp_path / "results"
    test_script.main(["--model_path", str(model_dir / "final_model.pdparams"),
                      "--save_dir", str(out), "-o", "localization_test=false",
                      "-o", f"log_dir={tmp_path}"])
    assert os.path.isfile(out / plots.ROC_FILE) and not os.path.exists(out / plots.TRAINING_FILE)


@pytest.mark.parametrize("values", [[], [0.0]])
def test_training_curves_with_a_zero_or_no_loss(tmp_path, values):
    history = {"epoch": list(range(len(values))), "loss": values, "eval_epoch": [],
               "image_auroc": []}
    assert os.path.isfile(plots.plot_training_history(history, str(tmp_path / "h.png")))
