"""run_all.py: every category trained and tested in its own process, resumable, several at once,
stopped cleanly, and the tables."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

import run_all
from conftest import ROOT
from script_helpers import error_line, run_main
from utils.children import Children, Slot, make_slots, run_in_slots, visible_gpus
from utils.demo_data import make_demo_category
from utils.device import gpu_available
from utils.errors import UserError
from utils.results import BEST_ROW, MVTEC_COLUMNS, REPORTED, results_markdown


def write_config(tmp_path, root):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dict(
        dataset_name="folder", dataset_root=str(root), mvtec_img_size=32, pretrain=False,
        num_epochs=0, batch_size=4, eval_batch_size=8, seed=0, cpu_threads=2,
        save_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"))))
    return str(path)


@pytest.mark.slow
def test_runs_every_category_keeps_going_after_a_failure_and_resumes(tmp_path, monkeypatch,
                                                                      capsys):
    root = tmp_path / "data"
    make_demo_category(str(root), "demo", size=32, num_train=4, num_test_good=2,
                       num_per_defect=2, seed=3)
    (root / "broken" / "train" / "good").mkdir(parents=True)  # no training images
    (root / "broken" / "train" / "good" / "notes.txt").write_text("no images here")
    config, results = write_config(tmp_path, root), tmp_path / "results"
    argv = ["--config", config, "--results_dir", str(results),
            "-o", "localization_method=feature_diff"]
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(argv)  # both categories found in dataset_root; 'broken' fails
    assert exit_info.value.code == 1
    assert "1 of 2 categories failed: broken" in capsys.readouterr().err
    metrics = json.load(open(results / "folder" / "demo" / "metrics.json"))
    assert metrics["localization_method"] == "feature_diff"  # -o reached test.py
    table = (results / "folder_results.md").read_text()
    assert "| Repo | broken | demo | Mean |" in table
    assert f"| This run | — | {100 * metrics['image_auroc']:.2f} |" in table
    assert "- broken: train.py exited with status 2" in table
    best = json.load(open(tmp_path / "out" / "demo" / "best_model.json"))["image_auroc"]
    assert f"| {BEST_ROW} | — | {100 * best:.2f} | {100 * best:.2f} (1/2) |" in table
    summary = json.load(open(results / "folder_results.json"))
    assert summary["categories"]["demo"]["aupro"] == metrics["aupro"]
    assert summary["categories"]["demo"]["best_image_auroc"] == best
    assert summary["failed"] == {"broken": summary["failed"]["broken"]}

    def no_process(*args, **kwargs):
        raise AssertionError(f"nothing should run again: {args}")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    run_all.main(argv + ["--categories", "demo"])  # finished before: skipped, tables rewritten
    assert "[1/1] demo: finished before, skipped" in capsys.readouterr().out
    assert "broken" not in (results / "folder_results.md").read_text()


def test_planned_steps_follow_the_files_on_disk(tmp_path):
    job = run_all.Job(category="c", config_path="x.yaml", overrides=[],
                      model_dir=str(tmp_path / "model"), test_dir=str(tmp_path / "test"),
                      log_dir=str(tmp_path))
    assert run_all.planned_steps(job) == ["train", "test"]
    os.makedirs(job.model_dir)
    open(os.path.join(job.model_dir, "last.pdckpt"), "w").close()
    assert run_all.planned_steps(job) == ["resume", "test"]
    assert run_all.script_command(job, "resume")[-1] == "--resume"  # train.py keeps the seed
    open(os.path.join(job.model_dir, "final_model.safetensors"), "w").close()
    assert run_all.planned_steps(job) == ["test"]
    assert run_all.script_command(job, "test")[-3].endswith("final_model.safetensors")
    os.makedirs(job.test_dir)
    open(os.path.join(job.test_dir, "metrics.json"), "w").close()
    assert run_all.planned_steps(job) == []


def test_category_names_stay_strings():
    assert run_all.category_override("01") == 'normal_class="01"'
    assert run_all.category_override(3) == "normal_class=3"
    assert run_all.parse_categories(["0", "7"], "mnist") == [0, 7]
    assert run_all.parse_categories(["007"], "folder") == ["007"]


def test_mvtec_tables_have_the_earlier_ports_layout():
    results = {name: {"image_auroc": 0.5 + i / 100, "loc_auc_paper": 0.9, "pixel_auroc": 0.8,
                      "aupro": float("nan"), "image_f1_max": 0.7}
               for i, name in enumerate(sorted(MVTEC_COLUMNS))}
    text = results_markdown("mvtec", results, {}, "setup")
    header = ("| Repo | Bottle | Hazelnut | Capsule | Metal Nut | Leather | Pill | Wood | Carpet "
              "| Tile | Grid | Cable | Transistor | Toothbrush | Screw | Zipper | Mean |")
    assert text.count(header) == 2  # detection and localization
    assert "| Paper / reference code | 99.39 | 98.37 |" in text and "| 87.74 |" in text
    assert "| Earlier Paddle port | 96.20 | 94.32 |" in text
    mean = sum(0.5 + i / 100 for i in range(15)) / 15
    bottle = 0.5 + sorted(MVTEC_COLUMNS).index("bottle") / 100
    assert f"| This run | {100 * bottle:.2f} |" in text and f"| {100 * mean:.2f} |" in text
    assert "AUPRO" not in text and "| Pixel ROC-AUC | 80.00 |" in text  # undefined: no row
    assert len(REPORTED["image_auroc"]["Paper / reference code"]) == 16


def test_partial_tables_say_how_many_categories_the_mean_covers():
    results = {"bottle": {"image_auroc": 1.0}, "cable": {"image_auroc": 0.5},
               "zipper": None}
    text = results_markdown("mvtec", results, {}, "setup")
    assert "Paper / reference code" not in text  # the reported means cover all 15
    assert "| This run | 100.00 | 50.00 | — | 75.00 (2/3) |" in text
    assert "Not run yet: zipper" in text


def test_slots_are_one_per_gpu_or_a_share_of_the_cores():
    assert make_slots(None, 1, 2) == [Slot("CPU")]  # one at a time: output on the terminal
    two = make_slots(None, 2, 4)
    assert [slot.overrides for slot in two] == [("cpu_threads=2",)] * 2
    assert all(slot.own_output and not slot.env for slot in two)
    gpus = make_slots([0, 3], 1, 2, ["0", "1", "2", "3"])
    assert [dict(slot.env) for slot in gpus] == [{"CUDA_VISIBLE_DEVICES": "0"},
                                                 {"CUDA_VISIBLE_DEVICES": "3"}]
    assert all(slot.own_output and not slot.overrides for slot in gpus)
    assert all(slot.required == ("device=gpu",) for slot in gpus)
    for jobs, cores, culprit in [(3, 2, "--jobs 3"), (0, 2, "--jobs")]:
        with pytest.raises(UserError, match=culprit):
            make_slots(None, jobs, cores)


def test_gpu_numbers_are_mapped_through_the_parents_visible_devices_and_checked():
    """Under SLURM or Kubernetes the parent sees e.g. CUDA_VISIBLE_DEVICES=4,5,6,7 as GPUs
    0..3: its child for GPU 3 must be given 7, and a GPU it does not see is an error."""
    names = visible_gpus("4,5,6,7", 4)
    assert names == ["4", "5", "6", "7"]
    slots = make_slots([0, 3], 1, 2, names)
    assert [dict(slot.env)["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["4", "7"]
    assert slots[1].name == "GPU 3 (7)"
    with pytest.raises(UserError, match="--gpus 7: this process sees 4 GPU"):
        make_slots([0, 7], 1, 2, names)
    assert visible_gpus(None, 2) == ["0", "1"]
    assert visible_gpus("GPU-8f2c, GPU-11ab", 2) == ["GPU-8f2c", "GPU-11ab"]
    assert visible_gpus("3,x,5", 1) == ["3"]  # CUDA stops counting at an entry it cannot use


class RecordedChild:
    """subprocess.Popen's stand-in: records the command and environment, exits with status 2."""
    started = []

    def __init__(self, command, env=None, **kwargs):
        RecordedChild.started.append((command, env))

    def wait(self):
        return 2

    def poll(self):
        return 2


