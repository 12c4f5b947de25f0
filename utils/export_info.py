"""inference.yml: what a deployed model needs besides its graph (input size, preprocessing, map
kind, image threshold), written by export_model.py beside model.json / model.pdiparams."""
import os

import yaml

from utils.errors import UserError
from utils.files import atomic_write_text

EXPORT_INFO_FILE = "inference.yml"
REQUIRED_KEYS = ("img_size", "localization_method", "image_threshold")


def export_info_path(model_file: str) -> str:
    """inference.yml in the model file's folder."""
    return os.path.join(os.path.dirname(os.path.abspath(model_file)), EXPORT_INFO_FILE)


def write_export_info(folder: str, info: dict) -> str:
    """Write `folder`/inference.yml; returns its path."""
    path = os.path.join(folder, EXPORT_INFO_FILE)
    atomic_write_text(path, yaml.safe_dump(info, sort_keys=False))
    return path


def read_export_info(model_file: str) -> dict:
    """The inference.yml beside `model_file`; missing or incomplete is an error naming it."""
    path = export_info_path(model_file)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: export the model with export_model.py, which writes "
                        "it beside the model file")
    try:
        with open(path, encoding="utf-8") as stream:
            info = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {path}: {type(error).__name__}") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} must hold a mapping of key: value")
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}")
    size = info["img_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"{path}: img_size must be a positive integer, got {size!r}")
    return info
