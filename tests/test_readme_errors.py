"""The error examples of the README and the docs pages (```console blocks) print exactly what is
shown.

(Every command of their bash blocks is run by tests/test_readme.py, which also checks that each
Chinese page shows the same examples as its English twin.)"""
import importlib
import os
import re
import shlex
import shutil

import pytest

from conftest import ROOT
from script_helpers import run_main
from test_readme import english_pages


def error_examples(path):
    """(argv, expected stderr line) of the `$ python ...` lines followed by `error: ...`."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
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


def all_examples():
    return [example for page in english_pages() for example in error_examples(page)]


def test_the_examples_are_there():
    assert len(all_examples()) >= 3


@pytest.mark.parametrize("argv,expected", all_examples())
def test_error_examples_print_what_the_page_shows(demo_folder, capsys, argv, expected):
    script = importlib.import_module(argv[0][:-len(".py")])  # train.py, test.py, predict.py...
    code, _, err = run_main(script.main, argv[1:], capsys)
    assert code == 2 and err == expected + "\n"
