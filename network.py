"""The cloner (a VGG-shaped student) and the expert/cloner pair.

Parameter names stay `features.N.weight` (a plain Sequential) so that cloner checkpoints of the
earlier Paddle port load as they are.
"""
from typing import List, Tuple

import paddle
from paddle import nn

from utils.checkpoint import load_state_strict, read_state_dict
from utils.errors import UserError
from vgg import VGG16_CFG, StagedFeatures, make_layers

CLONER_CFGS = {
    "A": VGG16_CFG,  # equal_network_size: the expert's own size
    "B": [16, 16, "M", 16, 128, "M", 16, 16, 256, "M", 16, 16, 512, "M", 16, 16, 512, "M"],
}


def cloner_cfg_name(equal_network_size: bool) -> str:
    return "A" if equal_network_size else "B"


class Cloner(StagedFeatures):
    def __init__(self, equal_network_size: bool = False, use_bias: bool = False):
        cfg = CLONER_CFGS[cloner_cfg_name(equal_network_size)]
        super().__init__(make_layers(cfg, use_bias=use_bias, batch_norm=True))


def build_cloner(config: dict) -> Cloner:
    return Cloner(config["equal_network_size"], config["use_bias"])


def infer_architecture(state: dict, source: str) -> dict:
    """The cloner settings (`equal_network_size`, `use_bias`) that a state dict was saved from."""
    for equal_network_size in (False, True):
        for use_bias in (False, True):
            expected = Cloner(equal_network_size, use_bias).state_dict()
            if set(expected) == set(state) and all(
                    list(state[name].shape) == list(value.shape)
                    for name, value in expected.items()):
                return {"equal_network_size": equal_network_size, "use_bias": use_bias}
    if not any(name.startswith("features.") for name in state):
        raise UserError(f"{source} is not a cloner checkpoint (no 'features.*' keys)")
    return {}


def load_cloner(path: str, config: dict) -> Tuple[Cloner, dict]:
    """The cloner saved in `path`, rebuilt with the architecture found in the file itself.

    Returns the cloner (in eval mode) and the config with the architecture keys set to the file's.
    """
    return cloner_from_state(read_state_dict(path), config, path)


def cloner_from_state(state: dict, config: dict, source: str) -> Tuple[Cloner, dict]:
    """load_cloner for weights already read from the file `source`."""
    architecture = infer_architecture(state, source)
    config = {**config, **architecture}
    cloner = build_cloner(config)
    load_state_strict(cloner, state, source)  # names the first missing or mis-shaped key
    cloner.eval()
    return cloner, config


class DistillationPair(nn.Layer):
    """Expert and cloner side by side: the stage outputs that the loss and the scores compare."""

    def __init__(self, expert: StagedFeatures, cloner: Cloner):
        super().__init__()
        self.expert = expert
        self.cloner = cloner

    def forward(self, x: paddle.Tensor) -> Tuple[List[paddle.Tensor], List[paddle.Tensor]]:
        """[N, 3, H, W] -> (cloner stages, expert stages), four tensors each."""
        return self.cloner(x), self.expert(x)
