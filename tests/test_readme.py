"""Every command shown in the README runs, in a scratch copy of the project.

Commands are taken from the README's ```bash blocks in order. A block right after a line
`<!-- not run by the tests: reason -->` is skipped (GPU installs), and so is `make test`.
Commands on MVTec AD run on a synthetic category put at Dataset/MVTec/bottle, with a random
expert and a single epoch appended as `-o` overrides, so that they finish in seconds.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys


from conftest import ROOT
from utils.demo_data import make_demo_category

SKIP_MARK = "<!-- not run by the tests"
FAST_PAPER_RUN = ["-o", "num_epochs=0", "-o", "batch_size=8", "-o", "mvtec_img_size=64",
                  "-o", "eval_batch_size=8"]


def readme_commands(path: str) -> list:
    """The shell commands of the README's bash blocks, continuation lines joined."""
    text = open(path, encoding="utf-8").read()
    commands = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)```", text, re.S):
        if match.group("before").startswith(SKIP_MARK):
            continue
        body = match.group("body").replace("\\\n", " ")
        commands += [line.strip() for line in body.splitlines()
                     if line.strip() and not line.strip().startswith("#")]
    return commands


def scratch_project(tmp_path) -> str:
    """The tracked files of the project, with `.venv/bin/python` running this interpreter."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    work = tmp_path / "project"
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(work / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), work / name)
    (work / ".venv" / "bin").mkdir(parents=True)
    wrapper = work / ".venv" / "bin" / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    (work / ".venv" / ".installed").touch()  # newer than the requirements: make skips pip
    return str(work)


def adapt(command: str, expert_file: str) -> list:
    """argv for `command`; runs on the paper's config get the fast overrides appended."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    if "configs/config.yaml" in argv and any(a.endswith("train.py") for a in argv):
        argv += FAST_PAPER_RUN + ["-o", f"vgg_weights={expert_file}"]
    return argv


def test_readme_commands_run(tmp_path, expert_file):
    commands = readme_commands(os.path.join(ROOT, "README.md"))
    assert "make demo" in commands and "make test" in commands
    commands.remove("make test")  # the command running this very test
    work = scratch_project(tmp_path)
    make_demo_category(os.path.join(work, "Dataset", "MVTec"), "bottle", size=64, num_train=8,
                       num_test_good=3, num_per_defect=3)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(adapt(command, expert_file), cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-2000:]}\n" \
                                       f"{result.stderr[-3000:]}"
