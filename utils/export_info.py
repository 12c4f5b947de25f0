"""inference.yml: what a deployed model needs besides its graph (input size, preprocessing, map
kind, image threshold), written by export_model.py beside model.json / model.pdiparams together
with them, and the SHA-256 of each, so that a graph is never run with another export's weights or
settings."""
import hashlib
import os
from typing import Dict, Sequence, Tuple

import yaml

from utils.config import MAX_IMG_SIZE
from utils.errors import UserError
from utils.files import (atomic_write_text, bytes_writer, commit_files, current_path,
                         moving_writer)

EXPORT_INFO_FILE = "inference.yml"
REQUIRED_KEYS = ("img_size", "localization_method", "image_threshold")


def export_info_path(model_file: str) -> str:
    """inference.yml in the model file's folder."""
    return os.path.join(os.path.dirname(os.path.abspath(model_file)), EXPORT_INFO_FILE)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_export_info(folder: str, info: dict, files: Dict[str, str] = None,
                      remove: Sequence[str] = ()) -> str:
    """Write `folder`/inference.yml; returns its path. With `files` (name in `folder` -> a file
    on the same disk to move there), those files and inference.yml, which records their SHA-256,
    replace the previous export (and the files `remove` names) as one transaction."""
    path = os.path.join(folder, EXPORT_INFO_FILE)
    if not files:
        atomic_write_text(path, yaml.safe_dump(info, sort_keys=False))
        return path
    info = {**info, "files_sha256": {name: file_sha256(source) for name, source in files.items()}}
    writers = {name: moving_writer(source) for name, source in files.items()}
    writers[EXPORT_INFO_FILE] = bytes_writer(yaml.safe_dump(info, sort_keys=False).encode())
    commit_files(folder, writers, label="export", remove=remove)
    return path


def read_export_info(model_file: str) -> dict:
    """The inference.yml beside `model_file`; missing or incomplete is an error naming it."""
    path = current_path(export_info_path(model_file))
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
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMG_SIZE:
        raise UserError(f"{path}: img_size must be an integer in [1, {MAX_IMG_SIZE}], "
                        f"got {size!r}")
    return info


def checked_export_files(info: dict, model_file: str, params_file: str) -> Tuple[str, str]:
    """(graph, weights) to run: the files of the export that `info` describes, checked against
    the SHA-256 it records (exports made before it was recorded are taken as they are); no
    weights file (None) for a model.onnx."""
    recorded = info.get("files_sha256") or {}
    files = []
    for path in (model_file, params_file):
        if path is None:  # a model.onnx holds its weights
            files.append(None)
            continue
        current = current_path(path)
        expected = recorded.get(os.path.basename(path))
        if expected is not None and file_sha256(current) != expected:
            raise UserError(f"{path} does not belong with {export_info_path(model_file)} (its "
                            "SHA-256 differs from the one recorded there: the files come from "
                            "different exports); export the model again")
        files.append(current)
    return files[0], files[1]
