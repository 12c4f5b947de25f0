"""MNIST, Fashion-MNIST and CIFAR-10 in the one-class protocol of the paper.

Training uses the images of `normal_class` from the training split; testing uses the whole test
split, every other class being anomalous. The files are read from `dataset_root` when they are
there (the usual names below), by paddle.vision.datasets (MNIST) or here (CIFAR-10's pickled
batches, so that they cannot run code), and downloaded into Paddle's cache otherwise.
Preprocessing is the reference code's:

    MNIST, Fashion-MNIST: bilinear resize to 32 x 32, [0, 1], gray repeated to 3 channels
    CIFAR-10: resize to 256 x 256 (Lanczos, PIL's ANTIALIAS), center crop 224, ImageNet mean/std
"""
import os
import tarfile
from typing import Callable, List, Optional, Tuple

import numpy as np
import paddle
from PIL import Image
from paddle.vision.datasets import MNIST, Cifar10, FashionMNIST

from utils.errors import UserError
from utils.safe_pickle import RefusedPickle, load_arrays_only

NUM_CLASSES = 10
MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CIFAR10_FILE = "cifar-10-python.tar.gz"
IMAGENET_RGB_MEAN, IMAGENET_RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's
IMAGENET_MEAN = np.array(IMAGENET_RGB_MEAN, dtype=np.float32)
IMAGENET_STD = np.array(IMAGENET_RGB_STD, dtype=np.float32)
INPUT_SIZES = {"mnist": 32, "fashionmnist": 32, "cifar10": 224}
CIFAR10_RESIZE = 256


def mnist_transform(image: Image.Image) -> np.ndarray:
    """28 x 28 gray -> [3, 32, 32] float32 in [0, 1]."""
    image = image.convert("L").resize((32, 32), Image.BILINEAR)
    gray = np.asarray(image, dtype=np.float32) / 255.0
    return np.repeat(gray[None], 3, axis=0)


def cifar10_transform(image: Image.Image) -> np.ndarray:
    """32 x 32 RGB -> [3, 224, 224] float32, ImageNet-normalised."""
    image = image.convert("RGB").resize((CIFAR10_RESIZE, CIFAR10_RESIZE), Image.LANCZOS)
    offset = (CIFAR10_RESIZE - INPUT_SIZES["cifar10"]) // 2
    image = image.crop((offset, offset, offset + INPUT_SIZES["cifar10"],
                        offset + INPUT_SIZES["cifar10"]))
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def _local_files(root: str, names: Tuple[str, ...]) -> Optional[List[str]]:
    """The files in `root` when all are there, None when none is; an error when only some are."""
    paths = [os.path.join(root, name) for name in names]
    present = [os.path.isfile(path) for path in paths]
    if all(present):
        return paths
    if any(present):
        missing = [path for path, here in zip(paths, present) if not here]
        raise UserError(f"{missing[0]} is missing (dataset_root {root} holds only part of the "
                        f"files: {', '.join(names)})")
    return None


def _read(reader: Callable, files: Optional[List[str]], what: str, root: str):
    """Run a paddle.vision reader; a failed download or a broken file becomes one clear line."""
    try:
        return reader()
    except UserError:
        raise
    except Exception as error:  # readers and downloads raise many types (struct, gzip, HTTP)
        if files:
            raise UserError(f"cannot read {what} from {', '.join(files)} "
                            f"({type(error).__name__}: {error})") from None
        raise UserError(f"{what} not found in {root} and could not be downloaded "
                        f"({type(error).__name__}); put the files there") from None


