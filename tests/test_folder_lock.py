"""One run per output folder: a second process is refused in one line naming the folder and the
holder; a lock left by a killed process does not block the next run."""
import os
import signal
import subprocess
import sys
import time

import pytest

import train as train_script
from conftest import ROOT
from script_helpers import data_root, error_line, model_dir, run_main, write_config  # noqa: F401
from utils.errors import UserError
from utils.folder_lock import LOCK_FILE, folder_lock, folder_locks

HOLD = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from utils.folder_lock import folder_lock\n"
        "with folder_lock(sys.argv[2]):\n"
        "    print('locked', flush=True); time.sleep(120)")


def hold_lock(folder: str) -> subprocess.Popen:
    """Another process holding `folder`'s lock (returns once it holds it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, ROOT, folder],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "locked\n"
    return process


def test_a_held_folder_is_refused_naming_the_process_and_a_killed_holder_blocks_nothing(
        tmp_path):
    folder = str(tmp_path / "out")
    holder = hold_lock(folder)
    try:
        with pytest.raises(UserError) as error:
            with folder_lock(folder):
                pytest.fail("the lock was taken twice")
        message = str(error.value)
        assert message.startswith(f"{folder} is in use by another run (PID {holder.pid}, started ")
        assert f"command: {os.path.basename(sys.executable)} -c" in message
        assert "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(folder):  # the kernel released it with the process: nothing stale
        with open(os.path.join(folder, LOCK_FILE)) as stream:
            assert f'"pid": {os.getpid()}' in stream.read()


def test_one_folder_named_twice_is_locked_once(tmp_path):
    folder = str(tmp_path / "out")
    with folder_locks([folder, folder + "/.", os.path.join(folder, "..", "out")]):
        with pytest.raises(UserError):
            with folder_lock(folder):
                pass


@pytest.mark.slow
def test_a_second_train_py_on_the_same_folder_is_refused(tmp_path, data_root, capsys):
    """Two real runs: the second refuses before writing anything; once the first is killed with
    SIGKILL, the next run trains."""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=10 ** 4, eval_interval=10 ** 4, save_interval=10 ** 4)
    folder = model_dir(tmp_path)
    first = subprocess.Popen([sys.executable, "train.py", "--config", config], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "demo_train.log"
    try:
        deadline = time.time() + 300
        while not (log.exists() and "epoch [1/" in log.read_text()):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        before = {name: os.path.getmtime(os.path.join(folder, name))
                  for name in os.listdir(folder)}
        code, _, err = run_main(train_script.main, ["--config", config, "-o", "num_epochs=0"],
                                capsys)
        message = error_line(code, err)
        assert message.startswith(f"error: {folder} is in use by another run (PID {first.pid}, "
                                  "started ")
        assert f"command: {os.path.basename(sys.executable)} train.py --config {config}" in message
        assert {name: os.path.getmtime(os.path.join(folder, name))
                for name in os.listdir(folder)} == before
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    code, _, err = run_main(train_script.main, ["--config", config, "-o", "num_epochs=0"],
                            capsys)
    assert code == 0, err


@pytest.mark.slow
def test_a_second_run_all_on_the_same_results_is_refused(tmp_path, data_root, capsys):
    """Two real run_all.py: the second one names the results folder and the first process."""
    import run_all
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=10 ** 4, eval_interval=10 ** 4, save_interval=10 ** 4)
    results = str(tmp_path / "results")
    first = subprocess.Popen([sys.executable, "run_all.py", "--config", config, "--results_dir",
                              results], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "demo_train.log"
    try:
        deadline = time.time() + 300
        while not (log.exists() and "epoch [0/" in log.read_text()):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        code, out, err = run_main(run_all.main, ["--config", config, "--results_dir", results],
                                  capsys)
        message = error_line(code, err)
        assert message.startswith(f"error: {results} is in use by another run (PID {first.pid}, "
                                  "started ")
        assert f"run_all.py --config {config} --results_dir {results}" in message
        assert out == "" and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)  # passed on to train.py, which saves and stops
        first.communicate(timeout=300)
