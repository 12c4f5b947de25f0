"""Finding a trained model: the error for a model that is not there says what to do."""
import argparse
import os

import pytest

from conftest import ROOT
from trained_model import add_model_args, resolve_model
from utils.errors import UserError


def resolve(*argv):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return resolve_model(parser.parse_args(list(argv)))


def error_of(*argv) -> str:
    with pytest.raises(UserError) as error:
        resolve(*argv)
    return str(error.value)


def test_a_wrong_model_path_names_the_models_beside_it(tmp_path):
    for name in ("final_model.pdparams", "best_model.safetensors", "expert.pdparams",
                 "config.yaml"):
        (tmp_path / name).write_bytes(b"")
    message = error_of("--model_path", str(tmp_path / "final.pdparams"))
    assert message == (f"--model_path {tmp_path / 'final.pdparams'} not found; {tmp_path} "
                       "holds best_model.safetensors, final_model.pdparams")
    assert "train first" not in message


def test_a_folder_as_model_path_asks_for_a_file_in_it(tmp_path):
    message = error_of("--model_path", str(tmp_path))
    assert message.startswith(f"--model_path {tmp_path} is a folder")
    assert os.path.join(str(tmp_path), "final_model.pdparams") in message


def test_no_model_path_and_no_trained_model_says_train_first(tmp_path):
    message = error_of("--config", os.path.join(ROOT, "configs", "demo.yaml"), "-o", f"save_dir={tmp_path}")
    expected = os.path.join(str(tmp_path), "demo", "final_model.pdparams")
    assert message == f"model not found: {expected} (train first, or pass --model_path)"
