"""The cloner through oneDNN on a CPU: its convolutions while training, the whole network when scoring.

Eager Paddle convolves on a CPU with im2col and a matrix product per image, which reaches a few
percent of the machine's peak on the cloner's thin (16-channel) layers; oneDNN's convolution
kernels are several times faster. Eager Paddle never picks them, but a static program does when
`FLAGS_use_mkldnn` is on while it is built. So inside `onednn_convolutions(layer)` every Conv2D of
`layer` runs as a small static program (paddle.jit.to_static) whose forward and backward use
oneDNN's convolution kernels; BatchNorm, ReLU, pooling, the loss and Adam stay eager (oneDNN's
training kernels for those are slower than Paddle's own). Same arithmetic up to the order of the
sums inside a convolution: tests/test_onednn_conv.py holds the results against eager Paddle and
a float64 computation.

Scoring (the test set every `eval_interval` epochs, the training set for each saved model's
threshold) runs the cloner in eval mode, where BatchNorm writes nothing back, so there the whole
cloner is one static program built with the flag on (`OnednnStages`): no layout conversion
between layers and no eager bookkeeping, about twice as fast as the convolutions alone.
"""
import contextlib

import paddle
import paddle.nn.functional as F
from paddle import nn

from engine import native_output_silenced
from utils.forwards import replaced_forwards

ONEDNN_FLAG = "FLAGS_use_mkldnn"


def onednn_available() -> bool:
    """Whether this Paddle has oneDNN (the x86 CPU builds do)."""
    return paddle.base.core.is_compiled_with_mkldnn()


def _convolution(x, weight, stride, padding, dilation, groups, data_format):
    # The copy hands the output back in Paddle's own layout: a oneDNN-layout tensor as the
    # program's output crashes Paddle 3.3's run_program.
    return paddle.assign(F.conv2d(x, weight, None, stride, padding, dilation, groups,
                                  data_format))


_static_convolution = paddle.jit.to_static(_convolution, full_graph=True)


def _onednn_forward(conv: nn.Conv2D):
    """A replacement for conv.forward: the same convolution through the static program; the
    bias is added eagerly, as eager Paddle's own Conv2D does."""
    def forward(x):
        with native_output_silenced():  # a program is built at each new input shape
            out = _static_convolution(x, conv.weight, conv._stride, conv._padding,
                                      conv._dilation, conv._groups, conv._data_format)
        if conv.bias is not None:
            out = out + conv.bias.reshape([1, -1, 1, 1])
        return out
    return forward


@contextlib.contextmanager
def onednn_convolutions(layer: nn.Layer, enabled: bool = True):
    """Within the block, the Conv2D layers of `layer` convolve with oneDNN (keep the backward
    pass inside the block too: its program is built when it first runs)."""
    convs = [sub for sub in layer.sublayers(include_self=True) if type(sub) is nn.Conv2D
             and sub._padding_mode == "zeros" and sub._data_format == "NCHW"]
    if not (enabled and onednn_available()):
        convs = []
    if not convs:
        yield
        return
    with _onednn_flag(), replaced_forwards(convs, _onednn_forward):
        yield


@contextlib.contextmanager
def _onednn_flag():
    """FLAGS_use_mkldnn on within the block (programs built there use oneDNN's kernels)."""
    saved = paddle.get_flags([ONEDNN_FLAG])
    paddle.set_flags({ONEDNN_FLAG: True})
    try:
        yield
    finally:
        paddle.set_flags(saved)


class OnednnStages:
    """cloner(x) in eval mode -> its four stage outputs, computed by one static program whose
    operators are oneDNN's. The program reads the cloner's current weights and BatchNorm
    statistics at every call; call it only with the cloner in eval mode."""

    def __init__(self, cloner: nn.Layer):
        def stages(x):
            # the copies hand the outputs back in Paddle's own layout (see _convolution)
            return [paddle.assign(stage) for stage in cloner(x)]
        self._program = paddle.jit.to_static(stages, full_graph=True)

    def __call__(self, x: paddle.Tensor):
        with _onednn_flag(), native_output_silenced():  # a program per new input shape
            return self._program(x)
