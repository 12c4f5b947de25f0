"""The training step layer, and the CPU threads of the eager training step."""
import numpy as np
import paddle
import pytest

from conftest import make_config
from loss_functions import MseDirectionLoss
from network import Cloner
from train import Trainer
from train_step import DistillationStep, build_training_step


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
