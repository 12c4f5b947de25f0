"""Paddle Inference (oneDNN) against eager Paddle, and exporting without side effects."""
import os

import numpy as np
import paddle
import pytest

from anomaly_map import AnomalyMapModel, ScoreModel, upsample_bilinear
from backprop import InputGradient
from engine import EagerRunner, PredictorRunner, export_layer, make_runner
from loss_functions import MseDirectionLoss
from network import Cloner
from vgg import Expert

SHAPE = [3, 32, 32]


def assert_close(actual, expected):
    """rtol 1e-4; the atol only matters for values near zero (ReLU outputs)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def networks():
    paddle.seed(21)
    expert, cloner = Expert(), Cloner()
    # a forward pass in training mode moves the BatchNorm running statistics off their defaults
    cloner.train()
    cloner(paddle.rand([4, *SHAPE]))
    cloner.eval()
    images = np.random.default_rng(21).random((3, *SHAPE)).astype(np.float32)
    return expert, cloner, images


def test_predictor_and_eager_agree_on_scores(networks):
    expert, cloner, images = networks
    model = ScoreModel(expert, cloner, 0.5)
    (eager,) = EagerRunner(model)(images)
    (predicted,) = PredictorRunner(model, SHAPE, use_gpu=False, cpu_threads=2)(images)
    assert predicted.shape == (3,)
    assert_close(predicted, eager)


def test_predictor_and_eager_agree_on_expert_stages(networks):
    expert, _, images = networks
    eager = EagerRunner(expert)(images)
    runner = PredictorRunner(expert, SHAPE, use_gpu=False, cpu_threads=2)
    predicted = runner(images)
    assert [p.shape for p in predicted] == [(3, 128, 8, 8), (3, 256, 4, 4), (3, 512, 2, 2),
                                            (3, 512, 1, 1)]
    for p, e in zip(predicted, eager):
        assert_close(p, e)
    for p, e in zip(runner(images[:1]), eager):  # another batch size, same predictor
        assert_close(p, e[:1])


def assert_gradients_agree(actual, expected):
    """Per image, relative L2 error below 2 %.

    oneDNN rounds differently from eager Paddle (stage outputs agree to ~1e-6); where two inputs
    of a max-pool window, or a ReLU's input and 0, lie that close, the gradient takes another
    path and jumps locally (random inputs hit this in about one image out of five, moving it by
    ~0.4 %). Elsewhere the two agree to ~1e-5; a wrong backward is off by orders of magnitude.
    """
    for a, e in zip(actual, expected):
        assert np.linalg.norm(a - e) < 2e-2 * np.linalg.norm(e)


@pytest.mark.parametrize("guided", [False, True])
def test_predictor_and_eager_agree_on_input_gradients(networks, guided):
    """The hand-written backward runs under oneDNN and gives the eager numbers."""
    expert, cloner, images = networks
    layer = InputGradient(expert, cloner, 0.5, guided=guided)
    eager_scores, eager_grads = EagerRunner(layer)(images)
    scores, grads = PredictorRunner(layer, SHAPE, use_gpu=False, cpu_threads=2)(images)
    assert grads.shape == (3, *SHAPE)
    assert_close(scores, eager_scores)
    assert_gradients_agree(grads, eager_grads)


def test_predictor_and_eager_agree_on_gradient_maps(networks):
    expert, cloner, images = networks
    model = AnomalyMapModel(expert, cloner, 0.5, "gradients")
    eager_scores, eager_maps = EagerRunner(model)(images)
    runner = make_runner(model, {"engine": "inference", "cpu_threads": 2}, "cpu", SHAPE)
    assert isinstance(runner, PredictorRunner)
    scores, maps = runner(images)
    assert maps.shape == (3, 32, 32)
    assert_close(scores, eager_scores)
    # maps in [0, 1]; see assert_gradients_agree for why this is not 1e-6
    assert np.abs(maps - eager_maps).max() < 1e-2
    assert np.abs(maps - eager_maps).mean() < 1e-3


def test_make_runner_is_eager_when_asked():
    layer = Cloner()
    assert isinstance(make_runner(layer, {"engine": "eager", "cpu_threads": 1}, "cpu", SHAPE),
                      EagerRunner)


def test_exporting_leaves_the_layer_eager_and_trainable(tmp_path):
    paddle.seed(4)
    cloner, twin = Cloner(), Cloner()
    twin.set_state_dict(cloner.state_dict())
    model_file = export_layer(cloner, str(tmp_path / "cloner"), SHAPE)
    assert os.path.isfile(model_file) and os.path.isfile(str(tmp_path / "cloner.pdiparams"))
    # the layer's forward is still its own Python method, not a static function
    assert "forward" not in vars(cloner)
    assert cloner.forward.__func__ is Cloner.forward
    assert paddle.in_dynamic_mode()

    x = paddle.rand([2, *SHAPE])
    targets = [paddle.rand(shape) for shape in
               ([2, 128, 8, 8], [2, 256, 4, 4], [2, 512, 2, 2], [2, 512, 1, 1])]
    gradients = []
    for layer in (cloner, twin):
        layer.train()
        stages = layer(x)
        assert all(isinstance(stage, paddle.Tensor) and not stage.stop_gradient
                   for stage in stages)
        MseDirectionLoss(0.5)(stages, targets).backward()
        gradients.append({name: p.grad.numpy() for name, p in layer.named_parameters()
                          if not p.stop_gradient})
    assert gradients[0] and all(np.abs(g).sum() > 0 for g in gradients[0].values())
    assert sorted(gradients[0]) == sorted(gradients[1])
    for name, grad in gradients[0].items():
        np.testing.assert_allclose(grad, gradients[1][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_predictor_and_eager_agree_on_feature_diff_maps(networks):
    """Bilinear upsampling runs under oneDNN too (as gathers) and equals F.interpolate."""
    expert, cloner, images = networks
    model = AnomalyMapModel(expert, cloner, 0.5, "feature_diff")
    eager_scores, eager_maps = EagerRunner(model)(images)
    scores, maps = PredictorRunner(model, SHAPE, use_gpu=False, cpu_threads=2)(images)
    assert maps.shape == (3, 32, 32)
    assert_close(scores, eager_scores)
    assert_close(maps, eager_maps)
    local = paddle.rand([2, 4, 6])
    expected = paddle.nn.functional.interpolate(local.unsqueeze(1), size=[32, 48],
                                                mode="bilinear", align_corners=False).squeeze(1)
    np.testing.assert_allclose(upsample_bilinear(local, [32, 48]).numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-6)
