"""The gradient of the anomaly score w.r.t. the input image, written as plain forward operations.

Paddle's autograd gives the same numbers (tests compare every method against `paddle.grad`), but
a graph that calls `paddle.grad` cannot run under oneDNN in Paddle Inference (its conv2d_grad
kernel refuses inference mode), and oneDNN is what makes VGG16 fast on a CPU. Here each layer's
backward rule is spelled out: conv -> conv with the flipped, transposed kernel; BatchNorm (eval)
-> per-channel scale; ReLU -> mask; max-pool -> the gradient to each window's arg-max. The result
exports with `paddle.jit.save` and runs in Paddle Inference on CPU (oneDNN) and GPU alike.

The max-pool rule has two exact forms that give the same numbers, ties included (tests compare
them): "unpool" (max_pool2d's arg-max mask, then max_unpool2d) is the faster under oneDNN;
"switches" (a plain pool, strided slices, a comparison, pixel_shuffle) is the one that converts
to ONNX, as paddle2onnx has no converter for the mask or for max_unpool2d.
"""
from typing import List, Tuple

import paddle
import paddle.nn.functional as F
from paddle import nn

from loss_functions import anomaly_score, score_gradients
from vgg import StagedFeatures


def max_pool_unpool(x: paddle.Tensor):
    """2x2 max-pool of [N, C, H, W] and what max_unpool2d needs: the arg-max mask and the size.

    max_pool2d's mask is each window's first maximum in row-major order: its CPU and GPU kernels
    replace the running maximum only with a strictly greater value."""
    pooled, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_mask=True)
    return pooled, (indices, x.shape[2:])


def unpool_backward(grad: paddle.Tensor, saved) -> paddle.Tensor:
    """[N, C, H/2, W/2] -> [N, C, H, W]: each window's gradient to its arg-max, zeros elsewhere."""
    indices, size = saved
    return F.max_unpool2d(grad, indices, kernel_size=2, stride=2, output_size=size)


def max_pool_switches(x: paddle.Tensor):
    """2x2 max-pool of [N, C, H, W] (H, W even) and its switches [N, C, 4, H/2, W/2]: per window,
    1 at the corner that receives the gradient (corners in row-major order), 0 at the others.

    That corner is the window's first maximum in row-major order, as in max_pool2d's mask, so
    ties (windows of ReLU zeros, flat image regions) go where max_unpool2d sends them."""
    height, width = x.shape[2], x.shape[3]
    if height % 2 or width % 2:
        raise ValueError(f"the 'switches' max-pool rule needs even sizes, got {height}x{width}")
    pooled = F.max_pool2d(x, kernel_size=2, stride=2)
    switches, unclaimed = [], None  # unclaimed: 1 where no earlier corner holds the maximum
    for row in (0, 1):
        for column in (0, 1):
            is_max = (x[:, :, row::2, column::2] == pooled).astype(x.dtype)
            first = is_max if unclaimed is None else is_max * unclaimed
            unclaimed = 1.0 - first if unclaimed is None else unclaimed - first
            switches.append(first)
    return pooled, paddle.stack(switches, axis=2)


def switches_backward(grad: paddle.Tensor, switches: paddle.Tensor) -> paddle.Tensor:
    """[N, C, H/2, W/2] -> [N, C, H, W]: each window's gradient to its switch, zeros elsewhere."""
    channels, height, width = switches.shape[1], grad.shape[2], grad.shape[3]
    spread = (grad.unsqueeze(2) * switches).reshape([-1, 4 * channels, height, width])
    return F.pixel_shuffle(spread, 2)  # channel 4c + 2i + j -> pixel (2h + i, 2w + j) of c


# name -> (forward: x -> (pooled, what the backward needs), backward: (grad, saved) -> grad)
MAX_POOL_RULES = {"unpool": (max_pool_unpool, unpool_backward),
                  "switches": (max_pool_switches, switches_backward)}


def forward_with_tape(net: StagedFeatures, x: paddle.Tensor, max_pool_rule: str = "unpool"):
    """The four stage outputs, and what each layer's backward rule needs (the 'tape')."""
    stages, tape = [], []
    last = net.stage_ends[-1]
    for i, layer in enumerate(net.features):
        if i > last:
            break
        if isinstance(layer, nn.MaxPool2D):
            x, saved = MAX_POOL_RULES[max_pool_rule][0](x)
            tape.append(saved)
        else:
            x = layer(x)
            tape.append(x > 0 if isinstance(layer, nn.ReLU) else None)
        if i in net.stage_ends:
            stages.append(x)
    return stages, tape


def backward_from_stages(net: StagedFeatures, tape: list, stage_grads: List,
                         guided: bool = False, max_pool_rule: str = "unpool") -> paddle.Tensor:
    """Backpropagate gradients given at the stage outputs down to the input image.

    `guided` applies guided backprop's rule at every ReLU: only positive gradients pass.
    """
    injections = dict(zip(net.stage_ends, stage_grads))
    grad = None
    for i in reversed(range(len(tape))):
        if injections.get(i) is not None:
            grad = injections[i] if grad is None else grad + injections[i]
        if grad is None:
            continue
        layer = net.features[i]
        if isinstance(layer, nn.MaxPool2D):
            grad = MAX_POOL_RULES[max_pool_rule][1](grad, tape[i])
        elif isinstance(layer, nn.ReLU):
            if guided:
                grad = F.relu(grad)
            grad = grad * tape[i].astype(grad.dtype)
        elif isinstance(layer, nn.BatchNorm2D):
            scale = layer.weight / paddle.sqrt(layer._variance + layer._epsilon)
            grad = grad * scale.reshape([1, -1, 1, 1])
        elif isinstance(layer, nn.Conv2D):
            kernel = paddle.flip(layer.weight.transpose([1, 0, 2, 3]), axis=[2, 3])
            grad = F.conv2d(grad, kernel, padding=1)
        else:
            raise TypeError(f"no backward rule for {type(layer).__name__}")
    return grad


class InputGradient(nn.Layer):
    """x -> (anomaly score [N], d score / d x [N, 3, H, W]), each image's own gradient.

    `guided=True` is guided backprop: the rule applies to the cloner's ReLUs, as in the reference
    code, whose hooks sit on the cloner only. `max_pool_rule` names a form in MAX_POOL_RULES.
    """

    def __init__(self, expert: StagedFeatures, cloner: StagedFeatures, lamda: float,
                 direction_only: bool = False, guided: bool = False,
                 max_pool_rule: str = "unpool"):
        super().__init__()
        if max_pool_rule not in MAX_POOL_RULES:
            raise ValueError(f"max_pool_rule must be one of {list(MAX_POOL_RULES)}, "
                             f"not {max_pool_rule!r}")
        self.expert, self.cloner = expert, cloner
        self.lamda, self.direction_only, self.guided = lamda, direction_only, guided
        self.max_pool_rule = max_pool_rule

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        rule = self.max_pool_rule
        cloner_stages, cloner_tape = forward_with_tape(self.cloner, x, rule)
        expert_stages, expert_tape = forward_with_tape(self.expert, x, rule)
        score = anomaly_score(cloner_stages, expert_stages, self.lamda, self.direction_only)
        cloner_grads, expert_grads = score_gradients(cloner_stages, expert_stages, self.lamda,
                                                     self.direction_only)
        grad = backward_from_stages(self.cloner, cloner_tape, cloner_grads, self.guided, rule)
        grad = grad + backward_from_stages(self.expert, expert_tape, expert_grads,
                                           max_pool_rule=rule)
        return score, grad