def test_each_gpu_child_sees_its_own_gpu_and_must_run_on_it(tmp_path, monkeypatch, capsys):
    root = two_categories(tmp_path)
    monkeypatch.setattr(run_all, "gpu_available", lambda: True)
    monkeypatch.setattr(run_all, "gpu_names", lambda: visible_gpus("3,5", 2))
    monkeypatch.setattr(subprocess, "Popen", RecordedChild)
    RecordedChild.started = []
    results = ["--results_dir", str(tmp_path / "results")]  # not the project's results/
    code, _, err = run_main(run_all.main, ["--config", write_config(tmp_path, root), "--gpus",
                                           "1,0", "-o", "device=auto"] + results, capsys)
    assert code == 1 and "2 of 2 categories failed" in err
    started = sorted((env["CUDA_VISIBLE_DEVICES"], command) for command, env in
                     RecordedChild.started)
    assert [visible for visible, _ in started] == ["3", "5"]
    for _, command in started:  # the slot's device=gpu comes after the user's device=auto
        assert command[-2:] == ["-o", "device=gpu"] and "device=auto" in command
    code, _, err = run_main(run_all.main, ["--config", write_config(tmp_path, root), "--gpus",
                                           "0", "-o", "device=cpu"] + results, capsys)
    assert "config key 'device' is 'cpu'" in error_line(code, err)


