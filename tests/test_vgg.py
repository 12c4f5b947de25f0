"""The expert: its stages, its frozen parameters and every way its weights are loaded."""
import importlib.util
import os

import numpy as np
import paddle
import pytest
from paddle.vision.models.vgg import cfgs as paddle_vgg_cfgs
from paddle.vision.models.vgg import make_layers as paddle_make_layers

import vgg
from conftest import make_config
from utils.checkpoint import save_state_dict
from utils.errors import UserError
from vgg import (EXPERT_FILE, Expert, build_expert, check_expert, expert_fingerprint,
                 load_expert_weights)

STAGE_INDICES = (9, 16, 23, 30)  # pool2 .. pool5 of the 31-layer VGG16 features
HAS_TORCH = importlib.util.find_spec("torch") is not None


def numpy_state(layer):
    return {name: value.numpy() for name, value in layer.state_dict().items()}


def assert_same_weights(layer, state):
    loaded = numpy_state(layer)
    assert sorted(loaded) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


@pytest.fixture(scope="module")
def expert():
    paddle.seed(7)
    return Expert()


@pytest.fixture(scope="module")
def expert_state(expert_file):
    return {name: np.asarray(value) for name, value in
            paddle.load(expert_file, return_numpy=True).items()}


@pytest.mark.parametrize("size", [32, pytest.param(64, marks=pytest.mark.slow),
                                  pytest.param(128, marks=pytest.mark.slow)])
