"""Reading images and masks in the MVTec AD layout, and class folders such as Retinal OCT's.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png, test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<name>_mask.png

    <root>/train/<normal_class>/*.jpeg          (OCT2017: train/NORMAL)
    <root>/test/<class>/*.jpeg                  (test/NORMAL, test/CNV, test/DME, test/DRUSEN)

Preprocessing is the reference code's: RGB, PIL bilinear resize to `img_size` x `img_size`,
scaled to [0, 1], no mean/std normalisation; masks are resized the same way (soft edges kept).
An alpha channel is dropped (as the reference's convert('RGB') does), 16-bit images are scaled to
8 bits, and an image that claims more pixels than Pillow's MAX_IMAGE_PIXELS (a decompression
bomb) is refused before it is decoded.
"""
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GOOD = "good"
MASK_SUFFIX = "_mask"

# Pillow only warns between MAX_IMAGE_PIXELS and twice that, and would then decode the image:
# open_image refuses such an image itself; the warning is not printed on the way.
warnings.simplefilter("error", Image.DecompressionBombWarning)


def open_image(path: str) -> Image.Image:
    """The image at `path`, fully decoded; an unreadable file is an error naming it."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise UserError(f"refusing to read image {path}: it claims {image.width}x"
                                f"{image.height} pixels, more than Pillow's limit of "
                                f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)")
            image.load()
            return image.copy() if image.mode != "P" else image.convert("RGBA")
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image Pillow can read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UserError(f"refusing to read image {path}: {error}") from None
    except Exception as error:  # Pillow's decoders raise many unrelated types for a broken file
        raise UserError(f"cannot read image {path}: {error or type(error).__name__}") from None


def read_image(path: str, mode: str = "RGB") -> Image.Image:
    """The image at `path` in `mode` ('RGB' or 'L'), through RGB when Pillow has no direct
    conversion (e.g. LAB to L); a colour mode it cannot convert at all is an error naming the
    file."""
    image = _to_8bit(open_image(path))
    try:
        return image.convert(mode)
    except ValueError:
        pass
    try:
        return image.convert("RGB").convert(mode)
    except ValueError as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale scaled to 8 bits (Pillow's convert would clip, not scale)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image


def load_image(path: str, img_size: int) -> np.ndarray:
    """[3, img_size, img_size] float32 in [0, 1]."""
    image = read_image(path, "RGB").resize((img_size, img_size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def load_mask(path: str, img_size: int, image_path: Optional[str] = None) -> np.ndarray:
    """[img_size, img_size] float32 in [0, 1]. A mask of another size than its image
    (`image_path`) is resized like the image when its aspect ratio is the image's; another
    aspect ratio is an error naming both (the mask cannot be this image's)."""
    mask = read_image(path, "L")
    if image_path is not None:
        _check_same_shape(path, mask.size, image_path)
    mask = mask.resize((img_size, img_size), Image.BILINEAR)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _check_same_shape(mask_path: str, mask_size: Tuple[int, int], image_path: str) -> None:
    try:
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
    except Exception:  # the image's own read reports it
        return
    mask_width, mask_height = mask_size
    # a mask scaled by any factor and rounded differs from the image's shape by under a pixel
    if abs(mask_width * height - mask_height * width) > max(width, height):
        raise UserError(f"mask {mask_path} is {mask_width}x{mask_height} pixels but its image "
                        f"{image_path} is {width}x{height}: another aspect ratio, so it cannot "
                        "be that image's mask")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # 0 normal, 1 anomalous
    defect_type: str
    mask_path: Optional[str] = None


def category_dir(root: str, category: str) -> str:
    if not os.path.isdir(root):
        raise UserError(f"dataset root not found: {root}")
    folder = os.path.join(root, str(category))
    if not os.path.isdir(folder):
        found = sorted(name for name in os.listdir(root)
                       if os.path.isdir(os.path.join(root, name)))
        raise UserError(f"category '{category}' not found in {root}; it holds: "
                        + (", ".join(found) if found else "nothing"))
    return folder


def walk_folders(top: str, seen: Optional[Dict[tuple, str]] = None) -> List[Tuple[str, list]]:
    """(folder, sorted file names) for `top` and every folder under it, symbolic links followed,
    in path order. A folder reached twice (a link that loops back, or two links to one folder)
    is an error naming both paths; so is a folder that cannot be listed."""
    seen = {} if seen is None else seen
    found = []

    def unreadable(error: OSError):
        raise UserError(f"cannot read folder {error.filename}: {error.strerror}")

    for folder, subfolders, names in os.walk(top, followlinks=True, onerror=unreadable):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        identity = (os.stat(folder).st_dev, os.stat(folder).st_ino)
        if identity in seen:
            raise UserError(f"{folder} is {seen[identity]} again: a symbolic link loops back or "
                            "links one folder twice (remove the link)")
        seen[identity] = folder
        found.append((folder, sorted(names)))
    return sorted(found)


@dataclass
class FolderScan:
    """A split's class folders (sorted, hidden ones left out) and their image files in order."""
    classes: List[str]
    samples: List[Tuple[str, int]]  # (path, index into classes)


def _image_folders(split_dir: str) -> FolderScan:
    """Paddle's DatasetFolder order (classes are the sorted sub-folders, files sorted by path,
    non-images skipped), with symbolic link loops refused."""
    if not os.path.isdir(split_dir):
        raise UserError(f"folder not found: {split_dir}")
    classes = sorted(entry.name for entry in os.scandir(split_dir)
                     if entry.is_dir() and not entry.name.startswith("."))
    samples, seen = [], {}
    for index, name in enumerate(classes):
        for folder, names in walk_folders(os.path.join(split_dir, name), seen):
            samples += [(os.path.join(folder, file), index) for file in names
                        if file.lower().endswith(IMG_EXTENSIONS)]
    if not samples:
        raise UserError(f"no images in the sub-folders of {split_dir}")
    return FolderScan(classes, samples)


def _check_no_empty_class(scan: FolderScan, split_dir: str) -> None:
    """Every class folder of a test split holds images (an empty one is a broken copy)."""
    counts = np.bincount([target for _, target in scan.samples], minlength=len(scan.classes))
    for name, count in zip(scan.classes, counts):
        if count == 0:
            raise UserError(f"no images in {os.path.join(split_dir, name)}: put its images "
                            "back, or remove the empty folder")


def _find_mask(ground_truth: str, defect: str, image_path: str) -> Optional[str]:
    stem = os.path.splitext(os.path.basename(image_path))[0] + MASK_SUFFIX
    for extension in IMG_EXTENSIONS:
        candidate = os.path.join(ground_truth, defect, stem + extension)
        if os.path.isfile(candidate):
            return candidate
    return None


def scan_split(root: str, category: str, split: str, masks: str = "required") -> List[Sample]:
    """The samples of `split` ('train' or 'test') in file-name order, each defect image paired
    with its mask by name. `masks`: 'required' (MVTec AD), 'optional' or 'none'."""
    folder = category_dir(root, category)
    scan = _image_folders(os.path.join(folder, split))
    if split == "train":
        if GOOD not in scan.classes:
            raise UserError(f"{os.path.join(folder, 'train', GOOD)} not found")
        if not any(scan.classes[target] == GOOD for _, target in scan.samples):
            raise UserError(f"no images in {os.path.join(folder, 'train', GOOD)}")
    ground_truth = os.path.join(folder, "ground_truth")
    samples = []
    for path, target in scan.samples:
        defect = scan.classes[target]
        if split == "train" and defect != GOOD:
            continue
        mask_path = None
        if defect != GOOD and masks != "none":
            mask_path = _find_mask(ground_truth, defect, path)
            if mask_path is None and masks == "required":
                expected = os.path.join(ground_truth, defect,
                                        os.path.splitext(os.path.basename(path))[0]
                                        + MASK_SUFFIX + ".png")
                raise UserError(f"test image {path} has no mask (expected {expected})")
        samples.append(Sample(path, int(defect != GOOD), defect, mask_path))
    if split == "test" and masks == "required":
        _check_orphan_masks(ground_truth, samples, os.path.join(folder, "test"))
    if split == "test":  # (after the masks: a mask names the image that is missing)
        _check_no_empty_class(scan, os.path.join(folder, split))
    return samples


def _check_orphan_masks(ground_truth: str, samples: List[Sample], test_dir: str) -> None:
    paired = {sample.mask_path for sample in samples}
    if not os.path.isdir(ground_truth):
        return
    for defect in sorted(os.listdir(ground_truth)):
        defect_dir = os.path.join(ground_truth, defect)
        if not os.path.isdir(defect_dir):
            continue
        for name in sorted(os.listdir(defect_dir)):
            path = os.path.join(defect_dir, name)
            if name.lower().endswith(IMG_EXTENSIONS) and path not in paired:
                stem = os.path.splitext(name)[0]
                image_stem = stem[:-len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem
                raise UserError(f"mask {path} has no test image (expected "
                                f"{os.path.join(test_dir, defect, image_stem)}.png)")


def scan_class_folders(root: str, split: str, normal_class: str) -> List[Sample]:
    """Images of <root>/<split>/<class>/ in file-name order, label 1 unless the class is
    `normal_class`; the training split keeps the normal class only. No masks."""
    if not os.path.isdir(root):
        raise UserError(f"dataset root not found: {root}")
    scan = _image_folders(os.path.join(root, split))
    if split == "test":
        _check_no_empty_class(scan, os.path.join(root, split))
    if normal_class not in scan.classes:
        raise UserError(f"normal_class '{normal_class}' has no folder in "
                        f"{os.path.join(root, split)}; it holds: " + ", ".join(scan.classes))
    samples = []
    for path, target in scan.samples:
        name = scan.classes[target]
        if split == "train" and name != normal_class:
            continue
        samples.append(Sample(path, int(name != normal_class), name))
    if not any(sample.label == 0 for sample in samples):
        raise UserError(f"no images in {os.path.join(root, split, normal_class)}")
    return samples


class MVTecDataset(paddle.io.Dataset):
    """Items are (image [3, S, S], label, mask [S, S], index); good images get an all-zero mask."""

    def __init__(self, samples: List[Sample], img_size: int):
        super().__init__()
        self.samples = samples
        self.img_size = img_size

    @classmethod
    def from_folder(cls, root: str, category: str, split: str, img_size: int,
                    masks: str = "required") -> "MVTecDataset":
        return cls(scan_split(root, category, split, masks), img_size)

    @property
    def has_masks(self) -> bool:
        anomalous = [sample for sample in self.samples if sample.label == 1]
        return bool(anomalous) and all(sample.mask_path for sample in anomalous)

    @property
    def labels(self) -> np.ndarray:
        return np.array([sample.label for sample in self.samples], dtype=np.int64)

    @property
    def paths(self) -> List[str]:
        return [sample.path for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = load_image(sample.path, self.img_size)
        if sample.mask_path:
            mask = load_mask(sample.mask_path, self.img_size, sample.path)
        else:
            mask = np.zeros((self.img_size, self.img_size), dtype=np.float32)
        return image, np.int64(sample.label), mask, np.int64(index)
