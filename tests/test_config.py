"""Configuration: unknown keys, types and ranges, YAML overrides, precedence, round trips."""
import argparse
import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from utils.config import (DATASETS, LOCALIZATION_METHODS, MAX_BATCH_SIZE, MAX_EPOCHS,
                          MAX_IMG_SIZE, MAX_SAMPLES, MAX_THREADS, MAX_WORKERS, MVTEC_CATEGORIES,
                          SCHEMA, add_config_args, build_config, config_from_args,
                          default_config, load_saved_config, save_config)
from utils.errors import UserError


def write_yaml(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def user_error(**kwargs) -> str:
    with pytest.raises(UserError) as error:
        build_config(**kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_papers_mvtec_setup():
    config = build_config()
    assert config == default_config()
    assert (config["lamda"], config["batch_size"], config["learning_rate"],
            config["num_epochs"], config["mvtec_img_size"]) == (0.5, 64, 1e-3, 601, 128)
    assert config["equal_network_size"] is False and config["pretrain"] is True


def test_unknown_key_in_a_file_is_named_with_a_hint(tmp_path):
    path = write_yaml(tmp_path, "lamda: 0.5\nbatch_sise: 8\n")
    message = user_error(files=[path])
    assert "'batch_sise'" in message and path in message and "did you mean 'batch_size'" in message


def test_unknown_key_in_an_override_is_named_with_a_hint():
    message = user_error(overrides=["lamba=0.1"])
    assert "'lamba'" in message and "lamba=0.1" in message and "did you mean 'lamda'" in message
    message = user_error(overrides=["zzzzzz=1"])
    assert "'zzzzzz'" in message and "did you mean" not in message


@pytest.mark.parametrize("key,value", [
    ("batch_size", "x"), ("batch_size", 2.5), ("batch_size", True), ("pretrain", 3),
    ("pretrain", "yes please"), ("lamda", "big"), ("lamda", [1]), ("learning_rate", False),
    ("seed", 1.5), ("num_epochs", None), ("normal_class", 1.5), ("dataset_root", 3),
])
def test_wrong_types_are_one_line_errors_naming_the_key(tmp_path, key, value):
    message = user_error(files=[write_yaml(tmp_path, yaml.safe_dump({key: value}))])
    assert f"'{key}'" in message and repr(value) in message


@pytest.mark.parametrize("override", [
    "lamda=-0.1", "batch_size=0", "learning_rate=0", "num_epochs=-1", "eval_interval=0",
    "mvtec_img_size=100", "mvtec_img_size=0", "localization_method=saliency",
    "dataset_name=imagenet", "seed=-1", "seed=4294967296", "eval_batch_size=0",
    "device=tpu", "engine=fast", "expert_cache=gpu", "vgg_weights=",
])
def test_out_of_range_values_are_one_line_errors_naming_the_key(override):
    key = override.split("=")[0]
    assert f"'{key}'" in user_error(overrides=[override])


ABSURD = [("batch_size", 10 ** 9, MAX_BATCH_SIZE), ("eval_batch_size", 10 ** 9, MAX_BATCH_SIZE),
          ("mvtec_img_size", 32 * 31250, MAX_IMG_SIZE), ("num_epochs", 10 ** 9, MAX_EPOCHS),
          ("num_workers", 10 ** 6, MAX_WORKERS), ("cpu_threads", 10 ** 6, MAX_THREADS),
          ("train_cpu_threads", 10 ** 6, MAX_THREADS),
          ("smooth_grad_samples", 10 ** 9, MAX_SAMPLES), ("ig_steps", 10 ** 9, MAX_SAMPLES)]


@pytest.mark.parametrize("key,absurd,bound", ABSURD)
def test_values_far_outside_sense_are_refused_and_the_bound_itself_is_not(key, absurd, bound):
    message = user_error(overrides=["dataset_name=folder", f"{key}={absurd}"])
    assert f"'{key}'" in message and str(bound) in message and str(absurd) in message
    assert build_config(overrides=["dataset_name=folder", f"{key}={bound}"])[key] == bound


@pytest.mark.parametrize("override", ["lamda=.inf", "learning_rate=.inf", "learning_rate=.nan",
                                      "lamda=-.inf"])
def test_infinite_or_nan_rates_are_refused(override):
    key, value = override.split("=")
    assert f"'{key}' in override '{override}': expected a number >" in user_error(
        overrides=[override]) and value.strip("-.") in user_error(overrides=[override])


@pytest.mark.parametrize("value", ["!!python/object/apply:os.system ['touch {marker}']",
                                   "[1, !!python/object/apply:os.system ['touch {marker}']]",
                                   "!!timestamp x", "!custom text"])
def test_an_override_with_a_yaml_tag_is_refused_and_runs_nothing(tmp_path, value):
    marker = tmp_path / "ran"
    message = user_error(overrides=["dataset_name=folder",
                                     "dataset_root=" + value.format(marker=marker)])
    assert "YAML tags" in message and "dataset_root=" in message
    assert not marker.exists()
    quoted = build_config(overrides=["dataset_name=folder", "dataset_root='!custom text'"])
    assert quoted["dataset_root"] == "!custom text"


@pytest.mark.parametrize("text, culprit", [
    ("dataset_root: !!python/object/apply:os.system ['touch {marker}']\n", "line 1"),
    ("dataset_root: !!timestamp x\n", "AttributeError"),
    ("1: 2\n", "key 1 is not a name"), ("null: x\n", "key None is not a name"),
])
def test_a_config_file_with_tags_or_odd_keys_is_one_line_and_runs_nothing(tmp_path, text,
                                                                          culprit):
    marker = tmp_path / "ran"
    path = write_yaml(tmp_path, text.format(marker=marker))
    message = user_error(files=[path])
    assert path in message and culprit in message
    assert not marker.exists()


def test_a_yaml_alias_bomb_is_refused_in_a_short_line(tmp_path):
    """Nine levels of nine aliases: 9**7 strings if it were printed in full."""
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 7)]
    path = write_yaml(tmp_path, "lamda: [" + ", ".join(levels) + "]\n")
    message = user_error(files=[path])
    assert "'lamda'" in message and len(message) < 500


