"""The cloner's training forward (stage outputs and loss) as one layer, for AMP and DataParallel."""
from typing import List, Optional

import paddle
from paddle import nn

from utils.errors import UserError


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


def build_training_step(cloner: nn.Layer, criterion: nn.Layer, config: dict,
                        world_size: int = 1) -> nn.Layer:
    """A layer (images, expert stages) -> loss; wrapped in paddle.DataParallel (which broadcasts
    rank 0's weights and all-reduces the gradients) when there are several processes."""
    step = DistillationStep(cloner, criterion, amp=config["amp"])
    return paddle.DataParallel(step) if world_size > 1 else step


def build_grad_scaler(config: dict, device: str) -> Optional[paddle.amp.GradScaler]:
    """The loss scaler of `amp: true`, None without it. float16 autocast needs a GPU: Paddle's
    auto_cast and GradScaler do nothing on a CPU (paddle/amp/auto_cast.py, grad_scaler.py)."""
    if not config["amp"]:
        return None
    if device != "gpu":
        raise UserError("amp: true needs a GPU (mixed precision is a GPU feature here)")
    return paddle.amp.GradScaler()
