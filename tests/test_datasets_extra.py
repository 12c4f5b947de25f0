"""MNIST, Fashion-MNIST, CIFAR-10 (one-class protocol) and Retinal OCT, from tiny files written here
in the very formats paddle.vision.datasets reads (idx.gz, CIFAR's pickled tar.gz, OCT folders)."""
import csv
import gzip
import io
import json
import os
import pickle
import struct
import tarfile

import numpy as np
import paddle
import pytest
from PIL import Image

import test as test_script
from classification_datasets import CIFAR10_FILE, IMAGENET_MEAN, IMAGENET_STD, MNIST_FILES
from dataloader import build_dataset, input_size
from train import train
from utils.config import build_config
from utils.errors import UserError

MNIST_COUNT = 100  # Paddle's idx reader reads labels 100 at a time


def write_mnist(root, seed=0):
    """train and test splits of MNIST_COUNT 28 x 28 images each, labels 0..9 in turn."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for split, (image_name, label_name) in MNIST_FILES.items():
        images = rng.integers(0, 256, (MNIST_COUNT, 28, 28), dtype=np.uint8)
        labels = (np.arange(MNIST_COUNT) % 10).astype(np.uint8)
        with gzip.open(os.path.join(root, image_name), "wb") as stream:
            stream.write(struct.pack(">IIII", 2051, MNIST_COUNT, 28, 28) + images.tobytes())
        with gzip.open(os.path.join(root, label_name), "wb") as stream:
            stream.write(struct.pack(">II", 2049, MNIST_COUNT) + labels.tobytes())
    return root


def write_cifar10(root, count=12, seed=0):
    """cifar-10-python.tar.gz with one training batch and the test batch, `count` images each."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    with tarfile.open(os.path.join(root, CIFAR10_FILE), "w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(count)]}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root


def write_retina(root):
    """OCT2017 layout, grayscale JPEGs of different sizes."""
    counts = {"train": {"NORMAL": 3, "CNV": 2}, "test": {"NORMAL": 2, "CNV": 2, "DME": 1,
                                                        "DRUSEN": 1}}
    rng = np.random.default_rng(0)
    for split, classes in counts.items():
        for name, count in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40 + 3 * i, 50), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(os.path.join(root, split, name,
                                                               f"{name}-{i}.jpeg"))
    return root


