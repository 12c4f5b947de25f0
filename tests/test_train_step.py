"""The training step layer, the CPU threads of the eager training step, and the AMP branch of the
training loop with its loss scaler (run on the CPU as far as Paddle allows)."""
import os

import numpy as np
import paddle
import pytest
from paddle.amp import grad_scaler

import train as train_script
from conftest import make_config
from loss_functions import MseDirectionLoss
from network import Cloner
from train import Trainer
from train_step import DistillationStep, build_grad_scaler, build_training_step
from utils.checkpoint import load_training_state
from utils.errors import UserError


def test_the_step_is_the_loss_of_the_cloner_stages():
    paddle.seed(3)
    cloner, criterion = Cloner(), MseDirectionLoss(0.5)
    images = paddle.rand([2, 3, 32, 32])
    targets = [paddle.rand(shape) for shape in
               ([2, 128, 8, 8], [2, 256, 4, 4], [2, 512, 2, 2], [2, 512, 1, 1])]
    step = build_training_step(cloner, criterion, {"amp": False})
    assert isinstance(step, DistillationStep)
    assert float(step(images, targets)) == float(criterion(cloner(images), targets))


def train_epochs(config: dict, epochs: int = 2):
    trainer = Trainer(config)
    trainer.setup()
    losses = [trainer.run_epoch(epoch) for epoch in range(epochs)]
    return losses, {name: value.numpy() for name, value in trainer.cloner.state_dict().items()}


@pytest.mark.slow
def test_training_threads_change_nothing_but_rounding(demo_root, tmp_path):
    """train_cpu_threads only changes the order of floating-point sums."""
    runs = [train_epochs(make_config(demo_root, None, train_cpu_threads=threads,
                                     save_dir=str(tmp_path / str(threads)),
                                     log_dir=str(tmp_path / "logs")))
            for threads in (1, 2)]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for name, value in runs[0][1].items():
        np.testing.assert_allclose(runs[1][1][name], value, rtol=1e-3, atol=1e-5, err_msg=name)


def enabled_grad_scaler(**settings) -> paddle.amp.GradScaler:
    """Paddle's GradScaler switched on although this is a CPU: it disables itself unless the
    current place is a GPU, so it is built while the tracer reports one (the device logic
    injected). Its scale / unscale / update then run with Paddle's own CPU kernels."""
    real = grad_scaler._dygraph_tracer

    class GpuPlace:
        def is_gpu_place(self):
            return True

    class Tracer:
        _expected_place = GpuPlace()

    grad_scaler._dygraph_tracer = Tracer
    try:
        scaler = paddle.amp.GradScaler(**settings)
    finally:
        grad_scaler._dygraph_tracer = real
    assert scaler.is_enable()
    return scaler


@pytest.fixture
def amp_on_cpu(monkeypatch):
    """`amp: true` trains here with a real GradScaler whose scale doubles every 2 good steps;
    paddle.amp.auto_cast does nothing on a CPU, so the network itself stays in float32."""
    monkeypatch.setattr(train_script, "build_grad_scaler",
                        lambda config, device: enabled_grad_scaler(incr_every_n_steps=2)
                        if config["amp"] else None)


def scale_after(steps: int) -> float:
    return 2.0 ** 16 * 2 ** (steps // 2)


@pytest.mark.slow
def test_the_amp_branch_trains_like_float32_and_moves_the_loss_scale(demo_root, tmp_path,
                                                                     amp_on_cpu):
    """Scaling the loss by a power of two and unscaling the gradients is exact: the AMP branch
    of the training loop (scale, backward, step, update) gives float32's weights bit for bit,
    while its scaler counts every step."""
    runs = {}
    for amp in (False, True):
        trainer = Trainer(make_config(demo_root, None, amp=amp, save_dir=str(tmp_path / str(amp)),
                                      log_dir=str(tmp_path / "logs")))
        trainer.setup()
        losses = [trainer.run_epoch(epoch) for epoch in range(2)]
        runs[amp] = losses, {name: value.numpy() for name, value in
                             trainer.cloner.state_dict().items()}, trainer.scaler
    assert runs[False][2] is None
    assert runs[True][0] == runs[False][0]
    for name, value in runs[False][1].items():
        assert np.array_equal(runs[True][1][name], value), name
    steps = 2 * len(trainer.sampler)  # 12 images in batches of 4: 6 steps
    state = runs[True][2].state_dict()
    assert float(state["scale"][0]) == scale_after(steps) and state["incr_count"] == steps % 2


@pytest.mark.slow
def test_last_pdckpt_keeps_the_loss_scale_and_resuming_goes_on_from_it(demo_root, tmp_path,
                                                                       amp_on_cpu):
    settings = dict(amp=True, eval_interval=100, log_dir=str(tmp_path / "logs"))
    straight = train_script.train(make_config(demo_root, None, num_epochs=2,
                                              save_dir=str(tmp_path / "straight"), **settings))
    stopped = train_script.train(make_config(demo_root, None, num_epochs=1,
                                             save_dir=str(tmp_path / "stopped"), **settings))
    state = load_training_state(os.path.join(stopped["model_dir"], "last.pdckpt"))
    assert float(state["scaler"]["scale"][0]) == scale_after(6)  # epochs 0..1, 3 steps each
    resumed = train_script.train({**state["config"], "num_epochs": 2}, state)
    expected = load_training_state(os.path.join(straight["model_dir"], "last.pdckpt"))["scaler"]
    scaler = load_training_state(os.path.join(resumed["model_dir"], "last.pdckpt"))["scaler"]
    assert float(expected["scale"][0]) == scale_after(9)
    assert sorted(scaler) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(scaler[key], value), key


def test_amp_outside_a_gpu_is_one_line_and_off_is_no_scaler():
    assert build_grad_scaler({"amp": False}, "cpu") is None
    with pytest.raises(UserError, match="amp: true needs a GPU"):
        build_grad_scaler({"amp": True}, "cpu")
