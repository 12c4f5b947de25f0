"""Train on the tiny demo category, test the checkpoint, and check what the scripts wrote."""
import csv
import json
import os
import shutil

import numpy as np
import paddle
import pytest
from sklearn.metrics import roc_auc_score

import test as test_script
import train as train_script
from anomaly_map import ScoreModel
from conftest import ROOT, SHARED_DATA, make_config
from dataset import load_image
from network import load_cloner
from train import train
from vgg import build_expert


def read_scores(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_training_writes_checkpoints_logs_and_thresholds(trained_model):
    model_dir, config = trained_model["model_dir"], trained_model["config"]
    for name in ("final_model.pdparams", "best_model.pdparams", "final_model.json",
                 "best_model.json", "last.pdckpt", "config.yaml", "history.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    info = json.load(open(os.path.join(model_dir, "final_model.json")))
    assert info["epoch"] == 1
    stats = info["train_score_stats"]
    assert info["image_threshold"] == pytest.approx(stats["mean"] + 3 * stats["std"])
    log = open(os.path.join(config["log_dir"], "demo_train.log")).read()
    assert "epoch [0/1] loss" in log and "epoch [1/1] loss" in log
    assert log.count("image ROC-AUC") == 2  # eval_interval 1: epochs 0 and 1
    history = json.load(open(os.path.join(model_dir, "history.json")))
    assert history["epoch"] == [0, 1] and all(np.isfinite(history["loss"]))


def test_test_script_writes_metrics_and_scores(trained_model, tmp_path, capsys):
    out = tmp_path / "results"
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(out),
                      "-o", f"log_dir={tmp_path}"])
    printed = capsys.readouterr().out
    metrics = json.load(open(out / "metrics.json"))
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["loc_auc_paper"] <= 1.0
    assert f"{metrics['image_auroc']:.4f}" in printed
    pictures = ("roc_curve.png", "anomaly_maps.png", "training_curves.png")
    assert all(os.path.isfile(out / name) for name in pictures)
    # the last line names every file written, the pictures included
    assert printed.strip().splitlines()[-1] == (
        f"wrote metrics.json, scores.csv, {', '.join(pictures[:2])} and {pictures[2]} in {out}")
    assert b"\r" not in (out / "scores.csv").read_bytes()  # LF line endings
    rows = read_scores(out / "scores.csv")
    assert len(rows) == 12 and metrics["num_images"] == 12
    for row in rows:  # label 1 = anomalous = every folder but test/good
        assert int(row["label"]) == int(os.path.basename(os.path.dirname(row["path"])) != "good")
    labels = [int(row["label"]) for row in rows]
    scores = [float(row["score"]) for row in rows]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_reloaded_checkpoint_gives_the_same_scores(trained_model, tmp_path):
    """test.py (Paddle Inference, oneDNN) against the reloaded cloner run eagerly."""
    out = tmp_path / "results"
    test_script.main(["--model_path", trained_model["model_path"], "--save_dir", str(out),
                      "-o", "localization_test=false", "-o", f"log_dir={tmp_path}"])
    rows = read_scores(out / "scores.csv")
    config = trained_model["config"]
    cloner, config = load_cloner(trained_model["model_path"], config)
    expert = build_expert(config, trained_model["model_dir"])
    images = np.stack([load_image(row["path"], config["mvtec_img_size"]) for row in rows])
    model = ScoreModel(expert, cloner, config["lamda"])
    with paddle.no_grad():
        eager = model(paddle.to_tensor(images)).numpy()
    np.testing.assert_allclose([float(row["score"]) for row in rows], eager, rtol=1e-4)


def test_best_model_is_the_best_test_auroc(trained_model):
    history = trained_model["summary"]["history"]
    info = json.load(open(os.path.join(trained_model["model_dir"], "best_model.json")))
    assert info["image_auroc"] == max(history["image_auroc"])
    assert info["epoch"] == history["eval_epoch"][int(np.argmax(history["image_auroc"]))]


def test_test_script_reports_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--model_path", str(tmp_path / "nope.pdparams")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --model_path {tmp_path / 'nope.pdparams'} not found"


def test_train_takes_save_dir_like_test_py(tmp_path):
    """--save_dir is -o save_dir=...; an explicit -o save_dir=... wins."""
    argv = ["--config", os.path.join(ROOT, "configs", "demo.yaml"), "--save_dir", str(tmp_path / "models")]
    config, _ = train_script.resolve_config(train_script.parse_args(argv))
    assert config["save_dir"] == str(tmp_path / "models")
    assert train_script.model_dir_of(config) == str(tmp_path / "models" / "demo")
    config, _ = train_script.resolve_config(train_script.parse_args(
        argv + ["-o", f"save_dir={tmp_path / 'other'}"]))
    assert config["save_dir"] == str(tmp_path / "other")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "magnetic_tile")),
                    reason="../shared/data/magnetic_tile is not here")
@pytest.mark.slow
def test_smoke_on_real_magnetic_tile_photographs(tmp_path, expert_file):
    """Real, non-square grayscale photographs in the MVTec layout: one epoch, then test.py."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(SHARED_DATA, "magnetic_tile"), root / "magnetic_tile")
    config = make_config(str(root), expert_file, normal_class="magnetic_tile", num_epochs=0,
                         batch_size=16, eval_batch_size=16, save_dir=str(tmp_path / "out"),
                         log_dir=str(tmp_path / "logs"))
    summary = train(config)
    assert len(summary["history"]["image_auroc"]) == 1
    out = tmp_path / "results"
    test_script.main(["--model_path", os.path.join(summary["model_dir"], "final_model.pdparams"),
                      "--save_dir", str(out), "-o", f"log_dir={tmp_path}"])
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["num_images"] == 60 and metrics["num_anomalous"] == 40
    assert np.isfinite(metrics["loc_auc_paper"])
