"""Finding the images to run on (one file, or every image file under a folder), naming the
pictures written for them, and checking that a model reads images the way they are read here."""
import os
from collections import Counter
from typing import Iterator, List, Optional, Sequence

from dataset import IMG_EXTENSIONS
from utils.errors import UserError

# The datasets whose preprocessing is dataset.load_image (RGB, resize to mvtec_img_size, [0, 1]).
FOLDER_DATASETS = ("mvtec", "folder", "retina")


def check_folder_preprocessing(config: dict, model_path: str) -> None:
    """A model trained on MNIST, Fashion-MNIST or CIFAR-10 expects that dataset's own input
    (size, crop, normalisation): refuse it rather than feed it wrongly prepared images."""
    if config["dataset_name"] not in FOLDER_DATASETS:
        raise UserError(f"{model_path} was trained on dataset_name {config['dataset_name']}; "
                        "prediction and export read images as the folder datasets do ("
                        + ", ".join(FOLDER_DATASETS) + "): RGB, resized to mvtec_img_size, "
                        "in [0, 1]")


def is_image_file(name: str) -> bool:
    """True for the extensions the datasets read (case-insensitive)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(path: str, exclude: Optional[str] = None) -> List[str]:
    """`path` itself when it is a file; else the image files under the folder, sorted, sub-folders
    included, hidden folders and anything under `exclude` (e.g. the output folder) left out."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"image path not found: {path}")
    skip = os.path.realpath(exclude) if exclude else None
    found = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and os.path.realpath(os.path.join(folder, name)) != skip)
        found += [os.path.join(folder, name) for name in sorted(names) if is_image_file(name)]
    if not found:
        raise UserError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in {path}")
    return found


def picture_names(paths: Sequence[str], root: str) -> List[str]:
    """One PNG name per image, relative to `root` (sub-folders kept): `a/b.jpg` -> `a/b.png`;
    `b.jpg` and `b.png` in one folder keep their extension (`b.jpg.png`) so none collide."""
    relative = [os.path.basename(p) if os.path.isfile(root) else os.path.relpath(p, root)
                for p in paths]
    stems = [os.path.splitext(name)[0] for name in relative]
    clashing = {stem for stem, count in Counter(stems).items() if count > 1}
    return [(name if stem in clashing else stem) + ".png" for name, stem in zip(relative, stems)]


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
