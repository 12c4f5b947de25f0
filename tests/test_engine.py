"""Paddle Inference (oneDNN) against eager Paddle, and exporting without side effects; the GPU
predictor's device, and the TensorRT conversion up to where it needs a GPU."""
import os
import shutil
import sys
import types

import numpy as np
import paddle
import pytest
from paddle import inference

import engine
from anomaly_map import AnomalyMapModel, ScoreModel, upsample_bilinear
from backprop import InputGradient
from engine import (EagerRunner, PredictorRunner, build_predictor, current_gpu_id, export_layer,
                    make_runner, run_predictor)
from loss_functions import MseDirectionLoss
from network import Cloner
from utils.errors import UserError
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


class RecordingConfig(inference.Config):
    """Paddle Inference's Config that records the GPU it is asked for and stays on the CPU."""
    gpus = []

    def enable_use_gpu(self, memory_mb, device_id, *args):
        RecordingConfig.gpus.append(device_id)


@pytest.fixture
def recording_config(monkeypatch):
    RecordingConfig.gpus = []
    monkeypatch.setattr(engine.inference, "Config", RecordingConfig)
    return RecordingConfig


def test_each_rank_builds_its_predictors_on_its_own_gpu(networks, recording_config,
                                                        monkeypatch):
    """paddle.distributed.launch gives rank r FLAGS_selected_gpus=r (and paddle.set_device('gpu')
    follows it); its predictors must not all land on GPU 0."""
    expert, cloner, images = networks
    monkeypatch.setenv("FLAGS_selected_gpus", "1")
    model = ScoreModel(expert, cloner, 0.5)
    runner = make_runner(model, {"engine": "inference", "cpu_threads": 1}, "gpu", SHAPE)
    assert recording_config.gpus == [1]
    assert_close(runner(images)[0], EagerRunner(model)(images)[0])  # (run on the CPU here)
    monkeypatch.setenv("FLAGS_selected_gpus", "3,4")
    assert current_gpu_id() == 3


class RecordingTensorRT:
    """A stand-in for paddle.tensorrt.export (which needs a GPU): records what it is given;
    `convert` copies the model and returns a program with `engines` TensorRT engine operators."""

    def __init__(self, engines: int):
        self.engines, self.inputs, self.configs, self.converted = engines, [], [], []
        self.PrecisionMode = types.SimpleNamespace(FP32="FP32", FP16="FP16")

    def Input(self, **kwargs):
        self.inputs.append(kwargs)
        return kwargs

    def TensorRTConfig(self, inputs):
        config = types.SimpleNamespace(inputs=inputs)
        self.configs.append(config)
        return config

    def convert(self, model_file, config):
        self.converted.append(model_file)
        prefix = os.path.splitext(model_file)[0]
        for suffix in (".json", ".pdiparams"):
            shutil.copy(prefix + suffix, config.save_model_dir + suffix)
        names = (["pd_op.data"] + ["pd_op.tensorrt_engine"] * self.engines
                 + ["pd_op.pool2d", "builtin.parameter", "pd_op.fetch"])
        ops = [types.SimpleNamespace(name=lambda name=name: name) for name in names]
        return types.SimpleNamespace(global_block=lambda: types.SimpleNamespace(ops=ops))


@pytest.fixture
def exported_score_model(networks, tmp_path):
    expert, cloner, images = networks
    model = ScoreModel(expert, cloner, 0.5)
    model_file = export_layer(model, str(tmp_path / "model"), SHAPE)
    return model_file, str(tmp_path / "model.pdiparams"), EagerRunner(model)(images)[0], images


def test_tensorrt_converts_the_pir_model_with_explicit_shapes_and_reports_it(
        exported_score_model, recording_config, monkeypatch):
    model_file, params_file, expected, images = exported_score_model
    converter = RecordingTensorRT(engines=2)
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", converter)
    predictor, applied = build_predictor(model_file, params_file, use_gpu=True,
                                         use_tensorrt=True, precision="fp16", batch_size=4,
                                         gpu_id=0, image_shape=SHAPE)
    assert converter.inputs == [dict(min_input_shape=(1, *SHAPE), optim_input_shape=(4, *SHAPE),
                                     max_input_shape=(4, *SHAPE), input_data_type="float32")]
    (config,) = converter.configs
    assert config.precision_mode == "FP16" and converter.converted == [model_file]
    assert not model_file.startswith(os.path.dirname(config.save_model_dir))
    assert applied["tensorrt"] == {"engines": 2, "operators_left": 1}
    assert applied["summary"] == ("Paddle Inference on gpu:0, TensorRT fp16 (2 engine(s), "
                                  "1 operator(s) left to Paddle)")
    assert recording_config.gpus == [0]
    assert_close(run_predictor(predictor, images)[0], expected)  # the converted model's files


def test_tensorrt_that_takes_nothing_or_cannot_apply_is_refused_in_one_line(
        exported_score_model, recording_config, monkeypatch, tmp_path):
    model_file, params_file, _, _ = exported_score_model
    request = dict(use_gpu=True, use_tensorrt=True, batch_size=2, image_shape=SHAPE)
    try:
        import paddle.tensorrt.export  # noqa: F401
    except (ImportError, OSError):  # this Paddle has no TensorRT: the refusal says what to install
        with pytest.raises(UserError, match="needs paddlepaddle-gpu built with TensorRT"):
            build_predictor(model_file, params_file, **request)
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", RecordingTensorRT(engines=0))
    refusals = [(model_file, "fp16", "TensorRT took none of the operators"),
                (model_file, "int8", "needs a quantized model"),
                (str(tmp_path / "model.pdmodel"), "fp16", "converts Paddle 3 models")]
    for model, precision, message in refusals:
        with pytest.raises(UserError, match=message) as error:
            build_predictor(model, params_file, precision=precision, **request)
        assert "\n" not in str(error.value)
    assert recording_config.gpus == []  # no predictor was made


def test_the_report_says_what_the_cpu_predictor_runs(exported_score_model):
    model_file, params_file, _, _ = exported_score_model
    _, applied = build_predictor(model_file, params_file, cpu_threads=2)
    assert applied["summary"] == "Paddle Inference on cpu, oneDNN, 2 thread(s), fp32"
    _, applied = build_predictor(model_file, params_file, enable_mkldnn=False, use_tensorrt=True)
    assert applied["summary"] == "Paddle Inference on cpu, 1 thread(s), fp32"


def test_bf16_is_reported_only_where_paddle_applies_it(exported_score_model, monkeypatch):
    model_file, params_file, _, _ = exported_score_model
    for supported, applied in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(paddle.base.core, "supports_bfloat16", lambda: supported)
        assert build_predictor(model_file, params_file, precision="bf16")[1]["precision"] \
            == applied
