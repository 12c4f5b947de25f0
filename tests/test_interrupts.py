"""Interrupted everywhere: Ctrl-C, SIGTERM or SIGKILL during evaluation, prediction, export or
run_all.py, then the same command again, ends with what an uninterrupted run writes.

(Training's own stops are in tests/test_resume.py.)"""
import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from fault_injection import leftovers, run_until_killed, steps_of
from script_helpers import data_root, model_dir, run_script, train_in, write_config  # noqa: F401

pytestmark = pytest.mark.slow
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> dict:
    """A model trained for epochs 0..1 by train.py."""
    out = tmp_path_factory.mktemp("trained")
    train_in(out, data_root, num_epochs=1)
    return {"model": os.path.join(model_dir(out), "final_model.pdparams")}


def stopped(args: list, stop: int, ready, jitter: float = 0.3) -> subprocess.CompletedProcess:
    """`python <args>` sent `stop` once `ready()` holds, then up to `jitter` seconds later."""
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not ready():
        assert process.poll() is None, f"{args} ended before it was stopped"
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0, jitter))
    process.send_signal(stop)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def same_files(ours: str, theirs: str, ignore=()) -> None:
    """The same files with the same bytes (metrics.json but for its timing)."""
    names = sorted(name for name in os.listdir(theirs) if name not in ignore)
    assert sorted(name for name in os.listdir(ours) if name not in ignore) == names
    for name in names:
        if os.path.isdir(os.path.join(theirs, name)):
            same_files(os.path.join(ours, name), os.path.join(theirs, name))
        elif name == "metrics.json":
            mine, reference = (json.load(open(os.path.join(folder, name)))
                               for folder in (ours, theirs))
            for metrics in (mine, reference):
                metrics.pop("seconds")
            assert mine == reference
        elif name.endswith(".npz"):
            mine, reference = (np.load(os.path.join(folder, name))
                               for folder in (ours, theirs))
            assert all(np.array_equal(mine[key], reference[key]) for key in reference.files)
        else:
            assert filecmp.cmp(os.path.join(ours, name), os.path.join(theirs, name),
                               shallow=False), name


@pytest.mark.parametrize("stop, moment", [(signal.SIGINT, "evaluating"),
                                          (signal.SIGTERM, "evaluating"),
                                          (signal.SIGKILL, "writing")])
def test_an_interrupted_test_py_run_again_writes_what_an_uninterrupted_one_does(
        trained, tmp_path, stop, moment):
    def command(save_dir):
        return ["test.py", "--model_path", trained["model"], "--save_dir", save_dir,
                "--save_maps", "-o", f"log_dir={tmp_path / 'logs'}"]

    reference = str(tmp_path / "reference")
    assert run_script(command(reference)).returncode == 0
    log, results = tmp_path / "logs" / "demo_test.log", str(tmp_path / "results")
    log.unlink()
    if moment == "evaluating":  # the log file is opened before the model is loaded
        interrupted = stopped(command(results), stop, log.exists)
    else:  # the scores are written first, metrics.json last
        interrupted = stopped(command(results), stop,
                              lambda: os.path.exists(os.path.join(results, "scores.csv")), 0)
    assert interrupted.returncode == STATUS[stop], interrupted.stderr
    assert not os.path.exists(os.path.join(results, "metrics.json"))  # not marked finished
    again = run_script(command(results))
    assert again.returncode == 0, again.stderr
    same_files(results, reference)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_prediction_run_again_writes_what_an_uninterrupted_one_does(
        trained, data_root, tmp_path, stop):
    def command(save_dir):
        return ["predict.py", "--model_path", trained["model"], "--image_path",
                os.path.join(data_root, "demo", "test"), "--save_dir", save_dir,
                "--batch_size", "1"]

    reference, results = str(tmp_path / "reference"), str(tmp_path / "results")
    assert run_script(command(reference)).returncode == 0
    interrupted = stopped(command(results), stop,
                          lambda: os.path.exists(os.path.join(results, "good", "000.png")), 0)
    assert interrupted.returncode == STATUS[stop], interrupted.stderr
    assert not os.path.exists(os.path.join(results, "predictions.csv"))
    again = run_script(command(results))
    assert again.returncode == 0, again.stderr
    same_files(results, reference)


def export_command(trained, save_dir: str, method: str) -> list:
    return ["export_model.py", "--model_path", trained["model"], "--save_dir", save_dir,
            "--localization_method", method]