def config_for(name, root, **values):
    return build_config(base=dict(dataset_name=name, dataset_root=str(root), **values),
                        base_origin="the test config")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_mnist(str(tmp_path_factory.mktemp("mnist")))


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
def test_mnist_one_class_protocol_and_preprocessing(mnist_root, name):
    config = config_for(name, mnist_root, normal_class=3)
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
    assert len(train_set) == MNIST_COUNT // 10 and len(test_set) == MNIST_COUNT
    assert not train_set.labels.any()  # only the normal class is trained on
    assert train_set.paths[0] == f"{name}/train/00003"
    assert test_set.labels.tolist() == [int(i % 10 != 3) for i in range(MNIST_COUNT)]
    image, label, mask, index = test_set[17]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    assert (label, index) == (1, 17) and test_set.paths[17] == f"{name}/test/00017"
    assert mask.shape == (32, 32) and not mask.any()
    raw = paddle.vision.datasets.MNIST(*[os.path.join(mnist_root, f) for f in MNIST_FILES["test"]],
                                       mode="test", download=False)[17][0]
    expected = np.asarray(raw.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    for channel in image:
        np.testing.assert_allclose(channel, expected, atol=1e-6)
    assert input_size(config) == 32


def test_cifar10_preprocessing(tmp_path):
    root = write_cifar10(str(tmp_path))
    config = config_for("cifar10", root, normal_class=4)
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
    assert train_set.paths == ["cifar10/train/00004"] and len(test_set) == 12
    image, label, mask, index = test_set[2]
    assert image.shape == (3, 224, 224) and mask.shape == (224, 224) and label == 1
    with tarfile.open(os.path.join(root, CIFAR10_FILE)) as tar:
        batch = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="bytes")
    pixels = batch[b"data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    resized = Image.fromarray(pixels).resize((256, 256), Image.LANCZOS).crop((16, 16, 240, 240))
    expected = (np.asarray(resized, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(image, expected.transpose(2, 0, 1), atol=1e-5)
    assert test_set.normalization is not None and input_size(config) == 224


def test_partial_files_name_the_missing_one(tmp_path):
    root = write_mnist(str(tmp_path))
    os.remove(os.path.join(root, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is missing"):
        build_dataset(config_for("mnist", root, normal_class=0), "test")


def test_broken_file_is_named(tmp_path):
    root = write_cifar10(str(tmp_path))
    with open(os.path.join(root, CIFAR10_FILE), "wb") as stream:
        stream.write(b"not a tar file")
    with pytest.raises(UserError, match=f"cannot read cifar10 .*{CIFAR10_FILE}"):
        build_dataset(config_for("cifar10", root, normal_class=0), "train")


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(paddle.dataset.common, "download", no_network)
    monkeypatch.setattr(paddle.dataset.common, "DATA_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"not found in .*empty and could not be downloaded"):
        build_dataset(config_for("fashionmnist", tmp_path / "empty", normal_class=0), "train")


def test_retina_folders(tmp_path):
    root = write_retina(str(tmp_path / "OCT2017"))
    config = config_for("retina", root, normal_class="NORMAL", mvtec_img_size=32)
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
    assert [os.path.basename(p) for p in train_set.paths] == [f"NORMAL-{i}.jpeg" for i in range(3)]
    assert sorted(zip(test_set.labels, (os.path.basename(os.path.dirname(p))
                                        for p in test_set.paths))) == [
        (0, "NORMAL"), (0, "NORMAL"), (1, "CNV"), (1, "CNV"), (1, "DME"), (1, "DRUSEN")]
    image, label, mask, index = test_set[0]
    assert image.shape == (3, 32, 32) and np.array_equal(image[0], image[2])
    assert 0.0 <= image.min() and image.max() <= 1.0 and not test_set.has_masks
    with pytest.raises(UserError, match="normal_class 'HEALTHY' has no folder .*CNV, NORMAL"):
        build_dataset(config_for("retina", root, normal_class="HEALTHY"), "train")


@pytest.mark.parametrize("name,value,ok", [
    ("mnist", 0, True), ("mnist", 9, True), ("fashionmnist", 10, False), ("cifar10", -1, False),
    ("mnist", "3", False), ("cifar10", "airplane", False), ("retina", "NORMAL", True),
    ("retina", 3, False)])
def test_normal_class_validation(name, value, ok):
    if ok:
        assert config_for(name, "x", normal_class=value)["normal_class"] == value
    else:
        with pytest.raises(UserError, match="normal_class"):
            config_for(name, "x", normal_class=value)


def test_mvtec_img_size_is_not_checked_where_the_protocol_fixes_the_size():
    config = config_for("mnist", "x", normal_class=1, mvtec_img_size=100)
    assert input_size(config) == 32
    with pytest.raises(UserError, match="mvtec_img_size"):
        config_for("retina", "x", normal_class="NORMAL", mvtec_img_size=100)


@pytest.mark.slow
def test_train_and_test_on_mnist_write_scores_for_the_whole_test_set(mnist_root, tmp_path):
    config = config_for("mnist", mnist_root, normal_class=3, pretrain=False, num_epochs=0,
                        batch_size=5, eval_batch_size=50, seed=0, cpu_threads=2,
                        localization_test=False, save_dir=str(tmp_path / "out"),
                        log_dir=str(tmp_path / "logs"))
    model_dir = train(config)["model_dir"]
    out = tmp_path / "results"
    test_script.main(["--model_path", os.path.join(model_dir, "final_model.pdparams"),
                      "--save_dir", str(out)])
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["num_images"] == MNIST_COUNT and metrics["num_anomalous"] == 90
    assert "loc_auc_paper" not in metrics and metrics["note"] == "localization_test is false"
    with open(out / "scores.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["path"] for row in rows[:2]] == ["mnist/test/00000", "mnist/test/00001"]
    assert sum(int(row["label"]) for row in rows) == 90
    assert os.path.isfile(out / "roc_curve.png") and os.path.isfile(out / "anomaly_maps.png")


def test_cifar10_is_read_as_paddle_reads_it_and_a_tampered_tarball_runs_nothing(tmp_path):
    """The batches of a local tarball are pickles: read with only NumPy's array builders allowed,
    in Paddle's order; a batch that would call os.system is refused in one line."""
    from paddle.vision.datasets import Cifar10

    from classification_datasets import _cifar10_split
    root = write_cifar10(str(tmp_path / "good"), count=7)
    for split in ("train", "test"):
        images, labels = _cifar10_split(root, split)
        paddles = Cifar10(data_file=os.path.join(root, CIFAR10_FILE), mode=split,
                          backend="cv2", download=False).data
        assert labels.tolist() == [int(label) for _, label in paddles]
        for image, (sample, _) in zip(images, paddles):
            np.testing.assert_array_equal(image, sample.reshape(3, 32, 32).transpose(1, 2, 0))
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad = str(tmp_path / "bad")
    os.makedirs(bad)
    with tarfile.open(os.path.join(bad, CIFAR10_FILE), "w:gz") as tar:
        payload = pickle.dumps({b"data": RunsCode(), b"labels": [0]})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError) as error:
        build_dataset(config_for("cifar10", bad, normal_class=0), "train")
    assert str(error.value).startswith(f"refusing to read {os.path.join(bad, CIFAR10_FILE)}: "
                                       "its member cifar-10-batches-py/data_batch_1 is a pickle "
                                       "that would call posix.system")
    assert not marker.exists()
