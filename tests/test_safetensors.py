"""Weights without pickles: `weights_format: safetensors`, the converter, and pickled files that
would run code being refused before they do."""
import collections
import os
import pickle

import numpy as np
import paddle
import pytest

import test as test_script
import train as train_script
from network import Cloner
from script_helpers import data_root, error_line, model_dir, run_main, write_config  # noqa: F401
from utils.checkpoint import load_training_state, read_state_dict, save_state_dict
from utils.convert_weights import main as convert_main


def same_arrays(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes() for name in a)


@pytest.mark.slow
def test_training_in_safetensors_writes_no_pickled_weights(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path))
    folder = model_dir(tmp_path)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    as_pdparams = {stem: read_state_dict(os.path.join(folder, stem + ".pdparams"))
                   for stem in ("final_model", "best_model", "expert")}
    code, out, err = run_main(test_script.main, ["--config", config, "--save_dir",
                                                 str(tmp_path / "pd")], capsys)
    assert code == 0, err
    # the same run again, in safetensors, into the same folder
    code, _, err = run_main(train_script.main, ["--config", config, "-o",
                                                "weights_format=safetensors"], capsys)
    assert code == 0, err
    assert sorted(name for name in os.listdir(folder)
                  if not name.endswith(".json") and name != ".lock") == [
        "best_model.safetensors", "config.yaml", "expert.safetensors", "final_model.safetensors",
        "last.pdckpt"]  # the earlier run's .pdparams are gone, not left to be loaded by mistake
    for stem, expected in as_pdparams.items():
        assert same_arrays(read_state_dict(os.path.join(folder, stem + ".safetensors")),
                           expected), stem
    # test.py finds final_model.safetensors and the expert beside it without being told
    code, out, err = run_main(test_script.main, ["--config", config, "--save_dir",
                                                 str(tmp_path / "st")], capsys)
    assert code == 0, err
    assert "final_model.safetensors" in open(tmp_path / "st" / "metrics.json").read()
    assert open(tmp_path / "st" / "scores.csv").read() == open(
        tmp_path / "pd" / "scores.csv").read()


def test_converter_round_trip_keeps_every_bit(tmp_path, capsys):
    cloner = Cloner(use_bias=True)
    source = str(tmp_path / "run" / "final_model.pdparams")
    save_state_dict(cloner.state_dict(), source)
    with open(tmp_path / "run" / "final_model.json", "w") as stream:
        stream.write('{"image_threshold": 0.5}\n')
    middle, back = str(tmp_path / "out" / "cloner.safetensors"), str(tmp_path / "back.pdparams")
    for a, b in ((source, middle), (middle, back)):
        code, out, err = run_main(convert_main, [a, b], capsys)
        assert code == 0, err
        assert f"wrote {b} (" in out
    original = read_state_dict(source)
    assert same_arrays(read_state_dict(middle), original)
    assert same_arrays(read_state_dict(back), original)
    assert open(tmp_path / "out" / "cloner.json").read() == '{"image_threshold": 0.5}\n'
    assert open(middle, "rb").read(8) != open(source, "rb").read(8)


def test_converter_refuses_to_overwrite_or_guess(tmp_path, capsys):
    source = str(tmp_path / "a.pdparams")
    save_state_dict(Cloner().state_dict(), source)
    target = str(tmp_path / "a.safetensors")
    assert run_main(convert_main, [source, target], capsys)[0] == 0
    before = open(target, "rb").read()
    for argv, culprit in [([source, target], "--force"), ([source, source], source),
                          ([source, str(tmp_path / "a.npz")], "a.npz"),
                          ([str(tmp_path / "none.pdparams"), target], "none.pdparams")]:
        code, _, err = run_main(convert_main, argv, capsys)
        assert culprit in error_line(code, err)
    assert open(target, "rb").read() == before
    assert run_main(convert_main, [source, target, "--force"], capsys)[0] == 0


class RunsCode:
    """Unpickling this calls os.system: what a malicious .pdparams can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_file(path, marker, extra=None):
    with open(path, "wb") as stream:
        pickle.dump({"features.0.weight": RunsCode(marker), **(extra or {})}, stream)
    return path


@pytest.mark.slow
def test_a_pickle_that_would_run_code_is_refused_everywhere(tmp_path, data_root, capsys):
    marker = tmp_path / "code_ran"
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          localization_test=False)
    cloner = malicious_file(str(tmp_path / "cloner.pdparams"), marker)
    code, _, err = run_main(test_script.main, ["--config", config, "--model_path", cloner],
                            capsys)
    assert cloner in error_line(code, err) and "refusing" in err and "system" in err
    expert = malicious_file(str(tmp_path / "vgg16.pdparams"), marker)
    code, _, err = run_main(train_script.main, ["--config", config, "-o", "pretrain=true",
                                                "-o", f"vgg_weights={expert}"], capsys)
    assert expert in error_line(code, err) and "refusing" in err
    last = os.path.join(model_dir(tmp_path), "last.pdckpt")
    os.makedirs(model_dir(tmp_path), exist_ok=True)
    malicious_file(last, marker, {"epoch": 0})
    code, _, err = run_main(train_script.main, ["--config", config, "--resume"], capsys)
    assert last in error_line(code, err) and "refusing" in err
    code, _, err = run_main(convert_main, [cloner, str(tmp_path / "x.safetensors")], capsys)
    assert "refusing" in error_line(code, err)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_files_written_by_paddle_save_still_load(tmp_path, protocol):
    layer = Cloner()
    expected = {name: value.numpy() for name, value in layer.state_dict().items()}
    path = str(tmp_path / "cloner.pdparams")
    paddle.save(layer.state_dict(), path, protocol=protocol)  # tensors and Paddle's name table
    assert same_arrays(read_state_dict(path), expected)
    with open(path, "wb") as stream:  # a plain pickle of an OrderedDict of arrays and scalars
        pickle.dump(collections.OrderedDict(expected, scale=np.float64(2.0)), stream,
                    protocol=protocol)
    assert same_arrays(read_state_dict(path), dict(expected, scale=np.asarray(2.0)))
    state = str(tmp_path / "last.pdckpt")
    paddle.save({"cloner": expected, "epoch": 3, "history": {"loss": [1.5, float("nan")]},
                 "best": {"image_auroc": -float("inf"), "epoch": None}}, state,
                protocol=protocol)
    loaded = load_training_state(state)
    assert loaded["epoch"] == 3 and loaded["best"]["image_auroc"] == -float("inf")
    assert same_arrays(loaded["cloner"], expected)


def test_safetensors_with_wrong_content_is_named(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path))
    path = str(tmp_path / "cloner.safetensors")
    save_state_dict({"features.0.weight": np.zeros((2, 2), np.float32)}, path)
    code, _, err = run_main(test_script.main, ["--config", config, "--model_path", path], capsys)
    assert path in error_line(code, err) and "features.0.weight" in err