def infer_outputs(save_dir: str, images: str, tmp_path) -> str:
    """predictions.csv of infer.py on the export in `save_dir`."""
    out = str(tmp_path / f"infer_{random.randrange(10 ** 9)}")
    completed = run_script(["infer.py", "--model_file", os.path.join(save_dir, "model.json"),
                            "-i", images, "--save_dir", out])
    assert completed.returncode == 0, completed.stderr
    return open(os.path.join(out, "predictions.csv")).read()


def test_an_export_killed_at_any_moment_leaves_the_old_or_the_new_export(trained, data_root,
                                                                         tmp_path):
    """An export of `gradients` maps replaces one of `feature_diff` maps: killed with SIGKILL at
    a random moment and at the steps of its commit, the folder holds one complete export or the
    other (infer.py runs it with the outputs of one of them); exported again, the files are
    those of an uninterrupted export."""
    images = os.path.join(data_root, "demo", "test")
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    for save_dir, method in ((old, "feature_diff"), (new, "gradients")):
        started = time.time()
        assert run_script(export_command(trained, save_dir, method)).returncode == 0
        duration = time.time() - started
    expected = {infer_outputs(old, images, tmp_path), infer_outputs(new, images, tmp_path)}
    counted = str(tmp_path / "counted")
    assert run_script(export_command(trained, counted, "feature_diff")).returncode == 0
    completed = run_until_killed(counted, 10 ** 6, export_command(trained, counted, "gradients"))
    assert completed.returncode == 0, completed.stderr
    names = steps_of(completed)
    commit = names.index("rename") + 1
    for kill in ["random", commit, commit + 1]:
        folder = str(tmp_path / f"killed_at_{kill}")
        assert run_script(export_command(trained, folder, "feature_diff")).returncode == 0
        if kill == "random":
            killed = stopped(export_command(trained, folder, "gradients"), signal.SIGKILL,
                             lambda: True, jitter=duration)
        else:
            killed = run_until_killed(folder, kill, export_command(trained, folder, "gradients"))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert infer_outputs(folder, images, tmp_path) in expected, kill
        again = run_script(export_command(trained, folder, "gradients"))
        assert again.returncode == 0, again.stderr
        assert leftovers(folder) == []
        for name in ("model.json", "model.pdiparams"):
            assert filecmp.cmp(os.path.join(folder, name), os.path.join(new, name),
                               shallow=False), (kill, name)


def run_all_command(config: str, results: str) -> list:
    return ["run_all.py", "--config", config, "--results_dir", results,
            "-o", "localization_method=feature_diff"]


def tables(results: str) -> dict:
    """The per-category metrics of run_all's JSON table, without timings and paths."""
    summary = json.load(open(os.path.join(results, "folder_results.json")))
    return {category: {key: value for key, value in metrics.items()
                       if key not in ("seconds", "model_path")}
            for category, metrics in summary["categories"].items()}


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_run_all_stopped_while_training_and_run_again_gives_the_same_tables(data_root, tmp_path,
                                                                            stop):
    """SIGKILL to run_all alone: its children get SIGTERM from the kernel and save (Linux);
    Ctrl-C is passed on by run_all. The next run_all resumes and its tables are those of an
    uninterrupted run."""
    configs = {name: write_config(str(tmp_path / f"{name}.yaml"), data_root,
                                  str(tmp_path / name), num_epochs=12, eval_interval=4)
               for name in ("reference", "stopped")}
    reference = run_script(run_all_command(configs["reference"], str(tmp_path / "ref_results")),
                           timeout=600)
    assert reference.returncode == 0, reference.stderr
    log = tmp_path / "stopped" / "logs" / "demo_train.log"
    results = str(tmp_path / "results")
    interrupted = stopped(run_all_command(configs["stopped"], results), stop,
                          lambda: log.exists() and log.read_text().count("epoch [") >= 3)
    assert interrupted.returncode == STATUS[stop], interrupted.stderr
    folder = model_dir(tmp_path / "stopped")
    word = "terminated" if stop == signal.SIGKILL else "interrupted"  # what train.py received
    assert f"{word}: {os.path.join(folder, 'last.pdckpt')} holds epoch" in interrupted.stdout
    assert not os.path.isfile(os.path.join(folder, "final_model.pdparams"))
    again = run_script(run_all_command(configs["stopped"], results), timeout=600)
    assert again.returncode == 0, again.stderr
    assert "train, test" not in again.stdout and "resume, test" in again.stdout
    assert tables(results) == tables(str(tmp_path / "ref_results"))
