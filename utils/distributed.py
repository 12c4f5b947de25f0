"""What every process of a data-parallel run (paddle.distributed.launch) must agree on."""
import paddle
from paddle import nn


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed on every rank: with `seed: null` each process drew its own, but the data
    order and a random expert must be the same everywhere."""
    value = paddle.to_tensor([seed], dtype="int64")
    paddle.distributed.broadcast(value, src=0)
    return int(value.numpy()[0])


def broadcast_weights(layer: nn.Layer) -> None:
    """Copy rank 0's parameters and buffers into `layer` on every rank (in place)."""
    for tensor in list(layer.parameters()) + list(layer.buffers()):
        paddle.distributed.broadcast(tensor, src=0)


def mean_over_ranks(value: paddle.Tensor) -> paddle.Tensor:
    """The mean of a tensor over all processes."""
    total = value.clone()
    paddle.distributed.all_reduce(total)
    return total / paddle.distributed.get_world_size()
