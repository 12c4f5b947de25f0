"""The expert's outputs computed once: training and detection scores equal recomputing them."""
import numpy as np
import pytest

from conftest import make_config
from test_functions import score_cached
from train import Trainer


def run(config: dict, epochs: int = 2) -> dict:
    """Losses of a few epochs, the final cloner, its test-set scores, and the expert's grads."""
    trainer = Trainer(config)
    trainer.setup()
    losses = [trainer.run_epoch(epoch) for epoch in range(epochs)]
    return {"losses": losses,
            "state": {name: value.numpy() for name, value in trainer.cloner.state_dict().items()},
            "scores": score_cached(trainer.cloner, trainer.test_cache, config),
            "expert_grads": [p.grad for p in trainer.expert.parameters()],
            "expert_frozen": all(p.stop_gradient for p in trainer.expert.parameters())}


@pytest.fixture(scope="module")
def recomputed(demo_root, tmp_path_factory):
    """expert_cache: none, the reference: the expert runs again at every step and evaluation."""
    folder = tmp_path_factory.mktemp("none")
    return run(make_config(demo_root, None, expert_cache="none", save_dir=str(folder),
                           log_dir=str(folder / "logs"), cpu_threads=1))


@pytest.mark.parametrize("storage, engine", [
    ("memory", "auto"), ("disk", "auto"), pytest.param("memory", "eager", marks=pytest.mark.slow)])
def test_cached_expert_outputs_give_bit_identical_training(demo_root, tmp_path, recomputed,
                                                          storage, engine):
    config = make_config(demo_root, None, expert_cache=storage, save_dir=str(tmp_path),
                         log_dir=str(tmp_path / "logs"), engine=engine, cpu_threads=1)
    if engine == "eager":  # the reference itself, with eager runners throughout
        reference = run({**config, "expert_cache": "none"})
    else:
        reference = recomputed
    cached = run(config)
    assert cached["losses"] == reference["losses"]
    for name, value in reference["state"].items():
        assert np.array_equal(cached["state"][name], value), name
    assert np.array_equal(cached["scores"], reference["scores"])  # detection during training


def test_float16_cache_is_close(demo_root, tmp_path, recomputed):
    config = make_config(demo_root, None, expert_cache="float16", save_dir=str(tmp_path),
                         log_dir=str(tmp_path / "logs"), cpu_threads=1)
    half = run(config)
    np.testing.assert_allclose(half["losses"], recomputed["losses"], rtol=1e-3)
    assert half["losses"] != recomputed["losses"]  # the outputs were really stored as float16


def test_the_expert_is_frozen(recomputed):
    assert recomputed["expert_frozen"]
    assert all(grad is None for grad in recomputed["expert_grads"])
