"""The expert: VGG16's convolutional part (configuration D, no batch norm), frozen, and its weights.

Both networks are VGG-shaped, so the layer builder and the four named stage outputs live here too.
"""
import hashlib
import os
from typing import List, Sequence

import numpy as np
import paddle
from paddle import nn
from paddle.utils.download import WEIGHTS_HOME, get_weights_path_from_url

from utils.checkpoint import (find_weights, load_state_strict, read_state_dict, save_state_dict,
                              weights_path)
from utils.config import WEIGHTS_FORMATS
from utils.errors import UserError

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]
# The outputs of the 2nd..5th max-pool (H/4, H/8, H/16, H/32): the paper's four distilled layers.
STAGES = ("stage1", "stage2", "stage3", "stage4")
STAGE_CHANNELS = (128, 256, 512, 512)

IMAGENET_URL = "https://paddle-hapi.bj.bcebos.com/models/vgg16.pdparams"
IMAGENET_MD5 = "89bbffc0f87d260be9b8cdc169c991c4"
FEATURES_CACHE = os.path.join(WEIGHTS_HOME, "vgg16_features.pdparams")
# keras.applications.VGG16(include_top=False)'s file and its md5 (Keras' `file_hash`)
KERAS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
             "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
KERAS_MD5 = "6d6bbae143d832006294945121d1f1fc"
EXPERT_STEM = "expert"  # a random expert, saved beside the cloner's checkpoints
EXPERT_FILE = EXPERT_STEM + ".pdparams"  # ... or as expert.safetensors (`weights_format`)


def make_layers(cfg: list, use_bias: bool, batch_norm: bool) -> List[nn.Layer]:
    """conv3x3 (+ BatchNorm when the next entry is not a pool) + ReLU per number, max-pool per 'M'."""
    layers, in_channels = [], 3
    for i, entry in enumerate(cfg):
        if entry == "M":
            layers.append(nn.MaxPool2D(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2D(in_channels, entry, kernel_size=3, padding=1,
                         weight_attr=paddle.ParamAttr(initializer=nn.initializer.XavierUniform()),
                         bias_attr=None if use_bias else False)
        layers.append(conv)
        if batch_norm and cfg[i + 1] != "M":
            layers.append(nn.BatchNorm2D(entry))
        layers.append(nn.ReLU())
        in_channels = entry
    return layers


class StagedFeatures(nn.Layer):
    """A VGG-shaped `features` Sequential whose pooled outputs 2..5 are the four stages."""

    def __init__(self, layers: List[nn.Layer]):
        super().__init__()
        self.features = nn.Sequential(*layers)
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2D)]
        self.stage_ends = pools[1:5]

    def forward(self, x: paddle.Tensor) -> List[paddle.Tensor]:
        """[N, 3, H, W] -> the four stage outputs, [N, 128, H/4, W/4] ... [N, 512, H/32, W/32]."""
        outputs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.stage_ends:
                outputs.append(x)
                if len(outputs) == len(STAGES):
                    break
        return outputs

    def stage_outputs(self, x: paddle.Tensor) -> dict:
        return dict(zip(STAGES, self(x)))


class Expert(StagedFeatures):
    """VGG16 features with biases and no batch norm; its parameters never receive gradients."""

    def __init__(self):
        super().__init__(make_layers(VGG16_CFG, use_bias=True, batch_norm=False))
        for parameter in self.parameters():
            parameter.stop_gradient = True
        self.eval()
        self.source = "a fresh random expert"  # the file its weights come from, for messages

    def train(self):  # nothing in it behaves differently in training; keep it in eval mode
        return self


