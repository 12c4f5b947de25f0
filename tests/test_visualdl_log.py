"""VisualDL logs of training (use_visualdl / --use_vdl), read back with VisualDL's own reader."""
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import auc, roc_auc_score, roc_curve

import train as train_script
from conftest import ROOT, make_config
from script_helpers import data_root, user_error, write_config  # noqa: F401  (fixtures)
from test import run_test
from dataset import load_image
from utils import plots
from utils.thumbnails import strip
from utils.visualdl_log import (AUROC_TAG, CAPTIONS_TAG, LOSS_TAG, MAPS_TAG, RECORD_FILE, ROC_TAG,
                                VDL_FOLDER, TrainingLog, check_visualdl, keep_records)

needs_visualdl = pytest.mark.skipif(importlib.util.find_spec("visualdl") is None,
                                    reason="visualdl is not installed (requirements-extras.txt)")


def reader(folder: str):
    from visualdl import LogReader
    return LogReader(file_path=os.path.join(folder, RECORD_FILE))


def scalars(folder: str, tag: str) -> list:
    """(step, value) of every record of `tag`, in file order."""
    return [(record.id, record.value) for record in reader(folder).get_data("scalar", tag)]


def run_training(demo_root, expert_file, save_dir, **values) -> dict:
    config = make_config(demo_root, expert_file, save_dir=str(save_dir),
                         log_dir=os.path.join(str(save_dir), "logs"), use_visualdl=True,
                         engine="eager", **values)
    summary = train_script.train(config)
    return {"config": config, "history": summary["history"],
            "folder": os.path.join(summary["model_dir"], VDL_FOLDER)}


@pytest.fixture(scope="module")
def vdl_run(demo_root, expert_file, tmp_path_factory):
    """Epochs 0..2 on the demo category with use_visualdl: true."""
    return run_training(demo_root, expert_file, tmp_path_factory.mktemp("vdl"), num_epochs=2)


@pytest.mark.slow
@needs_visualdl
def test_the_loss_of_every_epoch_and_each_evaluation_are_logged(vdl_run):
    history = vdl_run["history"]
    assert os.listdir(vdl_run["folder"]) == [RECORD_FILE]
    loss = scalars(vdl_run["folder"], LOSS_TAG)
    assert [step for step, _ in loss] == history["epoch"] == [0, 1, 2]
    np.testing.assert_allclose([value for _, value in loss], history["loss"], rtol=1e-6)
    auroc = scalars(vdl_run["folder"], AUROC_TAG)
    assert [step for step, _ in auroc] == history["eval_epoch"]
    np.testing.assert_allclose([value for _, value in auroc], history["image_auroc"], rtol=1e-6)


@pytest.fixture(scope="module")
def final_test(vdl_run):
    """The final model's scores on the test set, from test.py's own path (no training code)."""
    model_path = os.path.join(os.path.dirname(vdl_run["folder"]), "final_model.pdparams")
    return run_test(vdl_run["config"], model_path, log=lambda *_: None)["result"]


@pytest.mark.slow
@needs_visualdl
def test_the_final_roc_curve_is_the_test_sets(vdl_run, final_test):
    (record,) = reader(vdl_run["folder"]).get_data("roc_curve", ROC_TAG)
    assert record.id == 2  # the last epoch
    curve = record.roc_curve
    fpr, tpr = np.array(curve.fpr)[::-1], np.array(curve.tpr)[::-1]  # lowest threshold first
    expected_fpr, expected_tpr, _ = roc_curve(final_test.labels, final_test.scores)
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-9)
    np.testing.assert_allclose(tpr, expected_tpr, atol=1e-9)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(final_test.labels, final_test.scores))
    positives = int(final_test.labels.sum())
    negatives = len(final_test.labels) - positives
    assert all(tp + fn == positives for tp, fn in zip(curve.TP, curve.FN))
    assert all(fp + tn == negatives for fp, tn in zip(curve.FP, curve.TN))
    np.testing.assert_array_equal(np.array(curve.TP), np.rint(np.array(curve.tpr) * positives))


