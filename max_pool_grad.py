"""The cloner's max-pools in training with a faster backward on a CPU: the same numbers, bit for bit.

Paddle's CPU pool2d_grad scans every window again to find where its maximum was, which made the
cloner's five max-pools about a fifth of a 32 px training step. Inside `recorded_max_pools(layer)`
each non-overlapping MaxPool2D of `layer` records the arg-max while pooling (max_pool2d's mask)
and its backward scatters the gradient there with max_unpool2d: about 3 times faster. Both send a
window's gradient to its first maximum in row-major order (max_pool2d's mask and pool2d_grad
replace the running maximum only with a strictly greater value), so ties, e.g. the windows of
ReLU zeros, go to the same pixel; tests/test_max_pool_grad.py holds the gradients equal bit for bit.
"""
import contextlib

import paddle
import paddle.nn.functional as F
from paddle import nn

from utils.forwards import replaced_forwards


class RecordedMaxPool(paddle.autograd.PyLayer):
    """[N, C, H, W] -> max-pooled [N, C, H/k, W/k]; the backward sends each window's gradient to
    the arg-max recorded in the forward."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride):
        pooled, mask = F.max_pool2d(x, kernel_size, stride, return_mask=True)
        ctx.mask, ctx.size, ctx.kernel_size, ctx.stride = mask, x.shape[2:], kernel_size, stride
        return pooled

    @staticmethod
    def backward(ctx, grad):
        return F.max_unpool2d(grad, ctx.mask, ctx.kernel_size, ctx.stride, output_size=ctx.size)


def _recorded_forward(pool: nn.MaxPool2D):
    def forward(x):
        if x.stop_gradient or not paddle.is_grad_enabled():  # no backward: no mask to keep
            return nn.MaxPool2D.forward(pool, x)
        return RecordedMaxPool.apply(x, pool.ksize, pool.stride)
    return forward


def _windows_tile(pool: nn.MaxPool2D) -> bool:
    """Whether the windows neither overlap nor pad (max_unpool2d then adds nothing twice)."""
    return (pool.ksize == pool.stride and not pool.padding and not pool.ceil_mode
            and not pool.return_mask and pool.data_format == "NCHW")


@contextlib.contextmanager
def recorded_max_pools(layer: nn.Layer, enabled: bool = True):
    """Within the block, the non-overlapping MaxPool2D layers of `layer` pool through
    RecordedMaxPool (keep the backward pass inside the block: it is where the time is saved)."""
    pools = [sub for sub in layer.sublayers(include_self=True)
             if enabled and type(sub) is nn.MaxPool2D and _windows_tile(sub)]
    with replaced_forwards(pools, _recorded_forward):
        yield