def test_a_child_that_must_run_on_a_gpu_and_sees_none_fails_in_one_line(tmp_path, capsys):
    if gpu_available():
        pytest.skip("this machine has a GPU")
    import train
    code, _, err = run_main(train.main, ["--config", write_config(tmp_path, two_categories(
        tmp_path)), "--normal_class", "first", "-o", "device=gpu"], capsys)
    assert "config key 'device' is 'gpu' but this Paddle has no usable GPU" in error_line(code,
                                                                                            err)


def test_slot_overrides_come_before_the_users():
    job = run_all.Job(category="c", config_path="x.yaml", overrides=["cpu_threads=1"],
                      model_dir="m", test_dir="t", log_dir="l")
    command = run_all.script_command(job, "train", Slot("CPU", overrides=("cpu_threads=3",)))
    assert command[-4:] == ["-o", "cpu_threads=3", "-o", "cpu_threads=1"]  # the last one wins


def test_each_slot_runs_one_job_at_a_time_and_all_slots_are_used():
    slots = make_slots(None, 3, 3)
    lock, running, peak, done = threading.Lock(), [], [0], []

    def run_one(job, slot):
        with lock:
            assert id(slot) not in running, "a slot is used twice"  # equal slots are distinct
            running.append(id(slot))
            peak[0] = max(peak[0], len(running))
        time.sleep(0.05)
        with lock:
            running.remove(id(slot))
        return job * 10

    def on_done(job, result):
        assert threading.current_thread() is threading.main_thread()
        done.append((job, result))

    run_in_slots(list(range(9)), slots, run_one, on_done, Children())
    assert sorted(done) == [(job, job * 10) for job in range(9)]
    assert peak[0] == 3


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_gpus_on_a_machine_without_one_is_one_line(tmp_path, capsys):
    config = os.path.join(ROOT, "configs", "demo.yaml")
    code, _, err = run_main(run_all.main, ["--config", config, "--gpus", "0,1"], capsys)
    assert "--gpus needs paddlepaddle-gpu" in error_line(code, err)
    code, _, err = run_main(run_all.main, ["--config", config, "--gpus", "0,x"], capsys)
    assert "--gpus must list distinct GPU numbers like 0,1,2,3, got '0,x'" in error_line(code,
                                                                                          err)


