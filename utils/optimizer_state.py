"""The optimizer's state keyed by the layer's parameter names, so that any process can resume it.

Paddle keys an optimizer's accumulators by the parameters' generated names (`conv2d_13.w_0_
moment1_0`), which count every layer built so far in the process: a process that builds layers
in another order cannot load them. Here they are keyed by the state-dict names instead
(`features.0.weight@moment1_0`).
"""
from typing import Dict

import paddle

from utils.errors import UserError

SEPARATOR = "@"


def _generated_names(layer: paddle.nn.Layer) -> Dict[str, str]:
    """{generated name: state-dict name} of the layer's parameters."""
    return {parameter.name: name for name, parameter in layer.named_parameters()}


def portable_optimizer_state(optimizer: paddle.optimizer.Optimizer,
                             layer: paddle.nn.Layer) -> dict:
    """optimizer.state_dict() with accumulator keys renamed to `<state-dict name>@<suffix>`."""
    names = _generated_names(layer)
    portable = {}
    for key, value in optimizer.state_dict().items():
        for generated, name in names.items():
            if key.startswith(generated + "_"):
                key = name + SEPARATOR + key[len(generated) + 1:]
                break
        portable[key] = value
    return portable


def restore_optimizer_state(optimizer: paddle.optimizer.Optimizer, layer: paddle.nn.Layer,
                            state: dict, source: str) -> None:
    """Load a state written by `portable_optimizer_state` (or a plain optimizer.state_dict())."""
    generated = {name: generated for generated, name in _generated_names(layer).items()}
    native = {}
    for key, value in state.items():
        name, separator, suffix = key.partition(SEPARATOR)
        if separator and name in generated:
            key = f"{generated[name]}_{suffix}"
        native[key] = value
    try:
        optimizer.set_state_dict(native)
    except AssertionError as error:  # Paddle asserts that every accumulator is there
        raise UserError(f"{source}: the optimizer state does not fit this network ({error})") \
            from None
