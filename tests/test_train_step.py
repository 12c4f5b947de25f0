"""The compiled training forward against the eager one: same losses, same weights, bit for bit."""
import numpy as np
import paddle
import pytest

from conftest import make_config
from test_functions import score_cached
from train import Trainer
from train_step import CompiledStep, DistillationStep, build_training_step, compiles_training


def train_epochs(config: dict, compiled: bool, epochs: int = 2):
    """Losses of `epochs` epochs and the final cloner state; the test set is scored between
    epochs (eval mode in between, as during training)."""
    trainer = Trainer(config)
    trainer.setup()
    assert isinstance(trainer.step, CompiledStep)
    if not compiled:
        trainer.step = DistillationStep(trainer.cloner, trainer.criterion)
    losses = []
    for epoch in range(epochs):
        losses.append(trainer.run_epoch(epoch))
        score_cached(trainer.cloner, trainer.test_cache, config)
    return losses, {name: value.numpy() for name, value in trainer.cloner.state_dict().items()}


def test_compiled_training_is_bit_identical_to_eager(demo_root, tmp_path):
    # batch 5 over 12 images: batches of 5, 5 and 2, so the step is traced for two shapes
    config = make_config(demo_root, None, batch_size=5, save_dir=str(tmp_path),
                         log_dir=str(tmp_path / "logs"))
    eager_losses, eager_state = train_epochs(config, compiled=False)
    compiled_losses, compiled_state = train_epochs(config, compiled=True)
    assert compiled_losses == eager_losses
    for name, value in eager_state.items():
        assert np.array_equal(compiled_state[name], value), name


def test_compiled_step_follows_train_and_eval_mode():
    paddle.seed(3)
    from loss_functions import MseDirectionLoss
    from network import Cloner
    cloner = Cloner()
    step = CompiledStep(DistillationStep(cloner, MseDirectionLoss(0.5)))
    images = paddle.rand([2, 3, 32, 32])
    targets = [paddle.rand(shape) for shape in
               ([2, 128, 8, 8], [2, 256, 4, 4], [2, 512, 2, 2], [2, 512, 1, 1])]
    eager = DistillationStep(cloner, MseDirectionLoss(0.5))
    for mode in ("train", "eval", "train"):
        getattr(step, mode)()
        getattr(eager, mode)()
        with paddle.no_grad():
            assert float(step(images, targets)) == float(eager(images, targets)), mode


@pytest.mark.parametrize("overrides, device, expected", [
    ({}, "cpu", True), ({"engine": "inference"}, "gpu", True), ({}, "gpu", False),
    ({"engine": "eager"}, "cpu", False), ({"amp": True}, "gpu", False)])
def test_where_training_is_compiled(overrides, device, expected):
    config = {"engine": "auto", "amp": False, **overrides}
    assert compiles_training(config, device) is expected
    step = build_training_step(paddle.nn.Identity(), paddle.nn.Identity(), config, device)
    assert isinstance(step, CompiledStep) is expected
