"""Reading and writing weight files: Paddle `.pdparams`, `.safetensors`, torchvision `.pth`, and
Keras' VGG16 `.h5` (read only, utils/keras_weights.py).

Loading is strict: a missing, unexpected or mis-shaped key is an error that names the key and the
file, never a printed warning followed by a silently half-loaded network. `.pdparams` files are
pickles: they are read with only NumPy's array builders allowed (utils/safe_pickle.py).

A trained cloner is saved as one transaction (utils/files.py): its weights and its .json (epoch,
threshold, expert fingerprint, config, a digest of the weights) are committed together, and
reading checks that the .json describes these very weights.
"""
import hashlib
import io
import json
import os
import time

import numpy as np
import paddle

from utils.config import WEIGHTS_FORMATS
from utils.errors import UserError
from utils.files import atomic_write, bytes_writer, commit_files, current_path
from utils.safe_pickle import RefusedPickle, load_arrays_only

KERAS_EXTENSIONS = (".h5", ".hdf5")  # Keras' VGG16, converted on reading
READ_ATTEMPTS = 3  # a pair that does not match is read again: a save may be replacing it


def _refused(path: str, error: RefusedPickle) -> UserError:
    return UserError(f"refusing to load {path}: it is a pickle that would call {error} while "
                     "loading, and weights need nothing but NumPy arrays (a pickle can run any "
                     "code; ask for a .safetensors file)")


def weights_path(folder: str, stem: str, weights_format: str) -> str:
    """`folder/stem.pdparams` or `folder/stem.safetensors`."""
    return os.path.join(folder, f"{stem}.{weights_format}")


def find_weights(folder: str, stem: str, weights_format: str = WEIGHTS_FORMATS[0]) -> str:
    """The weights file `stem` in `folder` in `weights_format`, or else in the other format when
    only that one exists (the preferred path when neither does)."""
    preferred = weights_path(folder, stem, weights_format)
    if os.path.isfile(current_path(preferred)):
        return preferred
    for other in WEIGHTS_FORMATS:
        if os.path.isfile(current_path(weights_path(folder, stem, other))):
            return weights_path(folder, stem, other)
    return preferred


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def read_state_dict(path: str) -> dict:
    """{name: numpy array} from a weights file, whatever its format."""
    if path.endswith((".pth", ".pt") + KERAS_EXTENSIONS):
        if not os.path.isfile(path):
            raise UserError(f"weights file not found: {path}")
        if path.endswith(KERAS_EXTENSIONS):
            from utils.keras_weights import read_keras_vgg16
            return read_keras_vgg16(path)
        return _read_torch(path)
    return _parse_weights(path, _read_bytes(current_path(path)))