def test_unknown_mvtec_category_is_an_error_naming_the_key():
    message = user_error(overrides=["normal_class=bottel"])
    assert "normal_class" in message and "'bottel'" in message and "bottle" in message
    # any class name is fine for the folder dataset
    assert build_config(overrides=["dataset_name=folder", "normal_class=bottel"])[
        "normal_class"] == "bottel"


@pytest.mark.parametrize("override,key,value", [
    ("batch_size=2", "batch_size", 2), ("pretrain=false", "pretrain", False),
    ("use_bias=true", "use_bias", True), ("learning_rate=1e-3", "learning_rate", 1e-3),
    ("lamda=1", "lamda", 1.0), ("lamda=.25", "lamda", 0.25), ("seed=null", "seed", None),
    ("seed=7", "seed", 7), ("eval_batch_size=~", "eval_batch_size", None),
    ("dataset_root=/data/my mvtec", "dataset_root", "/data/my mvtec"),
    ("vgg_weights=a=b.pdparams", "vgg_weights", "a=b.pdparams"),
    (" num_epochs = 3", "num_epochs", 3),
])
def test_overrides_are_parsed_as_yaml(override, key, value):
    config = build_config(overrides=[override])
    assert config[key] == value and type(config[key]) is type(value)


def test_float_keys_accept_yaml_1_1_exponents_in_files(tmp_path):
    config = build_config(files=[write_yaml(tmp_path, "learning_rate: 1e-3\nlamda: 2\n")])
    assert config["learning_rate"] == 1e-3 and config["lamda"] == 2.0
    assert type(config["learning_rate"]) is float and type(config["lamda"]) is float


def test_precedence_defaults_base_file_overrides(tmp_path):
    base = {"num_epochs": 3, "batch_size": 4, "lamda": 0.1, "seed": 1}
    path = write_yaml(tmp_path, "batch_size: 8\nlamda: 0.2\n")
    config = build_config(base=base, files=[path], overrides=["lamda=0.3"])
    assert config["learning_rate"] == 1e-3  # default
    assert config["num_epochs"] == 3 and config["seed"] == 1  # base
    assert config["batch_size"] == 8  # file over base
    assert config["lamda"] == 0.3  # override over file
    second = write_yaml(tmp_path, "batch_size: 16\n", "second.yaml")
    assert build_config(base=base, files=[path, second])["batch_size"] == 16
    assert build_config(overrides=["batch_size=2", "batch_size=5"])["batch_size"] == 5


def test_config_from_args(tmp_path):
    path = write_yaml(tmp_path, "dataset_name: folder\nnormal_class: a\nbatch_size: 8\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", path, "--normal_class", "b", "--dataset_root", "/r",
                              "-o", "batch_size=3", "-o", "normal_class=c"])
    config = config_from_args(args)
    assert config["batch_size"] == 3 and config["dataset_root"] == "/r"
    assert config["normal_class"] == "c"  # -o comes after --normal_class
    args = parser.parse_args(["--config", path, "--normal_class", "b"])
    assert config_from_args(args)["normal_class"] == "b"