def two_categories(tmp_path):
    root = tmp_path / "data"
    for seed, name in enumerate(("first", "second")):
        make_demo_category(str(root), name, size=32, num_train=4, num_test_good=2,
                           num_per_defect=1, seed=seed)
    return root


@pytest.mark.slow
def test_two_jobs_at_once_give_the_tables_of_one_at_a_time(tmp_path, capsys):
    root = two_categories(tmp_path)
    tables = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        out.mkdir()
        config = write_config(out, root)
        code, stdout, err = run_main(run_all.main, [
            "--config", config, "--results_dir", str(out / "results"), "--jobs", str(jobs),
            "-o", "num_epochs=1", "-o", "localization_method=feature_diff"],
            capsys)
        assert code == 0, err
        tables[jobs] = json.load(open(out / "results" / "folder_results.json"))
        if jobs == 2:
            for name in ("first", "second"):
                log = out / "logs" / f"{name}_console.log"
                assert f"{name}: train, test on CPU (1 of 2 cores), output in {log}" in stdout
                assert "detection image ROC-AUC" in log.read_text()
            assert "[1/2] first done" in stdout and "[2/2] second done" in stdout
    for name in ("first", "second"):
        ours, expected = tables[2]["categories"][name], tables[1]["categories"][name]
        assert sorted(ours) == sorted(expected)
        for metric, value in expected.items():
            if metric.endswith("path") or metric == "seconds":  # own folder, own timing
                continue
            assert ours[metric] == (pytest.approx(value, rel=1e-4)
                                    if isinstance(value, float) else value), (name, metric)


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_a_stop_reaches_the_training_child_which_saves_its_state(tmp_path, stop, status):
    """SIGTERM or SIGINT sent to run_all alone (the children have their own session) is
    passed on: train.py saves last.pdckpt, says so, and the next run resumes it."""
    root = tmp_path / "data"
    make_demo_category(str(root), "demo", size=32, num_train=4, num_test_good=2,
                       num_per_defect=1, seed=3)
    config, results = write_config(tmp_path, root), tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "run_all.py", "--config", config, "--results_dir", str(results),
         "-o", "num_epochs=1000", "-o", "eval_interval=1000", "-o", "save_interval=1000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    log = tmp_path / "logs" / "demo_train.log"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("epoch [") >= 3):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    word = "terminated" if stop == signal.SIGTERM else "interrupted"
    assert err.strip().splitlines()[-1] == word
    model_dir = tmp_path / "out" / "demo"
    assert f"{word}: {model_dir / 'last.pdckpt'} holds epoch" in out  # saved on the way out
    job = run_all.make_jobs(config, [], ["demo"], str(results))[0]
    assert run_all.planned_steps(job) == ["resume", "test"]


@pytest.mark.slow
@pytest.mark.parametrize("weights, what", [("imagenet", "the ImageNet VGG16 weights"),
                                            ("keras", "Keras' ImageNet VGG16 weights")])
def test_parallel_runs_fetch_the_imagenet_weights_once_before_starting(tmp_path, capsys,
                                                                       monkeypatch, weights, what):
    if weights == "keras":
        pytest.importorskip("h5py")  # without it the error is about h5py, before any download
    import vgg

    def offline(url, md5sum=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(vgg, "FEATURES_CACHE", str(tmp_path / "vgg16_features.pdparams"))
    monkeypatch.setattr(vgg, "get_weights_path_from_url", offline)
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: pytest.fail("a child ran"))
    root = two_categories(tmp_path)
    code, _, err = run_main(run_all.main, ["--config", write_config(tmp_path, root), "--jobs",
                                           "2", "-o", "pretrain=true", "-o",
                                           f"vgg_weights={weights}"], capsys)
    assert f"could not download {what}" in error_line(code, err)
