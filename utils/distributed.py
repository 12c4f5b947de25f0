"""What every process of a data-parallel run (paddle.distributed.launch) must agree on."""
import contextlib
from typing import Any, Sequence

import paddle
from paddle import nn

from utils.errors import UserError


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


def rank_zero_value(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank; `value` itself in a single process."""
    if paddle.distributed.get_world_size() == 1:
        return value
    shared = [value]
    paddle.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


@contextlib.contextmanager
def rank_zero_work(kinds: Sequence[type] = ()):
    """A block that every rank enters and only rank 0 works in (evaluation, saving). An error rank
    0 meets there is raised on every rank as it leaves the block, with the same message (as the
    same class when it is a UserError named in `kinds`), instead of the others waiting for rank 0
    in their next collective call until a time-out. A single process is not affected."""
    failure = None
    try:
        yield
    except Exception as error:  # rank 0's; the others pass through the block without work
        failure = error
    outcome = rank_zero_value(None if failure is None else
                              (type(failure).__name__, str(failure),
                               isinstance(failure, UserError)))
    if failure is not None:
        raise failure
    if outcome is not None:
        name, message, clear = outcome
        if not clear:
            raise UserError(f"process 0 stopped with {name}: {message} (its traceback is in "
                            "the launcher's workerlog.0)")
        raise next((kind for kind in kinds if kind.__name__ == name), UserError)(message)
