"""The cloner: layout and parameter names from the cfg lists, stages, and loading checkpoints."""
import numpy as np
import paddle
import pytest
from paddle import nn

from conftest import make_config
from network import Cloner, DistillationPair, build_cloner, infer_architecture, load_cloner
from utils.checkpoint import save_state_dict
from utils.errors import UserError
from vgg import Expert

# The cfg lists as written in METHOD.md (cfg B: the paper's smaller cloner; cfg A: VGG16's own).
CFG_B = [16, 16, "M", 16, 128, "M", 16, 16, 256, "M", 16, 16, 512, "M", 16, 16, 512, "M"]
CFG_A = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
ARCHITECTURES = [(False, False), (False, True), (True, False), (True, True)]


def expected_parameters(cfg, use_bias):
    """{name: shape} of a plain Sequential built from cfg: conv (+ BN unless a pool follows) +
    ReLU per number, a pool per 'M'."""
    names, index, in_channels = {}, 0, 3
    for i, entry in enumerate(cfg):
        if entry == "M":
            index += 1
            continue
        names[f"features.{index}.weight"] = [entry, in_channels, 3, 3]
        if use_bias:
            names[f"features.{index}.bias"] = [entry]
        index += 1
        if cfg[i + 1] != "M":
            for suffix in ("weight", "bias", "_mean", "_variance"):
                names[f"features.{index}.{suffix}"] = [entry]
            index += 1
        index += 1  # ReLU
        in_channels = entry
    return names


def numpy_state(layer):
    return {name: value.numpy() for name, value in layer.state_dict().items()}


@pytest.mark.parametrize("equal_network_size", [False, True])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_cloner_stage_shapes(equal_network_size, size):
    cloner = Cloner(equal_network_size)
    cloner.eval()
    with paddle.no_grad():
        stages = cloner(paddle.rand([1, 3, size, size]))
    assert [s.shape for s in stages] == [[1, 128, size // 4, size // 4],
                                         [1, 256, size // 8, size // 8],
                                         [1, 512, size // 16, size // 16],
                                         [1, 512, size // 32, size // 32]]


@pytest.mark.parametrize("equal_network_size,use_bias", ARCHITECTURES)
def test_parameter_names_follow_the_cfg_list(equal_network_size, use_bias):
    cfg = CFG_A if equal_network_size else CFG_B
    cloner = Cloner(equal_network_size, use_bias)
    expected = expected_parameters(cfg, use_bias)
    state = cloner.state_dict()
    assert list(state) == list(expected)
    assert {name: list(value.shape) for name, value in state.items()} == expected


@pytest.mark.parametrize("equal_network_size", [False, True])
def test_layer_sequence_follows_the_cfg_list(equal_network_size):
    cfg = CFG_A if equal_network_size else CFG_B
    layers = list(Cloner(equal_network_size).features)
    kinds = []
    for i, entry in enumerate(cfg):
        if entry == "M":
            kinds.append(nn.MaxPool2D)
        else:
            kinds += [nn.Conv2D] + ([nn.BatchNorm2D] if cfg[i + 1] != "M" else []) + [nn.ReLU]
    assert [type(layer) for layer in layers] == kinds
    for layer in layers:
        if isinstance(layer, nn.Conv2D):
            assert list(layer.weight.shape[2:]) == [3, 3]
            assert set(np.ravel(layer._padding).tolist()) == {1}
            assert layer.bias is None
        if isinstance(layer, nn.MaxPool2D):
            assert layer.ksize == 2 and layer.stride == 2


def test_conv_weights_are_xavier_uniform():
    paddle.seed(3)
    conv = Cloner(equal_network_size=True).features[3]  # 64 -> 64 channels
    weight = conv.weight.numpy()
    fan_in = fan_out = 64 * 9
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(weight).max() <= bound
    assert np.abs(weight).max() > 0.98 * bound
    np.testing.assert_allclose(weight.std(), bound / np.sqrt(3.0), rtol=0.03)


@pytest.mark.parametrize("equal_network_size,use_bias", ARCHITECTURES)
def test_infer_architecture_recognises_every_combination(equal_network_size, use_bias):
    state = numpy_state(Cloner(equal_network_size, use_bias))
    assert infer_architecture(state, "x.pdparams") == {"equal_network_size": equal_network_size,
                                                       "use_bias": use_bias}


def test_infer_architecture_rejects_a_state_without_features():
    with pytest.raises(UserError) as error:
        infer_architecture({"conv.weight": np.zeros(3)}, "other.pdparams")
    assert "other.pdparams" in str(error.value)


@pytest.mark.parametrize("use_bias", [False, True])
def test_load_cloner_rebuilds_cfg_a_from_a_cfg_b_config(demo_root, tmp_path, use_bias):
    saved = Cloner(equal_network_size=True, use_bias=use_bias)
    for layer in saved.features:  # non-trivial running statistics must be loaded too
        if isinstance(layer, nn.BatchNorm2D):
            layer._mean.set_value(paddle.rand(layer._mean.shape))
    path = str(tmp_path / "cloner_a.pdparams")
    save_state_dict(saved.state_dict(), path)
    config = make_config(demo_root)
    assert config["equal_network_size"] is False and config["use_bias"] is False
    cloner, resolved = load_cloner(path, config)
    assert resolved["equal_network_size"] is True and resolved["use_bias"] is use_bias
    assert config["equal_network_size"] is False  # the caller's config is left as it was
    assert not cloner.training
    assert list(cloner.features[0].weight.shape) == [64, 3, 3, 3]
    loaded, expected = numpy_state(cloner), numpy_state(saved)
    assert list(loaded) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)
    x = paddle.rand([1, 3, 32, 32])
    saved.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(cloner(x)[3].numpy(), saved(x)[3].numpy())


def test_checkpoint_with_a_missing_key_names_it(demo_root, tmp_path):
    state = numpy_state(Cloner())
    del state["features.7._variance"]
    path = str(tmp_path / "missing.pdparams")
    save_state_dict(state, path)
    with pytest.raises(UserError) as error:
        load_cloner(path, make_config(demo_root))
    assert "features.7._variance" in str(error.value) and path in str(error.value)


def test_checkpoint_with_a_misshaped_key_names_it(demo_root, tmp_path):
    state = numpy_state(Cloner())
    state["features.3.weight"] = np.zeros((16, 16, 1, 1), np.float32)
    path = str(tmp_path / "misshaped.pdparams")
    save_state_dict(state, path)
    with pytest.raises(UserError) as error:
        load_cloner(path, make_config(demo_root))
    message = str(error.value)
    assert "features.3.weight" in message and path in message


def test_build_cloner_and_pair(demo_root):
    cloner = build_cloner(make_config(demo_root, equal_network_size=True, use_bias=True))
    assert cloner.features[0].bias is not None
    assert list(cloner.features[0].weight.shape) == [64, 3, 3, 3]
    small = Cloner()
    small.eval()
    expert = Expert()
    x = paddle.rand([2, 3, 32, 32])
    with paddle.no_grad():
        cloner_stages, expert_stages = DistillationPair(expert, small)(x)
        np.testing.assert_array_equal(cloner_stages[1].numpy(), small(x)[1].numpy())
        np.testing.assert_array_equal(expert_stages[2].numpy(), expert(x)[2].numpy())
