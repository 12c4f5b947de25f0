"""Keras' VGG16 .h5 as the expert: files written in Keras' layout from our weights (the inverse
transform, derived here independently) must load back as those weights, and the folded first
convolution must compute what the Caffe network computes."""
import os
import sys

import numpy as np
import paddle
import pytest

import vgg
from conftest import ROOT, make_config
from script_helpers import error_line, run_main
from utils.checkpoint import read_state_dict
from utils.convert_weights import main as convert_main
from utils.errors import UserError
from vgg import Expert, build_expert, expert_fingerprint, load_expert_weights

try:
    import h5py
except ImportError:  # an optional package (requirements-extras.txt)
    h5py = None
needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py is not installed")

REAL_EXPERT = os.path.join(ROOT, "..", "shared", "weights", "vgg16_imagenet_keras.pdparams")
CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
KERAS_LAYERS = ["input_1", "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1",
                "block2_conv2", "block2_pool", "block3_conv1", "block3_conv2", "block3_conv3",
                "block3_pool", "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
                "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]
RGB_MEAN, RGB_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
SCALE = 57.63
# how Keras named a layer's arrays over the years: Keras 1 (the 2016 .h5 files), tf.keras, Keras 3
NAME_STYLES = {"keras1": ("{}_W_1:0", "{}_b_1:0"), "tf.keras": ("{}/kernel:0", "{}/bias:0"),
               "keras3": ("{}/kernel", "{}/bias")}


def caffe_arrays(state: dict) -> list:
    """(kernel [kh, kw, in, out], bias) per convolution, as the Caffe / Keras network has them."""
    convs = []
    for position, index in enumerate(CONVS):
        weight = state[f"features.{index}.weight"].astype(np.float64)
        bias = state[f"features.{index}.bias"].astype(np.float64) * SCALE
        if position == 0:
            weight = weight * SCALE
            # torchvision channel c = caffe[2 - c] / (255 std_c) + (mean_caffe[2 - c] / 255 -
            # mean_c) / std_c: the Caffe kernel reads channel k = 2 - c with w_c / (255 std_c)
            constant = (CAFFE_MEAN_BGR[::-1] / 255 - RGB_MEAN) / RGB_STD
            bias = bias + (weight * constant[None, :, None, None]).sum(axis=(1, 2, 3))
            weight = (weight / (255 * RGB_STD)[None, :, None, None])[:, ::-1]
        convs.append((weight.transpose(2, 3, 1, 0).astype(np.float32), bias.astype(np.float32)))
    return convs


def auto_named_layers() -> list:
    """VGG16's layers as Keras names them when the model does not: conv2d_1 ... conv2d_13, whose
    name order (conv2d_10 before conv2d_2) is not the model's order."""
    names, conv, pool = ["input_1"], 0, 0
    for layer in KERAS_LAYERS[1:]:
        if "conv" in layer:
            conv += 1
            names.append(f"conv2d_{conv}")
        else:
            pool += 1
            names.append(f"max_pooling2d_{pool}")
    return names


def write_keras_h5(path: str, state: dict, style: str = "keras1", top: bool = False,
                   model_file: bool = False, chunked: bool = False,
                   auto_names: bool = False) -> str:
    """An .h5 in Keras' legacy weights layout: the root lists the layers in `layer_names`, each
    layer's group lists its arrays (kernel, then bias) in `weight_names`."""
    layers = auto_named_layers() if auto_names else list(KERAS_LAYERS)
    arrays_of = dict(zip([name for name in layers if "conv" in name], caffe_arrays(state)))
    if top:  # the classifier of the file with top: dense layers, which the expert does not use
        layers += ["flatten", "fc1", "fc2", "predictions"]
        arrays_of.update({name: (np.ones((5, 4), np.float32), np.zeros(4, np.float32))
                          for name in ("fc1", "fc2", "predictions")})
    with h5py.File(path, "w") as file:
        root = file.create_group("model_weights") if model_file else file
        names = [name.encode("utf8") for name in layers]
        if style == "keras1":  # h5py 2 wrote fixed-length byte strings; h5py 3 reads them back
            names = np.array(names)  # as bytes, other lists as str
        if chunked:  # how Keras splits an attribute too long for one HDF5 header
            root.attrs["layer_names0"], root.attrs["layer_names1"] = names[:7], names[7:]
        else:
            root.attrs["layer_names"] = names
        if style != "keras1":
            root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.4.0"
        for name in sorted(layers):  # Keras writes the groups in name order
            group = root.create_group(name)
            array_names = [pattern.format(name) for pattern in NAME_STYLES[style]] \
                if name in arrays_of else []
            group.attrs["weight_names"] = [array_name.encode("utf8") for array_name in array_names]
            for array_name, array in zip(array_names, arrays_of.get(name, ())):
                group.create_dataset(array_name, data=array)
    return path


def random_biases(state: dict) -> dict:
    """`state` with biases drawn at random (a fresh expert's are zero, which would not show
    whether they are converted)."""
    rng = np.random.default_rng(3)
    return {name: rng.normal(0, 0.1, value.shape).astype(np.float32) if name.endswith(".bias")
            else value for name, value in state.items()}


@pytest.fixture(scope="module", params=["random expert", "real expert"])
def expert_state(request, expert_file) -> dict:
    """A random expert's arrays (always there) and the real ImageNet expert's (from ../shared)."""
    if request.param == "random expert":
        return random_biases(read_state_dict(expert_file))
    if not os.path.isfile(REAL_EXPERT):
        pytest.skip(f"{REAL_EXPERT} is absent")
    return read_state_dict(REAL_EXPERT)


def assert_converted_equals(path: str, state: dict) -> None:
    """The expert loaded from `path` holds `state`, to float32 rounding."""
    expert = Expert()
    load_expert_weights(expert, path)
    loaded = {name: value.numpy() for name, value in expert.state_dict().items()}
    assert sorted(loaded) == sorted(state)
    for name, value in state.items():
        np.testing.assert_allclose(loaded[name], value, rtol=2e-6,
                                   atol=2e-6 * np.abs(value).max(), err_msg=name)


@pytest.mark.parametrize("layout", [
    dict(style="keras1"),
    dict(style="tf.keras", top=True),
    dict(style="keras3", model_file=True, chunked=True, auto_names=True),
], ids=["keras1-notop", "tf.keras-with-top", "keras3-model-file-chunked-auto-names"])
@needs_h5py
def test_keras_h5_converts_back_to_the_expert_it_was_written_from(expert_state, tmp_path,
                                                                  layout):
    path = write_keras_h5(str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                          expert_state, **layout)
    assert_converted_equals(path, expert_state)


@needs_h5py
def test_the_folded_first_convolution_computes_the_caffe_networks_activations(tmp_path):
    """Inside the image, the converted expert's activations are the Caffe network's (BGR,
    0..255 minus the mean pixel, Keras' own kernels) divided by 57.63: the first convolution in
    NumPy, and the stage-1 outputs through an unfolded copy of the network."""
    source = REAL_EXPERT if os.path.isfile(REAL_EXPERT) else None
    paddle.seed(5)
    state = read_state_dict(source) if source else random_biases(
        {name: value.numpy() for name, value in Expert().state_dict().items()})
    path = write_keras_h5(str(tmp_path / "vgg16.h5"), state)
    with h5py.File(path, "r") as file:
        kernels = [(np.asarray(file[name][f"{name}_W_1:0"], np.float64),
                    np.asarray(file[name][f"{name}_b_1:0"], np.float64))
                   for name in KERAS_LAYERS if "conv" in name]
    expert = Expert()
    load_expert_weights(expert, path)
    rgb = np.random.default_rng(0).random((64, 64, 3))  # an RGB image in [0, 1], HWC
    caffe = rgb[:, :, ::-1] * 255.0 - CAFFE_MEAN_BGR
    torchvision = ((rgb - RGB_MEAN) / RGB_STD).transpose(2, 0, 1)[None].astype(np.float32)
    first = expert.features[1](expert.features[0](paddle.to_tensor(torchvision))).numpy()[0]
    kernel, bias = kernels[0]
    for row, col in [(1, 1), (20, 37), (62, 62)]:  # windows that stay inside the image
        window = caffe[row - 1:row + 2, col - 1:col + 2]  # [3, 3, BGR]
        expected = np.maximum(np.einsum("ijk,ijko->o", window, kernel) + bias, 0.0)
        np.testing.assert_allclose(first[:, row, col] * SCALE, expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())
    # the whole of stage 1 (after two pools) through the unfolded network, away from the border
    x = paddle.to_tensor(caffe.transpose(2, 0, 1)[None].astype(np.float32))
    h, convs = x, iter(kernels)
    for entry in vgg.VGG16_CFG[:6]:  # 64, 64, M, 128, 128, M
        if entry == "M":
            h = paddle.nn.functional.max_pool2d(h, 2, 2)
            continue
        kernel, bias = next(convs)
        h = paddle.nn.functional.relu(paddle.nn.functional.conv2d(
            h, paddle.to_tensor(kernel.transpose(3, 2, 0, 1).astype(np.float32)),
            paddle.to_tensor(bias.astype(np.float32)), padding=1))
    stage1 = expert(paddle.to_tensor(torchvision))[0].numpy()[0]
    unfolded = h.numpy()[0] / SCALE
    inside = (slice(None), slice(3, -3), slice(3, -3))  # the zero padding reaches 2 px in
    np.testing.assert_allclose(stage1[inside], unfolded[inside], rtol=1e-4,
                               atol=1e-4 * np.abs(unfolded).max())


@needs_h5py
def test_convert_weights_turns_the_keras_file_into_pdparams(expert_file, tmp_path, capsys):
    """Convert once, and h5py is no longer needed to load the same expert."""
    state = random_biases(read_state_dict(expert_file))
    source = write_keras_h5(str(tmp_path / "vgg16.h5"), state)
    target = str(tmp_path / "vgg16_keras.pdparams")
    code, out, err = run_main(convert_main, [source, target], capsys)
    assert code == 0, err
    assert out.strip() == f"wrote {target} (26 arrays)"
    assert_converted_equals(target, state)
    experts = [Expert(), Expert()]
    for expert, path in zip(experts, (source, target)):
        load_expert_weights(expert, path)
    assert expert_fingerprint(experts[0]) == expert_fingerprint(experts[1])  # interchangeable


@needs_h5py
def test_keras_keyword_downloads_once_into_paddles_cache(demo_root, expert_file, tmp_path,
                                                         monkeypatch):
    state = random_biases(read_state_dict(expert_file))
    downloaded = write_keras_h5(str(tmp_path / os.path.basename(vgg.KERAS_URL)), state)
    calls = []

    def fake_download(url, md5sum=None):
        calls.append((url, md5sum))
        return downloaded

    monkeypatch.setattr(vgg, "get_weights_path_from_url", fake_download)
    expert = build_expert(make_config(demo_root, vgg_weights="keras", pretrain=True))
    assert calls == [(vgg.KERAS_URL, vgg.KERAS_MD5)]
    assert expert.source == downloaded
    assert_converted_equals(downloaded, state)


@needs_h5py
def test_keras_keyword_without_network_says_where_to_put_the_file(demo_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(vgg, "get_weights_path_from_url", no_network)
    with pytest.raises(UserError) as error:
        build_expert(make_config(demo_root, vgg_weights="keras", pretrain=True))
    message = str(error.value)
    assert "\n" not in message
    assert vgg.KERAS_URL in message
    assert os.path.join(vgg.WEIGHTS_HOME, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") \
        in message
    assert "vgg_weights=" in message


def test_without_h5py_one_line_says_what_to_install(demo_root, tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "vgg16.h5")
    with open(path, "wb") as stream:
        stream.write(b"not read without h5py")
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    monkeypatch.setattr(vgg, "get_weights_path_from_url",
                        lambda *args, **kwargs: pytest.fail("downloaded what it cannot read"))
    for source, named in ((path, path), ("keras", vgg.KERAS_URL)):
        with pytest.raises(UserError) as error:
            build_expert(make_config(demo_root, vgg_weights=source, pretrain=True))
        message = str(error.value)
        assert "pip install h5py" in message and named in message and "\n" not in message
    code, _, err = run_main(convert_main, [path, str(tmp_path / "vgg16.pdparams")], capsys)
    assert error_line(code, err) == f"error: reading the Keras file {path} needs h5py: pip " \
                                    "install h5py, or use a .pdparams file"
    assert not os.path.exists(tmp_path / "vgg16.pdparams")


def layer_with(path: str, layer: str, **arrays) -> str:
    """Replace the arrays of `layer` in the Keras file at `path`."""
    with h5py.File(path, "r+") as file:
        group = file[layer]
        for name in list(group):
            del group[name]
        group.attrs["weight_names"] = [name.encode("utf8") for name in arrays]
        for name, array in arrays.items():
            group.create_dataset(name, data=array)
    return path


@pytest.mark.parametrize("damage, culprits", [
    ("not hdf5", ["cannot read Keras weights file"]),
    ("no layer_names", ["is not a Keras weights file"]),
    ("theano kernel", ["block2_conv1", "[128, 64, 3, 3]", "tf_kernels"]),
    ("kernel only", ["block3_conv2", "[[3, 3, 256, 256]]"]),
    ("a missing array", ["cannot read Keras weights file", "block4_conv1_b_1:0"]),
    ("vgg19", ["holds 14 convolutions, VGG16 has 13"]),
])
@needs_h5py
def test_a_file_that_is_not_keras_vgg16_is_named(expert_file, tmp_path, damage, culprits):
    path = write_keras_h5(str(tmp_path / "weights.h5"), read_state_dict(expert_file))
    if damage == "not hdf5":
        with open(path, "wb") as stream:
            stream.write(b"\x89PNG not an HDF5 file")
    elif damage == "no layer_names":
        with h5py.File(path, "r+") as file:
            del file.attrs["layer_names"]
    elif damage == "theano kernel":  # [out, in, kh, kw]: Keras' Theano-layout files
        layer_with(path, "block2_conv1", W=np.zeros((128, 64, 3, 3), np.float32),
                   b=np.zeros(128, np.float32))
    elif damage == "kernel only":
        layer_with(path, "block3_conv2", W=np.zeros((3, 3, 256, 256), np.float32))
    elif damage == "a missing array":
        with h5py.File(path, "r+") as file:
            del file["block4_conv1"]["block4_conv1_b_1:0"]
    elif damage == "vgg19":  # one more convolution in block 5
        with h5py.File(path, "r+") as file:
            file.attrs["layer_names"] = [name.encode("utf8") for name in
                                         KERAS_LAYERS[:-1] + ["block5_conv4", "block5_pool"]]
            group = file.create_group("block5_conv4")
            group.attrs["weight_names"] = [b"block5_conv4_W_1:0", b"block5_conv4_b_1:0"]
            group.create_dataset("block5_conv4_W_1:0", data=np.zeros((3, 3, 512, 512), "f4"))
            group.create_dataset("block5_conv4_b_1:0", data=np.zeros(512, "f4"))
    with pytest.raises(UserError) as error:
        load_expert_weights(Expert(), path)
    message = str(error.value)
    assert path in message and "\n" not in message
    for culprit in culprits:
        assert culprit in message
