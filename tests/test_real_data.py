"""Quality on real data with the real ImageNet expert: a Fashion-MNIST class and magnetic_tile,
trained briefly, must reach ROC-AUC floors set from measurements (docs/real_expert.md).

A preprocessing that no longer matches what the expert was trained on still trains and scores,
only worse, so the tests on synthetic data cannot see it; these can. Each floor sits below the
value measured with this code by a margin and above what the broken preprocessings measured.
The tests skip, naming what is missing, without the real expert (../shared/weights, or Keras'
.h5 in Paddle's cache), Fashion-MNIST (`apt-get install dataset-fashion-mnist`) or
../shared/data.
"""
import gzip
import importlib.util
import os
import struct

import cv2
import numpy as np
import pytest

from classification_datasets import MNIST_FILES
from conftest import ROOT
from dataset import load_image
from test import run_test
from train import train
from utils.config import build_config
from vgg import KERAS_URL, WEIGHTS_HOME

SHARED = os.path.join(ROOT, "..", "shared")
EXPERTS = (os.path.join(SHARED, "weights", "vgg16_imagenet_keras.pdparams"),
           os.path.join(WEIGHTS_HOME, os.path.basename(KERAS_URL)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
MAGNETIC_TILE = os.path.join(SHARED, "data", "magnetic_tile")
COLOUR_PHOTOS = os.path.join(SHARED, "data", "mvtec_samples")

# Fashion-MNIST: the reference protocol (32 px, lamda 0.01, batch 64) on a fixed subset, briefly
FASHION_CLASS = 0
FASHION_TRAIN, FASHION_TEST = 1000, 1000  # multiples of 100 (Paddle reads labels by the hundred)
FASHION_EPOCHS = 5
FASHION_FLOOR = 0.80
# magnetic_tile: the MVTec AD protocol (128 px, lamda 0.5, batch 64), all 80 + 60 images, briefly
TILE_EPOCHS = 4
TILE_FLOOR = 0.60


@pytest.fixture(scope="module")
def real_expert() -> str:
    """The real ImageNet VGG16 expert's file, or a skip saying where it is looked for."""
    for path in EXPERTS:
        if os.path.isfile(path) and (path.endswith(".pdparams") or
                                     importlib.util.find_spec("h5py") is not None):
            return path
    pytest.skip("no real ImageNet expert: " + " or ".join(EXPERTS) + " is needed")


def read_idx(path: str) -> np.ndarray:
    """An idx array (the MNIST file format: magic, dimensions, then uint8 values)."""
    with gzip.open(path) as stream:
        data = stream.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
                     + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_subset(tmp_path_factory) -> str:
    """Fashion-MNIST files holding the first FASHION_TRAIN training images of FASHION_CLASS and
    the first FASHION_TEST test images (all classes), in file order."""
    names = [name for split in ("train", "test") for name in MNIST_FILES[split]]
    missing = [name for name in names if not os.path.isfile(os.path.join(FASHION_MNIST, name))]
    if missing:
        pytest.skip(f"Fashion-MNIST not found ({os.path.join(FASHION_MNIST, missing[0])}): "
                    "apt-get install dataset-fashion-mnist")
    root = str(tmp_path_factory.mktemp("fashion-mnist"))
    (train_images, train_labels), (test_images, test_labels) = [
        [read_idx(os.path.join(FASHION_MNIST, name)) for name in MNIST_FILES[split]]
        for split in ("train", "test")]
    normal = np.flatnonzero(train_labels == FASHION_CLASS)[:FASHION_TRAIN]
    for name, array in zip(names, (train_images[normal], train_labels[normal],
                                   test_images[:FASHION_TEST], test_labels[:FASHION_TEST])):
        write_idx(os.path.join(root, name), array)
    return root


def trained_auroc(expert: str, tmp_path, **values) -> float:
    """Train against `expert` with `values` (seed 0) and return test.py's image ROC-AUC of the
    final model."""
    config = build_config(base=dict(pretrain=True, vgg_weights=expert, batch_size=64,
                                    seed=0, localization_test=False,
                                    save_dir=str(tmp_path / "models"),
                                    log_dir=str(tmp_path / "logs"), **values),
                          base_origin="the test config")
    model_dir = train(config)["model_dir"]
    result = run_test(config, os.path.join(model_dir, "final_model.pdparams"),
                      log=lambda *args: None, pictures=False)
    return result["summary"]["image_auroc"]


@pytest.mark.slow
def test_a_fashion_mnist_class_reaches_its_floor(real_expert, fashion_subset, tmp_path):
    auroc = trained_auroc(real_expert, tmp_path, dataset_name="fashionmnist",
                          dataset_root=fashion_subset, normal_class=FASHION_CLASS, lamda=0.01,
                          num_epochs=FASHION_EPOCHS, eval_interval=FASHION_EPOCHS)
    print(f"Fashion-MNIST class {FASHION_CLASS}: image ROC-AUC {auroc:.4f}")
    assert auroc >= FASHION_FLOOR, f"image ROC-AUC {auroc:.4f} < {FASHION_FLOOR}"


@pytest.mark.slow
def test_magnetic_tile_reaches_its_floor(real_expert, tmp_path):
    if not os.path.isdir(MAGNETIC_TILE):
        pytest.skip(f"{MAGNETIC_TILE} is absent")
    auroc = trained_auroc(real_expert, tmp_path, dataset_name="folder",
                          dataset_root=os.path.dirname(MAGNETIC_TILE),
                          normal_class="magnetic_tile", mvtec_img_size=128, lamda=0.5,
                          num_epochs=TILE_EPOCHS, eval_interval=TILE_EPOCHS)
    print(f"magnetic_tile: image ROC-AUC {auroc:.4f}")
    assert auroc >= TILE_FLOOR, f"image ROC-AUC {auroc:.4f} < {TILE_FLOOR}"


@pytest.mark.parametrize("name", ["capsule_test_defect.png", "carpet_test_defect.png"])
def test_real_colour_photos_reach_the_expert_in_rgb_order(name):
    """Both data sets above are gray, where a swapped colour order changes nothing; on real colour
    photos the images must be what OpenCV reads, turned from its BGR to RGB, in [0, 1]."""
    path = os.path.join(COLOUR_PHOTOS, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is absent")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    assert expected.shape[0] == expected.shape[1]  # at its own size, nothing is resized
    np.testing.assert_array_equal(load_image(path, expected.shape[0]),
                                  expected.transpose(2, 0, 1))
