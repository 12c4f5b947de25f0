"""Keras' ImageNet VGG16 (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`) as expert weights.

Keras ships the VGG authors' Caffe network, which takes BGR input in 0..255 minus the mean pixel.
Reading it folds that convention into the first convolution, so that the expert takes
torchvision's (RGB, (x - mean) / std with x in [0, 1]); then the first convolution's weights and
every bias are divided by 57.63 (255 x the mean std). A ReLU / max-pool network is positively
homogeneous, so every activation is the Caffe network's divided by 57.63: cosine similarities
are unchanged and magnitudes come close to torchvision's VGG16, so the paper's `lamda` keeps its
meaning. Exact except at the image border, where the zero padding means another colour.

The file is Keras' legacy HDF5 weights format (keras/src/legacy/saving/legacy_h5_format.py): the
`layer_names` attribute lists the layers in model order (split into layer_names0, layer_names1,
... when long), each layer's group lists its arrays in `weight_names` (kernel, then bias), and
kernels are [kh, kw, in, out]. Keras 1 named the arrays `block1_conv1_W_1:0`, tf.keras
`block1_conv1/kernel:0` (a nested group), Keras 3 `block1_conv1/kernel`; as in Keras' own
loading, names only locate the arrays and the order decides. A whole saved model keeps its
weights under `model_weights`.
"""
from typing import List, Tuple

import numpy as np

from classification_datasets import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD
from utils.errors import UserError
from vgg import VGG16_CFG

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])  # keras.applications.vgg16.preprocess_input
KERAS_SCALE = 57.63  # 255 x mean([0.229, 0.224, 0.225])


def require_h5py(path: str):
    """The h5py module; without it, a UserError saying what to install."""
    try:
        import h5py
    except ImportError:
        raise UserError(f"reading the Keras file {path} needs h5py: pip install h5py, or use "
                        "a .pdparams file") from None
    return h5py


def _attribute_list(group, name: str) -> List[str]:
    """A list attribute as Keras writes it: whole, or in chunks name0, name1, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += list(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [value.decode("utf8") if hasattr(value, "decode") else str(value) for value in values]


def _convolutions(root, path: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(kernel [kh, kw, in, out], bias) of every convolution, in model order; layers without
    weights (input, pools) and dense layers (the classifier) are left out."""
    if "layer_names" not in root.attrs and "model_weights" in root:
        root = root["model_weights"]
    layers = _attribute_list(root, "layer_names")
    if not layers:
        raise UserError(f"{path} is not a Keras weights file (no layer_names attribute)")
    convolutions = []
    for layer in layers:
        arrays = [np.asarray(root[layer][name]) for name in
                  _attribute_list(root[layer], "weight_names")]
        if not arrays or arrays[0].ndim != 4:
            continue
        kernel = arrays[0]
        if len(arrays) != 2 or kernel.shape[:2] != (3, 3) or \
                arrays[1].shape != (kernel.shape[3],):
            raise UserError(f"{path}: layer '{layer}' holds arrays of shapes "
                            f"{[list(array.shape) for array in arrays]}, expected a kernel "
                            "[3, 3, in, out] and a bias [out] (Keras' TensorFlow layout, the "
                            "*_tf_dim_ordering_tf_kernels files)")
        convolutions.append((kernel, arrays[1]))
    return convolutions


def fold_caffe_input(weight: np.ndarray, bias: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The first convolution ([out, 3, kh, kw] over BGR 0..255 minus the mean pixel) rewritten
    to give the same outputs on RGB (x - mean) / std input, x in [0, 1]."""
    # Caffe channel k of a pixel whose torchvision value is t: 255 (std t + mean)[2 - k] - mean_k.
    # The offset is a small difference of large numbers: computed from the exact decimals.
    rgb_weight = weight[:, ::-1] * (255.0 * np.array(IMAGENET_RGB_STD))[None, :, None, None]
    offset = 255.0 * np.array(IMAGENET_RGB_MEAN)[::-1] - CAFFE_MEAN_BGR
    return rgb_weight, bias + np.einsum("oikl,i->o", weight, offset)


def _conv_indices(cfg: list) -> List[int]:
    """Where the convolutions sit in a `features` Sequential without batch norm."""
    indices, position = [], 0
    for entry in cfg:
        if entry != "M":
            indices.append(position)
        position += 1 if entry == "M" else 2  # conv + ReLU
    return indices


def read_keras_vgg16(path: str) -> dict:
    """{features.N.weight / .bias: float32 array} of the expert, from Keras' VGG16 .h5."""
    h5py = require_h5py(path)
    try:
        with h5py.File(path, "r") as root:
            convolutions = _convolutions(root, path)
    except (OSError, KeyError) as error:  # not HDF5, truncated, a named array missing
        raise UserError(f"cannot read Keras weights file {path}: {error}") from None
    indices = _conv_indices(VGG16_CFG)
    if len(convolutions) != len(indices):
        raise UserError(f"{path} holds {len(convolutions)} convolutions, VGG16 has "
                        f"{len(indices)}")
    state = {}
    for position, (index, (kernel, bias)) in enumerate(zip(indices, convolutions)):
        weight = kernel.astype(np.float64).transpose(3, 2, 0, 1)  # -> [out, in, kh, kw]
        bias = bias.astype(np.float64)
        if position == 0:
            weight, bias = fold_caffe_input(weight, bias)
            weight = weight / KERAS_SCALE
        state[f"features.{index}.weight"] = weight.astype(np.float32)
        state[f"features.{index}.bias"] = (bias / KERAS_SCALE).astype(np.float32)
    return state
