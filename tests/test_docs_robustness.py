"""The commands of docs/README_robustness*.md: the error examples print exactly what is shown, and
every other command is accepted by its script and names only real config keys."""
import os
import re
import shlex
import shutil

import pytest

import test as test_script
import train as train_script
import utils.convert_weights as convert_script
from conftest import ROOT
from script_helpers import run_main
from utils.config import config_from_args

DOCS = [os.path.join(ROOT, "docs", name)
        for name in ("README_robustness.md", "README_robustness_cn.md")]


def code_blocks(path):
    """(language, lines) of every fenced block."""
    text = open(path, encoding="utf-8").read()
    return [(language, body.strip("\n").splitlines())
            for language, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S)]


def error_examples(path):
    """(argv, expected stderr line) of the `$ python ...` lines followed by `error: ...`."""
    examples = []
    for language, lines in code_blocks(path):
        if language == "console":
            for command, output in zip(lines[::2], lines[1::2]):
                assert command.startswith("$ python ") and output.startswith("error: ")
                examples.append((shlex.split(command[2:])[1:], output))
    return examples


def commands(path):
    """argv (after `python`) of every command in a bash block."""
    return [shlex.split(line)[1:] for language, lines in code_blocks(path) if language == "bash"
            for line in lines if line.startswith("python ")]


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    """A folder laid out like the project after `make demo`, as the working directory."""
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    (tmp_path / "data" / "demo" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_docs_show_commands():
    for path in DOCS:
        assert len(error_examples(path)) == 3 and len(commands(path)) == 6, path
    assert [error_examples(path) for path in DOCS[1:]] == [error_examples(DOCS[0])]
    assert [commands(path) for path in DOCS[1:]] == [commands(DOCS[0])]


@pytest.mark.parametrize("argv,expected", error_examples(DOCS[0]))
def test_error_examples_print_what_the_docs_show(demo_folder, capsys, argv, expected):
    script = {"train.py": train_script, "test.py": test_script}[argv[0]]
    code, _, err = run_main(script.main, argv[1:], capsys)
    assert code == 2 and err == expected + "\n"


class Accepted(Exception):
    """Raised in place of the work a command would do, once its arguments are read."""


@pytest.mark.parametrize("argv", commands(DOCS[0]), ids=" ".join)
def test_commands_are_accepted(demo_folder, monkeypatch, capsys, argv):
    def accept_train(config, state=None):
        raise Accepted

    def accept_test(args):
        config_from_args(args)
        raise Accepted

    def accept_convert(source, target, force=False):
        assert target.endswith((".pdparams", ".safetensors"))
        raise Accepted

    monkeypatch.setattr(train_script, "train", accept_train)
    monkeypatch.setattr(train_script, "load_training_state",
                        lambda path: {"config": {}, "epoch": 0})
    monkeypatch.setattr(test_script, "resolve_model", accept_test)
    monkeypatch.setattr(convert_script, "convert", accept_convert)
    if argv[:2] == ["-m", "utils.convert_weights"]:
        main, args = convert_script.main, argv[2:]
    else:
        main, args = {"train.py": train_script, "test.py": test_script}[argv[0]].main, argv[1:]
    with pytest.raises(Accepted):
        main(args)
