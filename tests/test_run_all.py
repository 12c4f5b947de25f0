"""run_all.py: every category trained and tested in its own process, resumable, and the tables."""
import json
import os
import subprocess

import pytest
import yaml

import run_all
from utils.demo_data import make_demo_category
from utils.results import MVTEC_COLUMNS, REPORTED, results_markdown


def write_config(tmp_path, root):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dict(
        dataset_name="folder", dataset_root=str(root), mvtec_img_size=32, pretrain=False,
        num_epochs=0, batch_size=4, eval_batch_size=8, seed=0, cpu_threads=2,
        save_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"))))
    return str(path)


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
    summary = json.load(open(results / "folder_results.json"))
    assert summary["categories"]["demo"]["aupro"] == metrics["aupro"]
    assert summary["failed"] == {"broken": summary["failed"]["broken"]}

    def no_process(*args, **kwargs):
        raise AssertionError(f"nothing should run again: {args}")
    monkeypatch.setattr(subprocess, "run", no_process)
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
