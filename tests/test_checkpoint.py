"""A saved model is one transaction: weights and their .json (threshold, expert fingerprint,
config, digest of the weights) are committed together, and loading checks they belong together."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest

import test as test_script
from fault_injection import Steps, leftovers, snapshot
from network import Cloner
from script_helpers import user_error  # noqa: F401
from utils import checkpoint, files
from utils.checkpoint import (find_weights, info_path, read_model, read_state_dict, save_model,
                              weights_digest)
from utils.convert_weights import convert
from utils.errors import UserError


def cloner_state(version: int) -> dict:
    paddle.seed(version)
    return {name: value.numpy() for name, value in Cloner().state_dict().items()}


def save_version(folder: str, version: int, weights_format: str = "pdparams") -> str:
    path = os.path.join(folder, f"final_model.{weights_format}")
    save_model(path, cloner_state(version), {"epoch": version, "image_threshold": version / 10})
    return path


def loaded_version(folder: str) -> int:
    """The version that loading the folder's final model gives; the weights must be that
    version's, in full."""
    weights, info = read_model(find_weights(folder, "final_model"))
    expected = cloner_state(info["epoch"])
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        assert weights[name].tobytes() == value.tobytes(), name
    assert info["image_threshold"] == info["epoch"] / 10
    return info["epoch"]


def test_a_crash_after_any_step_of_a_model_save_loads_the_old_or_the_new_model(tmp_path,
                                                                            monkeypatch):
    """Version 1 in .pdparams, replaced by version 2 in .safetensors (the .pdparams must go in
    the same transaction)."""
    folder = str(tmp_path / "model")
    save_version(folder, 1)
    crashes = []

    def after(index, name, args):
        crashes.append((snapshot(folder, str(tmp_path / f"crash{index:03d}")), name))

    Steps(monkeypatch, after=after)
    save_version(folder, 2, "safetensors")
    monkeypatch.undo()
    monkeypatch.setattr(files, "_creator_alive", lambda name: False)  # the crashed process
    versions = []
    for crashed, step in crashes:
        versions.append(loaded_version(crashed))
        files.finish_commits(crashed)  # the next save into the folder
        assert loaded_version(crashed) == versions[-1] and leftovers(crashed) == [], step
        weights_files = sorted(name for name in os.listdir(crashed) if "." in name[1:]
                               and not name.endswith(".json"))
        assert weights_files == (["final_model.pdparams"] if versions[-1] == 1
                                 else ["final_model.safetensors"]), step
    assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2
    assert len(crashes) >= 15


def test_weights_and_a_json_that_do_not_belong_together_are_one_line(tmp_path, user_error):
    first, second = (save_version(str(tmp_path / name), version)
                     for name, version in (("first", 1), ("second", 2)))
    shutil.copyfile(second, first)  # new weights beside the old .json
    with pytest.raises(UserError) as error:
        read_model(first)
    message = str(error.value)
    assert first in message and info_path(first) in message and "do not belong together" in message
    digests = [weights_digest(cloner_state(version)) for version in (2, 1)]
    assert all(digest[:12] in message for digest in digests)
    assert "\n" not in message
    message = user_error(test_script.main, ["--model_path", first, "--dataset_root",
                                            str(tmp_path)])
    assert "do not belong together" in message


def test_a_model_replaced_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """The .json of version 1 is read, then a run saves version 2 before the weights are read:
    reading starts again and gives version 2 whole; a caller that holds version 1's .json (for
    its threshold) is told instead of getting version 2's weights."""
    folder = str(tmp_path / "model")
    path = save_version(folder, 1)
    real_read = checkpoint._read_bytes
    replaced = []

    def read_during_a_save(source):
        if not replaced:
            replaced.append(save_version(folder, 2))
        return real_read(source)

    monkeypatch.setattr(checkpoint, "_read_bytes", read_during_a_save)
    assert loaded_version(folder) == 2
    replaced.clear()
    save_version(folder, 3)
    held = checkpoint.load_model_info(path)
    with pytest.raises(UserError, match="was replaced while it was being read"):
        read_model(path, held)


def test_models_saved_before_the_digest_was_recorded_still_load(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    path = str(folder / "final_model.pdparams")
    checkpoint.save_state_dict(cloner_state(4), path)
    (folder / "final_model.json").write_text(json.dumps({"epoch": 4, "image_threshold": 0.4}))
    assert loaded_version(str(folder)) == 4
    (folder / "final_model.json").unlink()
    weights, info = read_model(path)  # the earlier port's checkpoints: no .json at all
    assert info == {} and weights_digest(weights) == weights_digest(cloner_state(4))


def test_saved_weights_stay_a_plain_pdparams_and_convert_keeps_the_pair(tmp_path):
    """The earlier port's tools read the .pdparams as a plain state dict of the cloner; a copy
    converted to .safetensors keeps a .json that describes it (the digest is of the arrays)."""
    path = save_version(str(tmp_path / "model"), 5)
    loaded = paddle.load(path)
    assert sorted(loaded) == sorted(Cloner().state_dict())
    target = str(tmp_path / "copy" / "cloner.safetensors")
    convert(path, target)
    weights, info = read_model(target)
    assert info["epoch"] == 5 and weights_digest(weights) == weights_digest(read_state_dict(path))
    assert np.array_equal(weights["features.0.weight"], cloner_state(5)["features.0.weight"])