def expert_fingerprint(expert: Expert) -> str:
    """A digest of the expert's weights. Checkpoints record it, so that a cloner is never scored
    against an expert other than the one it was trained to copy (same value in either file
    format, on CPU and GPU)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in expert.state_dict().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def check_expert(expert: Expert, recorded: str, trained: str) -> None:
    """A UserError when `expert` is not the one whose fingerprint the checkpoint `trained`
    recorded; checkpoints that recorded none are taken as they are."""
    if recorded and recorded != expert_fingerprint(expert):
        raise UserError(f"{trained} was trained against another expert than {expert.source} "
                        "(its weights differ: a later run reused the folder, or the expert's "
                        "file changed); train again, or put back the expert it was trained with")


def set_aside_expert(model_dir: str, fingerprint: str, needed: Sequence[str]) -> None:
    """Before a new run replaces the random expert of `model_dir` by the one of `fingerprint`:
    keep the one there as `expert-<its fingerprint>` when the checkpoints still in the folder
    need it (their fingerprints are `needed`), so that they stay usable until replaced."""
    for weights_format in WEIGHTS_FORMATS:
        path = weights_path(model_dir, EXPERT_STEM, weights_format)
        if not os.path.isfile(path):
            continue
        earlier = Expert()
        load_expert_weights(earlier, path)
        kept = expert_fingerprint(earlier)
        if kept != fingerprint and kept in needed:
            os.replace(path, weights_path(model_dir, f"{EXPERT_STEM}-{kept}", weights_format))


def drop_unneeded_experts(model_dir: str, needed: Sequence[str]) -> None:
    """Remove the experts set aside in `model_dir` that no checkpoint there needs any more."""
    for name in os.listdir(model_dir):
        stem, extension = os.path.splitext(name)
        if stem.startswith(EXPERT_STEM + "-") and extension[1:] in WEIGHTS_FORMATS and \
                stem[len(EXPERT_STEM) + 1:] not in needed:
            os.remove(os.path.join(model_dir, name))


def _features_only(state: dict) -> dict:
    """Keep the `features.*` entries of a full VGG16 state dict (the classifier is unused)."""
    if any(name.startswith("features.") for name in state):
        return {name: value for name, value in state.items() if name.startswith("features.")}
    return {f"features.{name}": value for name, value in state.items()}


def _download(what: str, url: str, md5: str, alternative: str) -> str:
    """The file at `url`, downloaded once into Paddle's weights cache; without network, one line
    saying where to put it."""
    try:
        return get_weights_path_from_url(url, md5)
    except Exception as error:  # no network, DNS, HTTP errors: all mean "put the file in place"
        raise UserError(
            f"could not download {what} from {url} ({type(error).__name__}); download that "
            f"file and put it at {os.path.join(WEIGHTS_HOME, os.path.basename(url))}, or pass "
            f"-o vgg_weights={alternative}") from None


def imagenet_weights_path() -> str:
    """ImageNet VGG16 features from Paddle's model zoo, downloaded once into Paddle's cache."""
    if os.path.isfile(FEATURES_CACHE):
        return FEATURES_CACHE
    full_path = _download("the ImageNet VGG16 weights", IMAGENET_URL, IMAGENET_MD5,
                          "/path/to/vgg16.pdparams (torchvision's vgg16-397923af.pth works too)")
    save_state_dict(_features_only(read_state_dict(full_path)), FEATURES_CACHE)
    return FEATURES_CACHE


def keras_weights_path() -> str:
    """Keras' ImageNet VGG16 .h5 (59 MB, convolutions only), downloaded once into Paddle's cache;
    it is converted each time it is read (utils/keras_weights.py)."""
    from utils.keras_weights import require_h5py  # (it imports this module)
    require_h5py(KERAS_URL)  # before a download that could not be read
    return _download("Keras' ImageNet VGG16 weights", KERAS_URL, KERAS_MD5,
                     "/path/to/" + os.path.basename(KERAS_URL))


DOWNLOADS = {"imagenet": imagenet_weights_path, "keras": keras_weights_path}


def load_expert_weights(expert: Expert, path: str) -> None:
    load_state_strict(expert, _features_only(read_state_dict(path)), path)
    expert.source = path


def build_expert(config: dict, model_dir: str = None, fingerprint: str = None) -> Expert:
    """The frozen expert the config asks for.

    `pretrain: false` means a randomly initialised expert. Without `model_dir` a fresh one is made
    (training then saves it as `expert.pdparams` or `.safetensors` beside its checkpoints); with
    `model_dir` that very expert is loaded again, so that test, predict and export see the same
    network: the one whose `fingerprint` a checkpoint recorded, when a later run in the folder
    has set it aside (`set_aside_expert`).
    """
    expert = Expert()
    if not config["pretrain"]:
        if model_dir is not None:
            saved = find_weights(model_dir, EXPERT_STEM, config["weights_format"])
            if fingerprint:  # set aside by a later run, under its fingerprint
                earlier = find_weights(model_dir, f"{EXPERT_STEM}-{fingerprint}",
                                       config["weights_format"])
                saved = earlier if os.path.isfile(earlier) else saved
            if not os.path.isfile(saved):
                raise UserError(f"{saved} is missing: this model was trained with a random "
                                "expert (pretrain: false) and needs that very expert")
            load_expert_weights(expert, saved)
        return expert
    source = config["vgg_weights"]
    load_expert_weights(expert, DOWNLOADS[source]() if source in DOWNLOADS else source)
    return expert
