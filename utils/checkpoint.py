"""Reading and writing weight files: Paddle `.pdparams`, `.safetensors`, torchvision `.pth`, and
Keras' VGG16 `.h5` (read only, utils/keras_weights.py).

Loading is strict: a missing, unexpected or mis-shaped key is an error that names the key and the
file, never a printed warning followed by a silently half-loaded network. `.pdparams` files are
pickles: they are read with only NumPy's array builders allowed (utils/safe_pickle.py).
"""
import json
import os

import numpy as np
import paddle

from utils.config import WEIGHTS_FORMATS
from utils.errors import UserError
from utils.files import atomic_write, atomic_write_text
from utils.safe_pickle import RefusedPickle, load_arrays_only

KERAS_EXTENSIONS = (".h5", ".hdf5")  # Keras' VGG16, converted on reading


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
    if os.path.isfile(preferred):
        return preferred
    for other in WEIGHTS_FORMATS:
        if os.path.isfile(weights_path(folder, stem, other)):
            return weights_path(folder, stem, other)
    return preferred


def read_state_dict(path: str) -> dict:
    """{name: numpy array} from a weights file, whatever its format."""
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"cannot read {path}: {error}") from None
    if path.endswith((".pth", ".pt")):
        return _read_torch(path)
    if path.endswith(KERAS_EXTENSIONS):
        from utils.keras_weights import read_keras_vgg16
        return read_keras_vgg16(path)
    try:
        state = load_arrays_only(path)
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


def save_state_dict(state: dict, path: str) -> None:
    """Write {name: tensor or array} atomically; `.safetensors` holds no pickle."""
    arrays = {name: value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
              for name, value in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        atomic_write(path, lambda tmp: save_file(
            {name: np.ascontiguousarray(value) for name, value in arrays.items()}, tmp))
    else:
        atomic_write(path, lambda tmp: paddle.save(arrays, tmp))


def info_path(model_path: str) -> str:
    """The JSON beside a cloner checkpoint: `final_model.pdparams` -> `final_model.json`."""
    return os.path.splitext(model_path)[0] + ".json"


def save_model_info(model_path: str, info: dict) -> None:
    atomic_write_text(info_path(model_path), json.dumps(info, indent=2) + "\n")


def load_model_info(model_path: str) -> dict:
    """What training recorded beside a checkpoint (threshold, epoch, ...); {} when absent."""
    path = info_path(model_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def save_training_state(path: str, state: dict) -> None:
    """The resumable state (cloner, optimizer, epoch, history, config), written atomically."""
    atomic_write(path, lambda tmp: paddle.save(state, tmp))


def load_training_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"nothing to resume: {path} not found")
    try:
        state = load_arrays_only(path)
    except RefusedPickle as error:
        raise _refused(path, error) from None
    except Exception as error:  # a truncated pickle raises many different types
        raise UserError(f"cannot read training state {path} ({type(error).__name__}): it is "
                        "truncated or not a training state") from None
    if not isinstance(state, dict) or "cloner" not in state or "epoch" not in state:
        raise UserError(f"{path} is not a training state")
    return state
