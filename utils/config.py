"""Configuration: the known keys with their defaults, YAML files, `-o key=value` overrides, validation.

Every script reads its settings through `config_from_args`; a key that is unknown, of the wrong
type or out of range stops the script with one line naming the key and where it came from.
"""
import argparse
import difflib
import math
import os
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import yaml

from utils.errors import UserError
from utils.files import atomic_write_text

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
DATASETS = ("mvtec", "folder", "mnist", "fashionmnist", "cifar10", "retina")
CLASS_INDEX_DATASETS = ("mnist", "fashionmnist", "cifar10")  # normal_class is 0..9
LOCALIZATION_METHODS = ("gradients", "smooth_grad", "gbp", "integrated_gradients", "feature_diff")
WEIGHTS_FORMATS = ("pdparams", "safetensors")  # pdparams: what the earlier port's tools read


@dataclass(frozen=True)
class Key:
    types: tuple
    default: Any
    check: Optional[Callable[[Any], bool]] = None
    expected: str = ""


def _one_of(choices):
    return Key((str,), choices[0], lambda v: v in choices, "one of " + ", ".join(choices))


# Upper bounds: a value beyond them is a typo, refused before anything is allocated or started.
MAX_IMG_SIZE = 2048  # VGG16's first feature map alone is 64 x 2048 x 2048 floats = 1 GiB per image
MAX_BATCH_SIZE = 65536  # above the largest one-class training set (OCT2017 NORMAL: 26,315 images)
MAX_EPOCHS = 100_000  # the paper trains 601 epochs
MAX_SAMPLES = 10_000  # smooth_grad copies / integrated-gradients steps (the paper's 50 and 100)
MAX_WORKERS = 256  # loader processes, one per core of the largest machines
MAX_THREADS = 1024  # threads per process
_REPR = reprlib.Repr()  # values in messages, cut short (a YAML alias bomb stays small)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _int(default, low, what=None, high=None):
    if high is None:
        return Key((int,), default, lambda v: v >= low, what or f"an integer >= {low}")
    return Key((int,), default, lambda v: low <= v <= high,
               what or f"an integer in [{low}, {high}]")


def _finite(default, low, strict):
    """A number above `low` (or equal, unless `strict`); inf and nan are refused too."""
    return Key((float,), default, lambda v: math.isfinite(v) and (v > low if strict else v >= low),
               f"a number {'>' if strict else '>='} {low:g}")


def _multiple_of_32(v):
    return 32 <= v <= MAX_IMG_SIZE and v % 32 == 0


SCHEMA = {
    # data
    "dataset_name": _one_of(DATASETS),
    "dataset_root": Key((str,), "Dataset/MVTec"),
    "normal_class": Key((str, int), "capsule", expected="a category name or class index"),
    "mvtec_img_size": _int(128, 32, f"a multiple of 32 in [32, {MAX_IMG_SIZE}]", MAX_IMG_SIZE),
    # networks
    "pretrain": Key((bool,), True),
    "vgg_weights": Key((str,), "imagenet", lambda v: v != "", "'imagenet', 'keras' or a weights file"),
    "equal_network_size": Key((bool,), False),
    "use_bias": Key((bool,), False),
    # training (the paper's MVTec AD setup)
    "num_epochs": _int(601, 0, high=MAX_EPOCHS),
    "batch_size": _int(64, 1, high=MAX_BATCH_SIZE),
    "learning_rate": _finite(1e-3, 0, strict=True),
    "lamda": _finite(0.5, 0, strict=False),
    "direction_loss_only": Key((bool,), False),
    "eval_interval": _int(10, 1),
    "seed": Key((int, type(None)), None, lambda v: v is None or 0 <= v < 2 ** 32,
                "null or an integer in [0, 2**32)"),
    "continue_train": Key((bool,), False),
    "save_interval": _int(1, 1),
    "save_dir": Key((str,), "output"),
    "weights_format": _one_of(WEIGHTS_FORMATS),
    "log_dir": Key((str,), "logs"),
    # testing
    "localization_test": Key((bool,), True),
    "localization_method": _one_of(LOCALIZATION_METHODS),
    "smooth_grad_samples": _int(50, 1, high=MAX_SAMPLES),
    "ig_steps": _int(100, 1, high=MAX_SAMPLES),
    # speed
    "device": _one_of(("auto", "cpu", "gpu")),
    "cpu_threads": _int(0, 0, f"0 (all cores) or an integer up to {MAX_THREADS}", MAX_THREADS),
    "train_cpu_threads": _int(1, 0, f"0 (automatic) or an integer up to {MAX_THREADS}",
                              MAX_THREADS),
    "engine": _one_of(("auto", "eager", "inference")),
    "expert_cache": _one_of(("memory", "float16", "disk", "none")),
    "eval_batch_size": Key((int, type(None)), None,
                           lambda v: v is None or 1 <= v <= MAX_BATCH_SIZE,
                           f"null or an integer in [1, {MAX_BATCH_SIZE}]"),
    "num_workers": _int(0, 0, high=MAX_WORKERS),
    "amp": Key((bool,), False),
    "sync_bn": Key((bool,), False),
    # monitoring
    "use_visualdl": Key((bool,), False),  # VisualDL logs in <save_dir>/<class>/vdl/
}
ARCHITECTURE_KEYS = ("equal_network_size", "use_bias")


def default_config() -> dict:
    return {name: key.default for name, key in SCHEMA.items()}