@pytest.mark.slow
@needs_visualdl
def test_a_few_anomaly_maps_errors_first(vdl_run, final_test):
    log = reader(vdl_run["folder"])
    assert sorted(log.get_tags()["image"]) == [f"{MAPS_TAG}/{n}" for n in range(4)]
    size = vdl_run["config"]["mvtec_img_size"]
    rows = plots.example_rows(final_test.labels, final_test.scores, per_group=1)
    for number, (index, why) in enumerate(rows):
        (record,) = log.get_data("image", f"{MAPS_TAG}/{number}")
        assert record.id == 2
        logged = np.asarray(Image.open(io.BytesIO(record.image.encoded_image_string)))
        # the same picture from test.py's image and map (PNG: lossless)
        image = plots.display_image(load_image(final_test.paths[index], size))
        expected = strip(image, final_test.maps[index], (0.0, 1.0))
        assert logged.shape == expected.shape
        assert np.abs(logged.astype(int) - expected.astype(int)).mean() < 1.0
        (caption,) = log.get_data("text", f"{CAPTIONS_TAG}/{number}")
        text = caption.text.encoded_text_string
        assert text.startswith(why)
        assert float(text.rsplit(" ", 1)[1]) == pytest.approx(final_test.scores[index], rel=1e-3)


@pytest.mark.slow
@needs_visualdl
def test_resume_drops_the_epochs_the_checkpoint_lost_then_appends(demo_root, expert_file,
                                                                   tmp_path):
    first = run_training(demo_root, expert_file, tmp_path, num_epochs=1)
    folder = first["folder"]
    from visualdl import LogWriter
    with LogWriter(logdir=folder, file_name=RECORD_FILE) as killed:  # a run killed after
        killed.add_scalar(LOSS_TAG, 99.0, 2)  # logging epoch 2 but before saving it
    config = {**first["config"], "num_epochs": 3}
    state = train_script.load_training_state(os.path.join(os.path.dirname(folder),
                                                          train_script.LAST_STATE))
    assert state["epoch"] == 1
    resumed = train_script.train(config, state)
    loss = scalars(folder, LOSS_TAG)
    assert [step for step, _ in loss] == [0, 1, 2, 3]
    np.testing.assert_allclose([value for _, value in loss], resumed["history"]["loss"],
                               rtol=1e-6)
    np.testing.assert_allclose([value for _, value in loss[:2]], first["history"]["loss"],
                               rtol=1e-6)
    assert [record.id for record in reader(folder).get_data("roc_curve", ROC_TAG)] == [1, 3]
    assert os.listdir(folder) == [RECORD_FILE]


@pytest.mark.slow
@needs_visualdl
def test_a_new_run_starts_a_new_log(demo_root, expert_file, tmp_path):
    run_training(demo_root, expert_file, tmp_path, num_epochs=1)
    again = run_training(demo_root, expert_file, tmp_path, num_epochs=0, seed=5)
    loss = scalars(again["folder"], LOSS_TAG)
    assert loss == [(0, pytest.approx(again["history"]["loss"][0], rel=1e-6))]


@needs_visualdl
def test_keep_records_stops_at_a_record_cut_by_a_crash(tmp_path):
    from visualdl import LogWriter
    with LogWriter(logdir=str(tmp_path), file_name=RECORD_FILE) as writer:
        for step in range(6):
            writer.add_scalar(LOSS_TAG, float(step), step)
    path = tmp_path / RECORD_FILE
    path.write_bytes(path.read_bytes()[:-3])  # the last record half-written
    keep_records(str(path), 10)
    assert scalars(str(tmp_path), LOSS_TAG) == [(step, float(step)) for step in range(5)]
    keep_records(str(path), 2)
    assert scalars(str(tmp_path), LOSS_TAG) == [(0, 0.0), (1, 1.0), (2, 2.0)]
    keep_records(str(path), None)
    assert not path.exists()


def test_use_vdl_is_use_visualdl_true():
    for argv, expected in (([], False), (["--use_vdl"], True),
                           (["-o", "use_visualdl=true"], True)):
        args = train_script.parse_args(["--config", os.path.join(ROOT, "configs", "demo.yaml"),
                                        *argv])
        config, _ = train_script.resolve_config(args)
        assert config["use_visualdl"] is expected


def test_without_visualdl_the_flag_is_one_line_before_training(user_error, data_root, tmp_path,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # `import visualdl` fails
    out = tmp_path / "out"
    config = write_config(str(tmp_path / "c.yaml"), data_root, str(out))
    message = user_error(train_script.main, ["--config", config, "--use_vdl"])
    assert "use_visualdl" in message and "pip install visualdl==2.5.3" in message
    assert not out.exists()  # nothing read, nothing written
    check_visualdl({"use_visualdl": False})  # off: VisualDL is never imported
    log = TrainingLog(None)
    log.epoch(0, 1.0)
    log.evaluation(0, 0.5)
    log.final_model(0, None, None, None, {}, "cpu")
    log.close()