def _parse_weights(path: str, data: bytes) -> dict:
    """{name: numpy array} from the bytes of the .pdparams or .safetensors file `path`."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load
        try:
            return load(data)
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"cannot read {path}: {error}") from None
    try:
        state = load_arrays_only(io.BytesIO(data))
    except RefusedPickle as error:
        raise _refused(path, error) from None
    except Exception as error:  # a truncated or foreign pickle raises many unrelated types
        raise UserError(f"cannot read weights file {path} ({type(error).__name__}): it is "
                        "truncated or not a Paddle .pdparams file") from None
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    return {name: np.asarray(value) for name, value in state.items()
            if isinstance(value, (np.ndarray, np.generic))}


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise UserError(f"reading the PyTorch file {path} needs PyTorch: pip install torch "
                        "(the CPU build is enough), or use a .pdparams file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many unrelated types for a bad file
        raise UserError(f"cannot read PyTorch file {path}: {error}") from None
    return {name: value.numpy() for name, value in state.items()}


def load_state_strict(layer: paddle.nn.Layer, state: dict, source: str) -> None:
    """Copy `state` into `layer`; every key must be there with its exact shape, and no others."""
    expected = layer.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{source}: missing key '{name}'")
        if list(state[name].shape) != list(tensor.shape):
            raise UserError(f"{source}: key '{name}' has shape {list(state[name].shape)}, "
                            f"expected {list(tensor.shape)}")
        if not np.isfinite(np.asarray(state[name])).all():
            raise UserError(f"{source}: key '{name}' holds NaN or infinite values")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{source}: unexpected key '{unexpected[0]}'"
                        + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    layer.set_state_dict({name: state[name].astype(str(expected[name].dtype).split(".")[-1])
                          for name in expected})


def _arrays(state: dict) -> dict:
    return {name: value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
            for name, value in state.items()}


def weights_bytes(state: dict, path: str) -> bytes:
    """The file that `save_state_dict(state, path)` writes, as bytes (the format from `path`)."""
    arrays = _arrays(state)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save
        return save({name: np.ascontiguousarray(value) for name, value in arrays.items()})
    buffer = io.BytesIO()
    paddle.save(arrays, buffer)
    return buffer.getvalue()


def save_state_dict(state: dict, path: str) -> None:
    """Write {name: tensor or array} atomically; `.safetensors` holds no pickle."""
    atomic_write(path, bytes_writer(weights_bytes(state, path)))


def info_path(model_path: str) -> str:
    """The JSON beside a cloner checkpoint: `final_model.pdparams` -> `final_model.json`."""
    return os.path.splitext(model_path)[0] + ".json"


def weights_digest(state: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values: the same for a .pdparams and a
    .safetensors file of the same weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_model(model_path: str, state: dict, info: dict) -> None:
    """The weights `model_path` and their .json (`info` with the weights' digest) as one
    transaction; a same-named weights file in the other format goes in the same step, so that
    it cannot be loaded by mistake."""
    arrays = _arrays(state)
    data = weights_bytes(arrays, model_path)
    folder, name = os.path.split(model_path)
    stem, extension = os.path.splitext(name)
    info = {**info, "weights_file": name, "weights_digest": weights_digest(arrays)}
    text = json.dumps(info, indent=2) + "\n"
    others = [f"{stem}.{fmt}" for fmt in WEIGHTS_FORMATS if f".{fmt}" != extension]
    commit_files(folder, {name: bytes_writer(data),
                          os.path.basename(info_path(model_path)): bytes_writer(text.encode())},
                 label=stem, remove=others)


def load_model_info(model_path: str) -> dict:
    """What training recorded beside a checkpoint (threshold, epoch, ...); {} when absent."""
    path = current_path(info_path(model_path))
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as stream:
            info = json.load(stream)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return info


def read_model(model_path: str, info: dict = None) -> tuple:
    """(weights {name: array}, info) of a saved cloner, the .json checked to describe these very
    weights (by the digest it records; files saved before it was recorded are taken as they are).
    `info`: the .json as the caller already read it."""
    expected = info
    for attempt in range(READ_ATTEMPTS):
        info = load_model_info(model_path) if expected is None else expected
        weights = _parse_weights(model_path, _read_bytes(current_path(model_path)))
        recorded, actual = info.get("weights_digest"), weights_digest(weights)
        if recorded in (None, actual):
            return weights, info
        if expected is not None and load_model_info(model_path) != expected:
            raise UserError(f"{model_path} was replaced while it was being read (a run is saving "
                            "it): run the command again")
        time.sleep(0.2 * (attempt + 1))
    raise UserError(f"{model_path} and {info_path(model_path)} do not belong together: the "
                    f"weights' digest is {actual[:12]}..., the .json records "
                    f"{str(recorded)[:12]}... (one was replaced or copied without the other); "
                    "put back the matching pair, or remove the .json to use the weights without "
                    "their threshold and expert check")


def save_training_state(path: str, state: dict, beside: dict = None) -> None:
    """The resumable state (cloner, optimizer, epoch, history, config) and the text files
    `beside` (name -> text, e.g. history.json) written as one transaction."""
    folder, name = os.path.split(path)
    writers = {name: lambda tmp: paddle.save(state, tmp)}
    writers.update({other: bytes_writer(text.encode("utf-8"))
                    for other, text in (beside or {}).items()})
    commit_files(folder, writers, label=os.path.splitext(name)[0])


def load_training_state(path: str) -> dict:
    path_read = current_path(path)
    if not os.path.isfile(path_read):
        raise UserError(f"nothing to resume: {path} not found")
    try:
        state = load_arrays_only(path_read)
    except RefusedPickle as error:
        raise _refused(path, error) from None
    except Exception as error:  # a truncated pickle raises many different types
        raise UserError(f"cannot read training state {path} ({type(error).__name__}): it is "
                        "truncated or not a training state") from None
    if not isinstance(state, dict) or "cloner" not in state or "epoch" not in state:
        raise UserError(f"{path} is not a training state")
    return state