def test_bad_config_files_are_user_errors(tmp_path):
    for text in ("lamda: [0.5\n", "- a\n- b\n", "just a string\n"):
        message = user_error(files=[write_yaml(tmp_path, text)])
        assert str(tmp_path) in message
    assert build_config(files=[write_yaml(tmp_path, "")]) == default_config()
    message = user_error(files=[str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in message


@pytest.mark.parametrize("content", [
    b"seed: 2001-02-30\n",  # YAML reads a date, Python refuses the day
    b"batch_size: !!int abc\n",
    b"lamda: " + b"[" * 5000 + b"\n",
    b"save_dir: \xff\xfe caf\xe9\n",  # not UTF-8
])
def test_unreadable_config_files_are_user_errors(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert str(path) in user_error(files=[str(path)])


def test_saved_config_round_trips(tmp_path):
    config = build_config(overrides=["dataset_name=folder", "normal_class=7", "seed=3",
                                     "learning_rate=2.5e-4", "dataset_root=data/x"])
    path = str(tmp_path / "saved.yaml")
    save_config(config, path)
    assert load_saved_config(path) == config


# ---- property tests -------------------------------------------------------------------------

POSITIVE = st.integers(1, 10 ** 6)
TEXT = st.text(max_size=20)
VALID = {
    "dataset_name": st.sampled_from(DATASETS),
    "dataset_root": TEXT,
    "normal_class": st.one_of(TEXT, st.integers(-10, 10 ** 6)),  # replaced for mvtec below
    "mvtec_img_size": st.integers(1, MAX_IMG_SIZE // 32).map(lambda k: 32 * k),
    "pretrain": st.booleans(),
    "vgg_weights": st.text(min_size=1, max_size=20),
    "equal_network_size": st.booleans(),
    "use_bias": st.booleans(),
    "num_epochs": st.integers(0, MAX_EPOCHS),
    "batch_size": st.integers(1, MAX_BATCH_SIZE),
    "learning_rate": st.floats(min_value=0, exclude_min=True, allow_nan=False,
                               allow_infinity=False),
    "lamda": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    "direction_loss_only": st.booleans(),
    "eval_interval": POSITIVE,
    "seed": st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)),
    "continue_train": st.booleans(),
    "save_interval": POSITIVE,
    "save_dir": TEXT,
    "weights_format": st.sampled_from(("pdparams", "safetensors")),
    "log_dir": TEXT,
    "localization_test": st.booleans(),
    "localization_method": st.sampled_from(LOCALIZATION_METHODS),
    "smooth_grad_samples": st.integers(1, MAX_SAMPLES),
    "ig_steps": st.integers(1, MAX_SAMPLES),
    "device": st.sampled_from(("auto", "cpu", "gpu")),
    "cpu_threads": st.integers(0, MAX_THREADS),
    "train_cpu_threads": st.integers(0, MAX_THREADS),
    "engine": st.sampled_from(("auto", "eager", "inference")),
    "expert_cache": st.sampled_from(("memory", "float16", "disk", "none")),
    "eval_batch_size": st.one_of(st.none(), st.integers(1, MAX_BATCH_SIZE)),
    "num_workers": st.integers(0, MAX_WORKERS),
    "amp": st.booleans(),
    "sync_bn": st.booleans(),
    "use_visualdl": st.booleans(),
}


def test_every_config_key_has_a_strategy():
    assert set(VALID) == set(SCHEMA)


@st.composite
def valid_values(draw):
    keys = draw(st.lists(st.sampled_from(sorted(VALID)), unique=True))
    values = {key: draw(VALID[key]) for key in keys}
    dataset = values.get("dataset_name", "mvtec")
    if dataset == "mvtec":
        if "normal_class" in values or draw(st.booleans()):
            values["normal_class"] = draw(st.sampled_from(MVTEC_CATEGORIES))
    elif dataset in ("mnist", "fashionmnist", "cifar10"):
        values["normal_class"] = draw(st.integers(0, 9))
    elif dataset == "retina":
        values["normal_class"] = draw(st.sampled_from(["NORMAL", "normal_scans"]))
    return values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_values())
def test_property_valid_configs_round_trip_through_save_and_load(values):
    config = build_config(base=values)
    for key, value in values.items():
        assert config[key] == value
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        save_config(config, path)
        loaded = load_saved_config(path)
    assert loaded == config
    assert {key: type(value) for key, value in loaded.items()} == {
        key: type(value) for key, value in config.items()}


def build_or_user_error(override):
    try:
        build_config(overrides=[override])
    except UserError as error:
        assert str(error)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
@example("")
@example("=")
@example("=1")
@example("batch_size")
def test_property_garbage_overrides_raise_only_user_errors(text):
    build_or_user_error(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SCHEMA)), st.text(max_size=30))
@example("seed", "2001-02-30")  # YAML reads a date, Python refuses the day
@example("batch_size", "!!int abc")
@example("lamda", "!!float x")
@example("normal_class", "[" * 5000)
@example("learning_rate", "1e999")
@example("lamda", ".nan")
@example("seed", "&a [*a]")
def test_property_garbage_values_raise_only_user_errors(key, value):
    build_or_user_error(f"{key}={value}")
