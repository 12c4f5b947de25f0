"""Datasets and loaders per `dataset_name`; every loader streams fixed-size batches in order."""
import paddle

from dataset import MVTecDataset
from utils.batch_loader import make_loader

MASKS = {"mvtec": "required", "folder": "optional"}


def build_dataset(config: dict, split: str) -> paddle.io.Dataset:
    """The `split` ('train' or 'test') of the configured dataset and normal class."""
    name = config["dataset_name"]
    if name in MASKS:
        return MVTecDataset.from_folder(config["dataset_root"], config["normal_class"], split,
                                        config["mvtec_img_size"], masks=MASKS[name])
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
