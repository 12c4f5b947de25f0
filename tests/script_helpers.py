"""Running the scripts as a user does (a subprocess, or main(argv)) on a tiny category."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from utils.demo_data import make_demo_category

SIZE = 32


def tiny_category(root: str, category: str = "demo") -> str:
    """root/category at 32 px: 4 training images, 2 good and 2 defective test images."""
    make_demo_category(root, category, size=SIZE, num_train=4, num_test_good=2,
                       num_per_defect=1, seed=3)
    return os.path.join(root, category)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    """A data root holding the tiny category 'demo'."""
    root = str(tmp_path_factory.mktemp("data"))
    tiny_category(root)
    return root


def model_dir(out) -> str:
    """Where a run configured by write_config(..., out) saves its models."""
    return os.path.join(str(out), "models", "demo")


def write_config(path: str, root: str, out: str, **values) -> str:
    """A YAML config for the tiny category; `values` override its keys."""
    config = dict(dataset_name="folder", dataset_root=root, normal_class="demo",
                  mvtec_img_size=SIZE, pretrain=False, num_epochs=1, batch_size=2,
                  eval_batch_size=4, eval_interval=1, seed=7, cpu_threads=1, engine="eager",
                  save_dir=os.path.join(out, "models"), log_dir=os.path.join(out, "logs"))
    config.update(values)
    with open(path, "w", encoding="utf-8") as stream:
        yaml.safe_dump(config, stream)
    return path


def run_script(args, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """`python <args>` from the project folder, as a user would type it."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **popen)


def train_in(out, root: str, **values) -> str:
    """Train with write_config(..., out, **values) as a user does (train.py in its own process);
    the config file's path."""
    config = write_config(os.path.join(str(out), "config.yaml"), root, str(out), **values)
    completed = run_script(["train.py", "--config", config])
    assert completed.returncode == 0, completed.stderr
    return config


def run_main(main, argv, capsys):
    """(exit code, stdout, stderr) of a script's main(argv) run in this process."""
    code = 0
    try:
        main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code, err: str) -> str:
    """The message of a one-line `error: ...` on stderr with exit status 2."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def user_error(capsys):
    """Run main(argv) and return its one-line error message (exit status 2 asserted)."""
    def run(main, argv):
        code, _, err = run_main(main, argv, capsys)
        return error_line(code, err)
    return run
