"""Layers running another forward for the length of a block, then their class's own again."""
import contextlib
from typing import Callable, Iterable

from paddle import nn


@contextlib.contextmanager
def replaced_forwards(layers: Iterable[nn.Layer], make_forward: Callable):
    """Within the block each of `layers` runs make_forward(layer) as its forward."""
    layers = list(layers)
    for layer in layers:
        layer.forward = make_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's own forward
