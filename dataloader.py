"""Datasets and loaders per `dataset_name`; every loader streams fixed-size batches in order."""
import paddle

from classification_datasets import INPUT_SIZES, one_class_dataset
from dataset import MVTecDataset, scan_class_folders
from utils.batch_loader import make_loader

MASKS = {"mvtec": "required", "folder": "optional"}


def input_size(config: dict) -> int:
    """The side of the square network input: fixed by the protocol for MNIST, Fashion-MNIST and
    CIFAR-10, `mvtec_img_size` for the folder datasets (mvtec, folder, retina)."""
    return INPUT_SIZES.get(config["dataset_name"], config["mvtec_img_size"])


def build_dataset(config: dict, split: str) -> paddle.io.Dataset:
    """The `split` ('train' or 'test') of the configured dataset and normal class."""
    name, root = config["dataset_name"], config["dataset_root"]
    if name in MASKS:
        return MVTecDataset.from_folder(root, config["normal_class"], split,
                                        config["mvtec_img_size"], masks=MASKS[name])
    if name == "retina":
        return MVTecDataset(scan_class_folders(root, split, config["normal_class"]),
                            config["mvtec_img_size"])
    if name in INPUT_SIZES:
        return one_class_dataset(name, root, split, config["normal_class"])
    raise NotImplementedError(f"dataset_name {name!r}")


def eval_batch_size(config: dict) -> int:
    return config["eval_batch_size"] or config["batch_size"]


def build_loader(dataset: paddle.io.Dataset, batch_size: int, num_workers: int = 0,
                 shuffle: bool = False):
    """Batches [images, labels, masks, indices]; an unreadable file stops it with its error."""
    return make_loader(dataset, batch_size, num_workers, shuffle)


def build_test_loader(config: dict, dataset=None) -> paddle.io.DataLoader:
    dataset = dataset if dataset is not None else build_dataset(config, "test")
    return build_loader(dataset, eval_batch_size(config), config["num_workers"])