def test_stage_shapes_and_values_match_the_plain_vgg16_sequential(expert, size):
    n = 2 if size < 128 else 1
    x = paddle.to_tensor(np.random.default_rng(size).random((n, 3, size, size), np.float32))
    stages = expert(x)
    expected_shapes = [[n, 128, size // 4, size // 4], [n, 256, size // 8, size // 8],
                       [n, 512, size // 16, size // 16], [n, 512, size // 32, size // 32]]
    assert [s.shape for s in stages] == expected_shapes
    # Paddle's own VGG16 'D' features, with the expert's weights, run layer by layer
    plain = paddle_make_layers(paddle_vgg_cfgs["D"])
    assert len(plain) == 31
    plain.set_state_dict({name[len("features."):]: value
                          for name, value in expert.state_dict().items()})
    plain.eval()
    outputs, h = {}, x
    with paddle.no_grad():
        for i, layer in enumerate(plain):
            h = layer(h)
            if i in STAGE_INDICES:
                outputs[i] = h.numpy()
    for stage, index in zip(stages, STAGE_INDICES):
        np.testing.assert_array_equal(stage.numpy(), outputs[index])
    named = expert.stage_outputs(x)
    assert list(named) == ["stage1", "stage2", "stage3", "stage4"]
    np.testing.assert_array_equal(named["stage4"].numpy(), stages[3].numpy())


def test_expert_layout_is_vgg16_features(expert):
    assert len(expert.features) == 31
    assert expert.stage_ends == list(STAGE_INDICES)
    names = sorted(expert.state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert names == sorted([f"features.{i}.{p}" for i in convs for p in ("weight", "bias")])


def test_expert_parameters_are_frozen(expert):
    parameters = expert.parameters()
    assert len(parameters) == 26
    assert all(parameter.stop_gradient for parameter in parameters)
    x = paddle.to_tensor(np.ones((1, 3, 32, 32), np.float32), stop_gradient=False)
    expert(x)[3].sum().backward()
    assert x.grad is not None  # the input still gets its gradient (saliency maps need it)
    assert all(parameter.grad is None for parameter in parameters)
    expert.train()
    assert not expert.training


def test_saved_expert_reloads_bit_identically_from_vgg_weights(demo_root, expert_file,
                                                               expert_state):
    config = make_config(demo_root, expert_file)
    assert config["pretrain"] and config["vgg_weights"] == expert_file
    assert_same_weights(build_expert(config), expert_state)
    other = Expert()
    load_expert_weights(other, expert_file)
    assert_same_weights(other, expert_state)


def test_random_expert_reloads_from_beside_the_checkpoint(demo_root, expert, tmp_path):
    save_state_dict(expert.state_dict(), str(tmp_path / EXPERT_FILE))
    config = make_config(demo_root)
    assert config["pretrain"] is False
    assert_same_weights(build_expert(config, model_dir=str(tmp_path)), numpy_state(expert))


def test_random_expert_without_its_file_is_an_error(demo_root, tmp_path):
    with pytest.raises(UserError) as error:
        build_expert(make_config(demo_root), model_dir=str(tmp_path))
    assert os.path.join(str(tmp_path), EXPERT_FILE) in str(error.value)


def test_random_expert_without_model_dir_is_fresh(demo_root):
    paddle.seed(1)
    first = numpy_state(build_expert(make_config(demo_root)))
    second = numpy_state(build_expert(make_config(demo_root)))
    assert not np.array_equal(first["features.0.weight"], second["features.0.weight"])


def test_fingerprint_is_the_weights_in_either_format(expert, tmp_path):
    fingerprint = expert_fingerprint(expert)
    for name in ("copy.pdparams", "copy.safetensors"):
        save_state_dict(expert.state_dict(), str(tmp_path / name))
        copy = Expert()
        load_expert_weights(copy, str(tmp_path / name))
        assert expert_fingerprint(copy) == fingerprint
    state = numpy_state(expert)
    weight = state["features.28.bias"]
    weight[-1] = np.nextafter(weight[-1], np.float32(np.inf))  # one bit of the last bias
    nudged = Expert()
    nudged.set_state_dict(state)
    assert expert_fingerprint(nudged) != fingerprint


def test_check_expert_names_the_checkpoint_and_the_experts_file(expert_file):
    loaded = Expert()
    load_expert_weights(loaded, expert_file)
    check_expert(loaded, expert_fingerprint(loaded), "model.pdparams")
    check_expert(loaded, None, "old_model.pdparams")  # recorded nothing
    with pytest.raises(UserError) as error:
        check_expert(loaded, "0" * 32, "model.pdparams")
    assert str(error.value).startswith("model.pdparams was trained against another expert than "
                                       f"{expert_file}")


def broken_file(tmp_path, state, name):
    path = str(tmp_path / name)
    save_state_dict(state, path)
    return path


@pytest.mark.parametrize("name, change, culprits", [
    ("missing", {"features.14.bias": None}, ["features.14.bias"]),
    ("misshaped", {"features.2.weight": np.zeros((64, 64, 5, 5), np.float32)},
     ["features.2.weight", "[64, 64, 5, 5]"]),
    ("extra", {"features.31.weight": np.zeros((3,), np.float32)}, ["features.31.weight"]),
])
def test_a_bad_key_names_the_key_and_the_file(expert_state, tmp_path, name, change, culprits):
    """A missing, mis-shaped or unexpected key (None: deleted) is an error, never skipped."""
    state = {**expert_state, **change}
    state = {key: value for key, value in state.items() if value is not None}
    path = broken_file(tmp_path, state, f"{name}.pdparams")
    with pytest.raises(UserError) as error:
        load_expert_weights(Expert(), path)
    message = str(error.value)
    assert path in message
    for culprit in culprits:
        assert culprit in message


def test_full_vgg16_state_dict_loads_and_ignores_the_classifier(expert_state, tmp_path):
    state = dict(expert_state)
    state.update({"classifier.0.weight": np.ones((7, 5), np.float32),
                  "classifier.0.bias": np.ones((5,), np.float32),
                  "classifier.6.weight": np.ones((5, 2), np.float32)})
    path = broken_file(tmp_path, state, "vgg16_full.pdparams")
    loaded = Expert()
    load_expert_weights(loaded, path)
    assert_same_weights(loaded, expert_state)


def test_safetensors_file_loads(expert_state, tmp_path):
    path = broken_file(tmp_path, expert_state, "vgg16.safetensors")
    loaded = Expert()
    load_expert_weights(loaded, path)
    assert_same_weights(loaded, expert_state)


def test_imagenet_without_network_says_where_to_put_the_file(demo_root, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(vgg, "get_weights_path_from_url", no_network)
    monkeypatch.setattr(vgg, "FEATURES_CACHE", str(tmp_path / "vgg16_features.pdparams"))
    config = make_config(demo_root, vgg_weights="imagenet", pretrain=True)
    with pytest.raises(UserError) as error:
        build_expert(config)
    message = str(error.value)
    assert "\n" not in message
    assert os.path.join(vgg.WEIGHTS_HOME, "vgg16.pdparams") in message
    assert vgg.IMAGENET_URL in message and "vgg_weights" in message
    assert not os.path.exists(vgg.FEATURES_CACHE)


def test_imagenet_download_is_cut_to_the_features_and_cached(demo_root, expert_state, tmp_path,
                                                            monkeypatch):
    """The model zoo's file is a full VGG16; only its features are kept, in FEATURES_CACHE."""
    full = dict(expert_state, **{"classifier.0.weight": np.ones((4, 3), np.float32)})
    downloaded = broken_file(tmp_path, full, "vgg16.pdparams")
    calls = []

    def fake_download(url, md5sum=None, *args, **kwargs):
        calls.append((url, md5sum))
        return downloaded

    monkeypatch.setattr(vgg, "get_weights_path_from_url", fake_download)
    monkeypatch.setattr(vgg, "FEATURES_CACHE", str(tmp_path / "cache" / "features.pdparams"))
    config = make_config(demo_root, vgg_weights="imagenet", pretrain=True)
    assert_same_weights(build_expert(config), expert_state)
    assert calls == [(vgg.IMAGENET_URL, vgg.IMAGENET_MD5)]
    cached = paddle.load(vgg.FEATURES_CACHE, return_numpy=True)
    assert sorted(cached) == sorted(expert_state)
    assert_same_weights(build_expert(config), expert_state)  # the second time from the cache
    assert len(calls) == 1


@pytest.mark.skipif(HAS_TORCH, reason="PyTorch is installed")
def test_pth_without_torch_asks_for_pytorch(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"not read without torch")
    with pytest.raises(UserError) as error:
        load_expert_weights(Expert(), str(path))
    assert "PyTorch" in str(error.value) and str(path) in str(error.value)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_pth_with_torch_loads(expert_state, tmp_path):
    import torch
    full = {name: torch.from_numpy(value) for name, value in expert_state.items()}
    full["classifier.0.weight"] = torch.ones(4, 3)
    path = str(tmp_path / "vgg16.pth")
    torch.save(full, path)
    loaded = Expert()
    load_expert_weights(loaded, path)
    assert_same_weights(loaded, expert_state)
