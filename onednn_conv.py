"""The cloner's convolutions run by oneDNN on a CPU, forward and backward, while the rest stays eager.

Eager Paddle convolves on a CPU with im2col and a matrix product per image, which reaches a few
percent of the machine's peak on the cloner's thin (16-channel) layers; oneDNN's convolution
kernels are several times faster. Eager Paddle never picks them, but a static program does when
`FLAGS_use_mkldnn` is on while it is built. So inside `onednn_convolutions(layer)` every Conv2D of
`layer` runs as a small static program (paddle.jit.to_static) whose forward and backward use
oneDNN's convolution kernels; BatchNorm, ReLU, pooling, the loss and Adam stay eager (oneDNN's
training kernels for those are slower than Paddle's own). Same arithmetic up to the order of the
sums inside a convolution: tests/test_onednn_conv.py holds the results against eager Paddle and
a float64 computation.
"""
import contextlib

import paddle
import paddle.nn.functional as F
from paddle import nn

from engine import native_output_silenced

ONEDNN_FLAG = "FLAGS_use_mkldnn"


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
    if not (enabled and paddle.base.core.is_compiled_with_mkldnn()):
        convs = []
    if not convs:
        yield
        return
    saved = paddle.get_flags([ONEDNN_FLAG])
    paddle.set_flags({ONEDNN_FLAG: True})
    for conv in convs:
        conv.forward = _onednn_forward(conv)
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward  # back to the class's eager forward
        paddle.set_flags(saved)