def _mnist_split(name: str, root: str, split: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """The raw 28 x 28 images and labels of an MNIST-format split."""
    files = _local_files(root, MNIST_FILES[split])
    cls = MNIST if name == "mnist" else FashionMNIST
    args = dict(image_path=files[0], label_path=files[1]) if files else {}
    what = f"{name} ({' and '.join(MNIST_FILES[split])})"
    data = _read(lambda: cls(mode=split, download=not files, backend="cv2", **args), files,
                 what, root)
    labels = np.array([int(label[0]) for label in data.labels], dtype=np.int64)
    return [image.reshape(28, 28) for image in data.images], labels


def _cifar10_split(root: str, split: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """The raw 32 x 32 x 3 images and labels of a CIFAR-10 split."""
    files = _local_files(root, (CIFAR10_FILE,))
    if files:  # a file from anywhere: read without letting its pickles run code
        data = _read(lambda: _cifar10_batches(files[0], split), files,
                     f"cifar10 ({CIFAR10_FILE})", root)
    else:  # Paddle's download, checked against its MD5
        data = _read(lambda: Cifar10(mode=split, download=True, backend="cv2").data, files,
                     f"cifar10 ({CIFAR10_FILE})", root)
    images = [np.asarray(sample).reshape(3, 32, 32).transpose(1, 2, 0) for sample, _ in data]
    labels = np.array([int(label) for _, label in data], dtype=np.int64)
    return images, labels


def _cifar10_batches(path: str, split: str) -> List[Tuple[np.ndarray, int]]:
    """(flat image, label) of a split of CIFAR-10's python tarball, in the order Paddle's Cifar10
    reads them; its batches are pickles, unpickled with only NumPy's array builders allowed."""
    flag = "data_batch" if split == "train" else "test_batch"
    samples = []
    with tarfile.open(path) as archive:
        for name in sorted(member.name for member in archive if flag in member.name):
            try:
                batch = load_arrays_only(archive.extractfile(name))
            except RefusedPickle as error:
                raise UserError(f"refusing to read {path}: its member {name} is a pickle that "
                                f"would call {error} while loading, and CIFAR-10's batches "
                                "need nothing but NumPy arrays") from None
            batch = {key.decode("latin1") if isinstance(key, bytes) else key: value
                     for key, value in batch.items()}
            samples += list(zip(batch["data"], batch["labels"]))
    return samples


class OneClassDataset(paddle.io.Dataset):
    """Items are (image [3, S, S], label 0 normal / 1 anomalous, all-zero mask [S, S], index)."""

    normalization: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (mean, std) to undo for display
    has_masks = False

    def __init__(self, images: List[np.ndarray], classes: np.ndarray, normal_class: int,
                 transform: Callable, size: int, ids: List[str]):
        super().__init__()
        self.images, self.classes = images, classes
        self.normal_class, self.transform, self.size = normal_class, transform, size
        self.paths = ids

    @property
    def labels(self) -> np.ndarray:
        return (self.classes != self.normal_class).astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        pixels = self.images[index]
        image = Image.fromarray(np.asarray(pixels).astype(np.uint8))
        mask = np.zeros((self.size, self.size), dtype=np.float32)
        return (self.transform(image), np.int64(self.classes[index] != self.normal_class), mask,
                np.int64(index))


def one_class_dataset(name: str, root: str, split: str, normal_class: int) -> OneClassDataset:
    """The `split` of dataset `name`: only `normal_class` for 'train', everything for 'test'."""
    if name == "cifar10":
        images, classes = _cifar10_split(root, split)
        transform = cifar10_transform
    else:
        images, classes = _mnist_split(name, root, split)
        transform = mnist_transform
    positions = np.flatnonzero(classes == normal_class) if split == "train" else np.arange(
        len(classes))
    if len(positions) == 0:
        raise UserError(f"{name} {split} split in {root} has no image of class {normal_class}")
    dataset = OneClassDataset([images[i] for i in positions], classes[positions], normal_class,
                              transform, INPUT_SIZES[name],
                              [f"{name}/{split}/{i:05d}" for i in positions])
    if name == "cifar10":
        dataset.normalization = (IMAGENET_MEAN, IMAGENET_STD)
    return dataset

