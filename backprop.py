"""The gradient of the anomaly score w.r.t. the input image, written as plain forward operations.

Paddle's autograd gives the same numbers (tests compare every method against `paddle.grad`), but
a graph that calls `paddle.grad` cannot run under oneDNN in Paddle Inference (its conv2d_grad
kernel refuses inference mode), and oneDNN is what makes VGG16 fast on a CPU. Here each layer's
backward rule is spelled out: conv -> conv with the flipped, transposed kernel; BatchNorm (eval)
-> per-channel scale; ReLU -> mask; max-pool -> unpool to the arg-max. The result exports with
`paddle.jit.save` and runs in Paddle Inference on CPU (oneDNN) and GPU alike.
"""
from typing import List, Tuple

import paddle
import paddle.nn.functional as F
from paddle import nn

from loss_functions import anomaly_score, score_gradients
from vgg import StagedFeatures


def forward_with_tape(net: StagedFeatures, x: paddle.Tensor):
    """The four stage outputs, and what each layer's backward rule needs (the 'tape')."""
    stages, tape = [], []
    last = net.stage_ends[-1]
    for i, layer in enumerate(net.features):
        if i > last:
            break
        if isinstance(layer, nn.MaxPool2D):
            size = x.shape[2:]
            x, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_mask=True)
            tape.append((indices, size))
        else:
            x = layer(x)
            tape.append(x > 0 if isinstance(layer, nn.ReLU) else None)
        if i in net.stage_ends:
            stages.append(x)
    return stages, tape


def backward_from_stages(net: StagedFeatures, tape: list, stage_grads: List,
                         guided: bool = False) -> paddle.Tensor:
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
            indices, size = tape[i]
            grad = F.max_unpool2d(grad, indices, kernel_size=2, stride=2, output_size=size)
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
    code, whose hooks sit on the cloner only.
    """

    def __init__(self, expert: StagedFeatures, cloner: StagedFeatures, lamda: float,
                 direction_only: bool = False, guided: bool = False):
        super().__init__()
        self.expert, self.cloner = expert, cloner
        self.lamda, self.direction_only, self.guided = lamda, direction_only, guided

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        cloner_stages, cloner_tape = forward_with_tape(self.cloner, x)
        expert_stages, expert_tape = forward_with_tape(self.expert, x)
        score = anomaly_score(cloner_stages, expert_stages, self.lamda, self.direction_only)
        cloner_grads, expert_grads = score_gradients(cloner_stages, expert_stages, self.lamda,
                                                     self.direction_only)
        grad = backward_from_stages(self.cloner, cloner_tape, cloner_grads, self.guided)
        grad = grad + backward_from_stages(self.expert, expert_tape, expert_grads)
        return score, grad