def _coerce(name: str, value: Any, origin: str) -> Any:
    key = SCHEMA.get(name)
    if key is None:
        close = difflib.get_close_matches(name, SCHEMA, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{name}' in {origin}{hint}")
    # YAML 1.1 reads `1e-3` as a string; accept numbers written that way for float keys.
    if float in key.types and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if float in key.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    is_bool = isinstance(value, bool)
    type_ok = isinstance(value, key.types) and (bool in key.types or not is_bool)
    if not type_ok or (key.check is not None and not key.check(value)):
        expected = key.expected or " or ".join(t.__name__ for t in key.types)
        raise UserError(f"config key '{name}' in {origin}: expected {expected}, "
                        f"got {_REPR.repr(value)}")
    return value


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise UserError(f"config file {path}{line} is not valid YAML") from None
    except (ValueError, RecursionError) as error:  # not UTF-8, a bad date or !!int, deep nesting
        raise UserError(f"config file {path} is not valid YAML ({error})") from None
    except Exception as error:  # PyYAML's constructors raise other types too (!!timestamp x)
        raise UserError(f"config file {path} is not valid YAML ({type(error).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of key: value")
    for key in data:
        if not isinstance(key, str):
            raise UserError(f"config file {path}: key {_REPR.repr(key)} is not a name")
    return data


def parse_override(text: str) -> tuple:
    """`key=value` -> (key, value), the value read as YAML (2 -> int, false -> bool, x -> str)."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise UserError(f"override '{text}' must look like key=value")
    if _has_tag(raw):
        raise UserError(f"override '{text}': YAML tags (!...) are not accepted in a value; "
                        "quote it to mean the text")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # e.g. a bad date: PyYAML raises YAMLError, ValueError and others
        value = raw
    return name.strip(), value


def _has_tag(raw: str) -> bool:
    """Whether a YAML value names a type with a tag (`!!python/object:...`, `!custom`)."""
    try:
        return any(isinstance(token, yaml.TagToken) for token in yaml.scan(raw))
    except yaml.YAMLError:  # not YAML at all: taken as text
        return False


def build_config(base: Optional[dict] = None, files=(), overrides=(),
                 base_origin: str = "the saved config") -> dict:
    """Defaults, then `base` (e.g. a checkpoint's saved config), files, then overrides."""
    config, origins = default_config(), {}
    layers = [(base or {}, base_origin)]
    layers += [(_read_yaml(path), path) for path in files]
    layers += [(dict([parse_override(text)]), f"override '{text}'") for text in overrides]
    for values, origin in layers:
        for name, value in values.items():
            config[name] = _coerce(name, value, origin)
            origins[name] = origin
    try:
        check_consistency(config)
    except UserError as error:  # say where the keys it names were set
        sources = list(dict.fromkeys(origin for name, origin in origins.items()
                                     if name in str(error)))
        if not sources:
            raise
        raise UserError(f"{error} (set in {' and '.join(sources)})") from None
    return config


def check_consistency(config: dict) -> None:
    """Rules that involve more than one key."""
    if config["dataset_name"] == "mvtec":
        category = config["normal_class"]
        if category not in MVTEC_CATEGORIES:
            raise UserError(f"normal_class {category!r} is not an MVTec AD category; valid: "
                            + ", ".join(MVTEC_CATEGORIES)
                            + " (use dataset_name: folder for your own images)")
    if config["dataset_name"] in CLASS_INDEX_DATASETS:
        label = config["normal_class"]
        if isinstance(label, str) or not 0 <= label < 10:
            raise UserError(f"normal_class {label!r} is not a class of "
                            f"{config['dataset_name']}: expected a class index 0..9")
    if config["dataset_name"] == "retina" and not isinstance(config["normal_class"], str):
        raise UserError(f"normal_class {config['normal_class']!r} for retina must be the name "
                        "of the normal class folder, e.g. NORMAL")
    if config["dataset_name"] in ("mvtec", "folder", "retina") and \
            not _multiple_of_32(config["mvtec_img_size"]):
        raise UserError(f"config key 'mvtec_img_size': expected a multiple of 32 in [32, "
                        f"{MAX_IMG_SIZE}], got {config['mvtec_img_size']}")


def add_config_args(parser: argparse.ArgumentParser, default_config_path="configs/config.yaml",
                    data_args: bool = True, config_help: Optional[str] = None):
    """--config, -o and, for scripts that read a data set, --dataset_root and --normal_class."""
    parser.add_argument("--config", default=None,
                        help=config_help or f"YAML config file (default: {default_config_path}, "
                                            "or the config saved beside --model_path)")
    if data_args:
        parser.add_argument("--dataset_root", default=None, help="folder holding the categories")
        parser.add_argument("--normal_class", default=None, help="category (class) to use")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. -o num_epochs=2 (repeatable)")
    parser.set_defaults(default_config_path=default_config_path)


def config_from_args(args, base: Optional[dict] = None) -> dict:
    """The resolved config for a script: its --config file (or the default one when there is no
    saved `base`), then --dataset_root / --normal_class, then every -o override."""
    files = [args.config] if args.config else ([] if base else [args.default_config_path])
    overrides = list(args.override)
    if getattr(args, "dataset_root", None) is not None:
        overrides.insert(0, f"dataset_root={args.dataset_root}")
    if getattr(args, "normal_class", None) is not None:
        # read as YAML like any override: 'bottle' stays a string, '3' (an MNIST digit) an int
        overrides.insert(0, f"normal_class={args.normal_class}")
    return build_config(base, files, overrides)


def save_config(config: dict, path: str) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def load_saved_config(path: str) -> dict:
    """A config written by `save_config` (e.g. beside a checkpoint), validated."""
    return build_config(base=_read_yaml(path), base_origin=path)
