"""A disk that fills up: each script stops with one line that names the file it could not write,
and every file written before stays as it was. On a real full file system: a small tmpfs,
mounted when the tests run as root (skipped otherwise; tests/test_files.py and test_resume.py
make the writes fail instead)."""
import os
import re
import shutil
import subprocess

import pytest

import export_model as export_script
import predict as predict_script
import test as test_script
import train as train_script
from fault_injection import leftovers
from script_helpers import data_root, error_line, model_dir, run_main, run_script  # noqa: F401
from script_helpers import write_config
from utils.checkpoint import read_model, read_state_dict

pytestmark = pytest.mark.slow
NO_SPACE = "No space left on device"


@pytest.fixture
def disk(tmp_path):
    """A 32 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk, leave: int = 0) -> None:
    """Fill the disk but for `leave` bytes."""
    stats = os.statvfs(str(disk))
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "ab") as stream:
        stream.write(b"\0" * max(free - leave, 0))


def contents(folder, but=()) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name)) and name not in but}


def test_training_on_a_full_disk_keeps_its_last_models_and_resumes(tmp_path, disk, data_root,
                                                                   expert_file, capsys):
    """The disk fills between two runs: the resumed run stops at its first save with one line,
    the models and state of the first run are untouched; with space again, --resume ends with
    the models of a run that never met a full disk."""
    def config_in(out):
        return write_config(str(tmp_path / f"{out.name}.yaml"), data_root, str(out),
                            num_epochs=1, pretrain=True, vgg_weights=expert_file)

    config, reference = config_in(disk / "run"), config_in(tmp_path / "reference")
    for path in (config, reference):
        code, _, err = run_main(train_script.main, ["--config", path], capsys)
        assert code == 0, err
    code, _, err = run_main(train_script.main, ["--config", reference, "--resume", "-o",
                                                "num_epochs=3"], capsys)
    assert code == 0, err
    folder = model_dir(disk / "run")
    models = (".lock", "config.yaml")  # the run's lock and its config: the others are models
    before = contents(folder, but=models)
    fill(disk, leave=64 * 1024)
    code, _, err = run_main(train_script.main, ["--config", config, "--resume", "-o",
                                                "num_epochs=3"], capsys)
    message = error_line(code, err)
    assert re.fullmatch(rf"error: cannot write {re.escape(folder)}/(best_model.pdparams|"
                        rf"last.pdckpt): {NO_SPACE}; the earlier version of every file saved "
                        "with it is unchanged", message), message
    assert contents(folder, but=models) == before and leftovers(folder) == []
    assert read_model(os.path.join(folder, "final_model.pdparams"))[1]["epoch"] == 1
    os.remove(disk / "filler")
    code, _, err = run_main(train_script.main, ["--config", config, "--resume", "-o",
                                                "num_epochs=3"], capsys)
    assert code == 0, err
    for name in ("final_model.pdparams", "best_model.pdparams"):
        ours, theirs = (read_state_dict(os.path.join(where, name))
                        for where in (folder, model_dir(tmp_path / "reference")))
        assert all(ours[key].tobytes() == theirs[key].tobytes() for key in theirs), name


def test_evaluation_prediction_and_export_on_a_full_disk_are_one_line(tmp_path, disk, data_root,
                                                                      expert_file, capsys):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path / "out"),
                          num_epochs=0, pretrain=True, vgg_weights=expert_file)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    model = os.path.join(model_dir(tmp_path / "out"), "final_model.pdparams")
    results = str(disk / "results")
    code, _, err = run_main(test_script.main, ["--model_path", model, "--save_dir", results],
                            capsys)
    assert code == 0, err
    before = contents(results)
    fill(disk, leave=16 * 1024)
    code, _, err = run_main(test_script.main, ["--model_path", model, "--save_dir", results,
                                               "--save_maps"], capsys)
    message = error_line(code, err)
    assert message.startswith(f"error: cannot write {results}/") and NO_SPACE in message
    after = contents(results)  # (files the run could still write are complete new ones)
    assert {name: after[name] for name in before} == before and leftovers(results) == []
    code, _, err = run_main(predict_script.main, [
        "--model_path", model, "--save_dir", str(disk / "predicted"),
        "--image_path", os.path.join(data_root, "demo", "test")], capsys)
    message = error_line(code, err)
    assert message.startswith(f"error: cannot write {disk / 'predicted'}/") and NO_SPACE in message
    assert leftovers(str(disk / "predicted")) == []
    # Paddle's own writer cuts the weights short without an error: the export checks their size
    code, _, err = run_main(export_script.main, ["--model_path", model, "--save_dir",
                                                 str(disk / "exported")], capsys)
    message = error_line(code, err)
    assert message.startswith(f"error: cannot write {disk / 'exported' / 'model.pdiparams'}: "
                              "Paddle wrote ") and "is the disk full?" in message, message
    assert os.listdir(disk / "exported") == []


def test_a_disk_expert_cache_on_a_full_disk_is_one_line_not_a_crash(tmp_path, disk, data_root,
                                                                    expert_file):
    """Writing a memory map on a full disk kills the process with SIGBUS; the cache reserves its
    blocks first."""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(disk / "out"),
                          pretrain=True, vgg_weights=expert_file, expert_cache="disk",
                          log_dir=str(tmp_path / "logs"))
    fill(disk, leave=48 * 1024)
    completed = run_script(["train.py", "--config", config])
    message = error_line(completed.returncode, completed.stderr)
    assert message.startswith(f"error: cannot write the expert cache {model_dir(disk / 'out')}")
    assert NO_SPACE in message and "expert_cache: memory" in message


def test_a_log_file_on_a_full_disk_is_one_warning_and_the_run_goes_on(tmp_path, disk, data_root,
                                                                      expert_file):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path / "out"),
                          num_epochs=1, pretrain=True, vgg_weights=expert_file,
                          log_dir=str(disk / "logs"))
    os.makedirs(disk / "logs")
    fill(disk)
    completed = run_script(["train.py", "--config", config])
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.strip().splitlines() == [
        f"warning: cannot write the log file {disk / 'logs' / 'demo_train.log'}: {NO_SPACE}; "
        "logging to the terminal only"]
    assert "saved " in completed.stdout  # the console log goes on
