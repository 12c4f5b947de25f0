"""The multi-resolution distillation loss, the per-image anomaly score and the score's gradient.

For a stage l with cloner output c_l and expert output e_l (flattened per image):
    d_l = (1 - cos(c_l, e_l)) + lamda * mean((c_l - e_l) ** 2)
The training loss is sum over all four stages of the batch mean of d_l (the MSE over all elements
of a batch is the batch mean of the per-image MSE); the anomaly score of an image is the sum of
d_l over stages 2..4.
"""
from typing import List

import paddle
import paddle.nn.functional as F
from paddle import nn

SCORE_STAGES = (1, 2, 3)  # indices into the four stages: stage 1 is left out of the score
COSINE_EPS = 1e-8  # as in paddle.nn.functional.cosine_similarity


def stage_discrepancy(cloner_stage: paddle.Tensor, expert_stage: paddle.Tensor, lamda: float,
                      direction_only: bool = False) -> paddle.Tensor:
    """[N, C, h, w] x 2 -> [N]: the per-image (1 - cosine) + lamda * mean squared error."""
    c, e = cloner_stage.flatten(1), expert_stage.flatten(1)
    discrepancy = 1 - F.cosine_similarity(c, e, axis=1, eps=COSINE_EPS)
    if not direction_only:
        # square, not ** 2: Paddle's CPU pow is slow and off by one ulp in 4% of the values
        # (its gradient, 2 (c - e), is the same bit for bit)
        discrepancy = discrepancy + lamda * paddle.square(c - e).mean(axis=1)
    return discrepancy


class MseDirectionLoss(nn.Layer):
    """sum_l mean_batch(1 - cos) + lamda * sum_l MSE, over all four stages."""

    def __init__(self, lamda: float, direction_only: bool = False):
        super().__init__()
        self.lamda = lamda
        self.direction_only = direction_only

    def forward(self, cloner_stages: List[paddle.Tensor],
                expert_stages: List[paddle.Tensor]) -> paddle.Tensor:
        return paddle.add_n([
            stage_discrepancy(c, e, self.lamda, self.direction_only).mean()
            for c, e in zip(cloner_stages, expert_stages)])


class DirectionOnlyLoss(MseDirectionLoss):
    """sum_l mean_batch(1 - cos): the `direction_loss_only` ablation."""

    def __init__(self):
        super().__init__(lamda=0.0, direction_only=True)


def build_loss(config: dict) -> MseDirectionLoss:
    return DirectionOnlyLoss() if config["direction_loss_only"] else MseDirectionLoss(
        config["lamda"])


def anomaly_score(cloner_stages: List[paddle.Tensor], expert_stages: List[paddle.Tensor],
                  lamda: float, direction_only: bool = False) -> paddle.Tensor:
    """[N]: sum over stages 2..4 of the per-image discrepancy; higher is more anomalous."""
    return paddle.add_n([
        stage_discrepancy(cloner_stages[l], expert_stages[l], lamda, direction_only)
        for l in SCORE_STAGES])


def score_gradients(cloner_stages: List[paddle.Tensor], expert_stages: List[paddle.Tensor],
                    lamda: float, direction_only: bool = False):
    """d score / d c_l and d score / d e_l for every stage (None where the score ignores it).

    Written out so that the saliency graph needs no autograd; tests check it against paddle.grad.
    With w1 = |c|^2, w2 = |e|^2, w12 = c.e, n = sqrt(max(w1 w2, eps^2)), cos = w12 / n:
        d cos / d c = e / n - cos * w2 * c / n^2   (the second term vanishes where n is clipped)
        d mse / d c = 2 (c - e) / size,  d mse / d e = -2 (c - e) / size
    """
    cloner_grads, expert_grads = [None] * len(cloner_stages), [None] * len(expert_stages)
    for l in SCORE_STAGES:
        shape = cloner_stages[l].shape
        c, e = cloner_stages[l].flatten(1), expert_stages[l].flatten(1)
        w1 = (c * c).sum(axis=1, keepdim=True)
        w2 = (e * e).sum(axis=1, keepdim=True)
        w12 = (c * e).sum(axis=1, keepdim=True)
        unclipped = (w1 * w2 > COSINE_EPS ** 2).astype(c.dtype)
        n = paddle.sqrt(paddle.clip(w1 * w2, min=COSINE_EPS ** 2))
        cos = w12 / n
        d_c = -(e / n - unclipped * cos * w2 * c / (n * n))
        d_e = -(c / n - unclipped * cos * w1 * e / (n * n))
        if not direction_only:
            difference = (c - e) * (2.0 * lamda / c.shape[1])
            d_c, d_e = d_c + difference, d_e - difference
        cloner_grads[l], expert_grads[l] = d_c.reshape(shape), d_e.reshape(shape)
    return cloner_grads, expert_grads
