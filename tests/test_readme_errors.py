"""The error examples of the READMEs' "When things go wrong" section print exactly what is shown.

(Every command of the READMEs' bash blocks is run by tests/test_readme.py.)"""
import os
import re
import shlex
import shutil

import pytest

import test as test_script
import train as train_script
from conftest import ROOT
from script_helpers import run_main

READMES = [os.path.join(ROOT, name) for name in ("README.md", "README_cn.md")]


def error_examples(path):
    """(argv, expected stderr line) of the `$ python ...` lines followed by `error: ...`."""
    text = open(path, encoding="utf-8").read()
    examples = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = body.strip("\n").splitlines()
        for command, output in zip(lines[::2], lines[1::2]):
            assert command.startswith("$ python ") and output.startswith("error: ")
            examples.append((shlex.split(command[2:])[1:], output))
    return examples


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    """A folder laid out like the project after `make demo`, as the working directory."""
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    (tmp_path / "data" / "demo" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_both_readmes_show_the_same_examples():
    examples = [error_examples(path) for path in READMES]
    assert len(examples[0]) == 3 and examples[1] == examples[0]


@pytest.mark.parametrize("argv,expected", error_examples(READMES[0]))
def test_error_examples_print_what_the_readme_shows(demo_folder, capsys, argv, expected):
    script = {"train.py": train_script, "test.py": test_script}[argv[0]]
    code, _, err = run_main(script.main, argv[1:], capsys)
    assert code == 2 and err == expected + "\n"
