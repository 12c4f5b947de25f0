"""The cloner's training forward (stage outputs and loss): eager, compiled, data-parallel, AMP.

On a CPU, eager Paddle runs this small network's convolutions (16 channels at full resolution)
through multi-threaded GEMM calls that spend more time synchronising than computing; the same
forward as a static program (paddle.jit.to_static: forward and backward run by Paddle's program
interpreter) is about 3x faster here, with bit-identical losses and weights
(tests/test_train_step.py). Only the forward is compiled: backward, the optimizer, DataParallel's
gradient all-reduce and AMP's GradScaler stay Paddle's ordinary dynamic-graph machinery.
"""
import warnings
from typing import List

import paddle
from paddle import nn

from engine import native_output_silenced


class DistillationStep(nn.Layer):
    """(images [B, 3, H, W], expert stage outputs) -> the training loss of the cloner.

    With `amp`, the cloner runs under paddle.amp.auto_cast and the loss in float32.
    """

    def __init__(self, cloner: nn.Layer, criterion: nn.Layer, amp: bool = False):
        super().__init__()
        self.cloner, self.criterion, self.amp = cloner, criterion, amp

    def forward(self, images: paddle.Tensor, expert_stages: List[paddle.Tensor]) -> paddle.Tensor:
        if not self.amp:
            return self.criterion(self.cloner(images), expert_stages)
        with paddle.amp.auto_cast():
            cloner_stages = self.cloner(images)
        return self.criterion([stage.astype("float32") for stage in cloner_stages],
                              expert_stages)


class CompiledStep(nn.Layer):
    """A DistillationStep run as a static program, traced once per batch shape and mode."""

    def __init__(self, step: DistillationStep):
        super().__init__()
        self.step = step
        self._static = paddle.jit.to_static(step.forward, full_graph=True)
        self._traced = set()

    def forward(self, images: paddle.Tensor, expert_stages: List[paddle.Tensor]) -> paddle.Tensor:
        key = (tuple(images.shape), self.training)
        if key in self._traced:
            return self._static(images, expert_stages)
        self._traced.add(key)
        with native_output_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes about PIR values
            return self._static(images, expert_stages)


def compiles_training(config: dict, device: str) -> bool:
    """Compile the training forward on CPU (`engine: auto` or `inference`); GPUs, AMP and
    `engine: eager` keep the plain dynamic graph (the compiled step is measured on CPU only)."""
    if config["amp"] or config["engine"] == "eager":
        return False
    return config["engine"] == "inference" or device == "cpu"


def build_training_step(cloner: nn.Layer, criterion: nn.Layer, config: dict, device: str,
                        world_size: int = 1) -> nn.Layer:
    """A layer images, expert stages -> loss: compiled where that is faster, and wrapped in
    paddle.DataParallel (which broadcasts rank 0's weights) when there are several processes."""
    step = DistillationStep(cloner, criterion, amp=config["amp"])
    if compiles_training(config, device):
        step = CompiledStep(step)
    if world_size > 1:
        step = paddle.DataParallel(step)
    return step
