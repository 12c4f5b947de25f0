"""The expert's outputs computed once: training and detection scores equal recomputing them; on a
GPU the cache stays in host memory and only each batch is copied to the device."""
import numpy as np
import paddle
import pytest

from conftest import make_config
from expert_cache import ExpertCache
from test_functions import score_cached
from train import Trainer
from utils.device_copy import PinnedCopy, batch_copier


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


class Images(paddle.io.Dataset):
    """(image, label, mask, index) items whose pixels encode the index."""

    def __init__(self, count: int = 10):
        super().__init__()
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        image = (index + np.arange(3 * 64.0).reshape(3, 8, 8)).astype(np.float32)
        return image, np.int64(index % 2), np.zeros((8, 8), np.float32), np.int64(index)


def pooled_stages(images: np.ndarray) -> list:
    """A NumPy stand-in for the expert: four stage outputs that depend on each image alone."""
    return [images.reshape(len(images), 3, 8 // s, s, 8 // s, s).mean(axis=(3, 5)) * (i + 1)
            for i, s in enumerate((1, 2, 4, 8))]


@pytest.fixture
def device_placement_forbidden(monkeypatch):
    """Creating a tensor on "the current device" raises, as if that device were a GPU whose
    memory must not receive the dataset: host arrays must be placed explicitly."""
    def current_device():
        raise AssertionError("a tensor was created on the current device")
    monkeypatch.setattr(paddle.tensor.creation, "_current_expected_place_", current_device)


@pytest.mark.parametrize("storage", ["memory", "float16", "none"])
def test_on_a_gpu_the_cache_stays_in_host_memory_and_only_batches_move(
        storage, device_placement_forbidden):
    copied, expert_inputs = [], []

    def to_device(array):  # a pretend GPU: records what is copied, keeps it on the CPU
        copied.append(array)
        return paddle.to_tensor(array, place=paddle.CPUPlace())

    def expert(images):
        expert_inputs.append(images)
        return pooled_stages(images)

    dataset = Images()
    cache = ExpertCache(dataset, expert, batch_size=4, storage=storage, device="gpu:0",
                        to_device=to_device)
    everything = np.stack([dataset[i][0] for i in range(len(dataset))])
    assert isinstance(cache.images, np.ndarray) and cache.images.shape == everything.shape
    if storage != "none":
        assert all(isinstance(stage, np.ndarray) and len(stage) == len(dataset)
                   for stage in cache.stages)
    assert not copied  # building the cache copied nothing to the device
    expert_inputs.clear()

    indices = [7, 2, 5]
    images, stages = cache.batch(indices)
    assert len(copied) == 5 and all(len(array) == 3 for array in copied)  # the batch alone
    assert all(isinstance(array, np.ndarray) for array in copied)
    np.testing.assert_array_equal(images.numpy(), everything[indices])
    expected = pooled_stages(everything[indices])
    for stage, value in zip(stages, expected):
        assert stage.dtype == paddle.float32
        np.testing.assert_allclose(stage.numpy(), value, rtol=1e-3 if storage == "float16" else 0)
    if storage == "none":  # the expert runs again on the batch's host images
        assert len(expert_inputs) == 1 and isinstance(expert_inputs[0], np.ndarray)
        np.testing.assert_array_equal(expert_inputs[0], everything[indices])
    else:
        assert not expert_inputs


def test_on_the_cpu_the_cache_is_a_paddle_tensor_gathered_in_place():
    cache = ExpertCache(Images(), pooled_stages, batch_size=4, storage="memory", device="cpu")
    assert cache.to_device is None
    assert isinstance(cache.images, paddle.Tensor) and cache.images.place.is_cpu_place()
    assert all(isinstance(stage, paddle.Tensor) for stage in cache.stages)


def test_a_gpu_gets_pinned_copies_and_the_cpu_none():
    assert batch_copier("cpu") is None
    assert isinstance(batch_copier("gpu:1"), PinnedCopy)
