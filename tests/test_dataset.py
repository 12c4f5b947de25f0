"""Reading the MVTec AD layout: pairing masks by name, labels, image modes, streaming loaders,
and hostile or odd files."""
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import make_config
from dataloader import build_test_loader
from dataset import MVTecDataset, load_image, load_mask, scan_split
from utils.errors import UserError

S = 16


def save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def coded_image(code):
    """A small RGB image whose red value is 10 * code (code < 25): its content says which file
    it is."""
    image = np.zeros((12, 12, 3), np.uint8)
    image[..., 0] = 10 * (code % 25)
    image[..., 1] = 7
    return image


def coded_mask(code, size=12):
    """A mask whose value is 10 * code + 5 everywhere."""
    return np.full((size, size), 10 * (code % 25) + 5, np.uint8)


def make_category(root, defects, good=("000.png", "001.png"), masks=True, skip_mask=()):
    """root/cat: train/good, test/good and test/<defect>; defects maps a folder to file names.
    Masks are written in reverse name order. Returns {path: code} of the test images."""
    folder = os.path.join(root, "cat")
    save(os.path.join(folder, "train", "good", "000.png"), coded_image(1))
    codes, code = {}, 1
    for name in good:
        path = os.path.join(folder, "test", "good", name)
        save(path, coded_image(code))
        codes[path], code = code, code + 1
    for defect, names in defects.items():
        for name in names:
            path = os.path.join(folder, "test", defect, name)
            save(path, coded_image(code))
            codes[path], code = code, code + 1
        if masks:
            for name in reversed(names):
                if name in skip_mask:
                    continue
                stem = os.path.splitext(name)[0]
                save(os.path.join(folder, "ground_truth", defect, stem + "_mask.png"),
                     coded_mask(codes[os.path.join(folder, "test", defect, name)]))
    return codes


def test_masks_are_paired_by_file_name(tmp_path):
    root = str(tmp_path)
    # sorted(['1.png', '10.png', '2.png']) != the order of sorted(['1_mask', '10_mask', '2_mask'])
    codes = make_category(root, {"crack": ["010.png", "000.png", "001.png"],
                                 "hole": ["2.png", "10.png", "1.png"]})
    assert sorted(["1.png", "10.png", "2.png"]) == ["1.png", "10.png", "2.png"]
    assert sorted(["1_mask.png", "10_mask.png", "2_mask.png"]) == [
        "10_mask.png", "1_mask.png", "2_mask.png"]
    dataset = MVTecDataset.from_folder(root, "cat", "test", S)
    assert len(dataset) == 8
    anomalous = 0
    for index in range(len(dataset)):
        image, label, mask, item_index = dataset[index]
        sample = dataset.samples[index]
        code = codes[sample.path]
        assert item_index == index
        np.testing.assert_allclose(image[0], 10 * code / 255.0, atol=1e-6)
        if label == 1:
            anomalous += 1
            name = os.path.splitext(os.path.basename(sample.path))[0]
            assert os.path.basename(sample.mask_path) == name + "_mask.png"
            assert os.path.basename(os.path.dirname(sample.mask_path)) == sample.defect_type
            np.testing.assert_allclose(mask, (10 * code + 5) / 255.0, atol=1e-6)
        else:
            assert sample.mask_path is None and (mask == 0).all()
    assert anomalous == 6
    # samples come in file-name order within each folder
    for defect in ("crack", "hole"):
        paths = [s.path for s in dataset.samples if s.defect_type == defect]
        assert paths == sorted(paths)


def test_defect_image_without_mask_names_both_paths(tmp_path):
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png", "001.png"]}, skip_mask=("001.png",))
    with pytest.raises(UserError) as error:
        scan_split(root, "cat", "test")
    message = str(error.value)
    assert os.path.join(root, "cat", "test", "crack", "001.png") in message
    assert os.path.join(root, "cat", "ground_truth", "crack", "001_mask.png") in message


def test_mask_without_image_names_both_paths(tmp_path):
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png", "001.png"]})
    orphan = os.path.join(root, "cat", "ground_truth", "crack", "007_mask.png")
    save(orphan, coded_mask(3))
    with pytest.raises(UserError) as error:
        scan_split(root, "cat", "test")
    message = str(error.value)
    assert orphan in message
    assert os.path.join(root, "cat", "test", "crack", "007") in message


def test_good_is_found_by_name_and_labels_follow_it(tmp_path):
    root = str(tmp_path)
    make_category(root, {"aaa": ["000.png"], "zzz": ["000.png", "001.png"]})
    dataset = MVTecDataset.from_folder(root, "cat", "test", S)
    folders = [os.path.basename(os.path.dirname(path)) for path in dataset.paths]
    assert sorted(folders) == ["aaa", "good", "good", "zzz", "zzz"]
    np.testing.assert_array_equal(dataset.labels,
                                  [int(folder != "good") for folder in folders])
    assert dataset.labels.dtype == np.int64
    assert [int(dataset[i][1]) for i in range(len(dataset))] == list(dataset.labels)
    train = scan_split(root, "cat", "train")
    assert [s.label for s in train] == [0]


def test_non_image_files_are_ignored(tmp_path):
    root = str(tmp_path)
    make_category(root, {"aaa": ["000.png"]})
    for relative in ("train/good/notes.txt", "test/good/Thumbs.db", "test/aaa/.DS_Store",
                     "ground_truth/aaa/readme.md", "test/README"):
        path = os.path.join(root, "cat", relative)
        with open(path, "w") as stream:
            stream.write("not an image")
    assert len(scan_split(root, "cat", "test")) == 3
    assert len(scan_split(root, "cat", "train")) == 1


def test_load_image_equals_pil_bilinear_resize(tmp_path, rng):
    path = str(tmp_path / "rgb.png")
    save(path, rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    expected = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR),
                          dtype=np.float32) / np.float32(255.0)
    image = load_image(path, 32)
    assert image.dtype == np.float32 and image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image, expected.transpose(2, 0, 1))


def test_grayscale_rgba_and_palette_images_load_as_rgb(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)], axis=2)
    save(str(tmp_path / "l.png"), gray)
    save(str(tmp_path / "rgba.png"), rgba)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(
        str(tmp_path / "p.png"))
    assert Image.open(str(tmp_path / "p.png")).mode == "P"
    expected = {
        "l.png": np.repeat(gray[..., None], 3, axis=2),
        "rgba.png": rgb,
        "p.png": np.asarray(Image.open(str(tmp_path / "p.png")).convert("RGB")),
    }
    for name, pixels in expected.items():
        image = load_image(str(tmp_path / name), S)
        assert image.shape == (3, S, S) and image.dtype == np.float32, name
        assert 0.0 <= image.min() and image.max() <= 1.0, name
        reference = np.asarray(Image.fromarray(pixels).resize((S, S), Image.BILINEAR),
                               dtype=np.float32) / np.float32(255.0)
        np.testing.assert_array_equal(image, reference.transpose(2, 0, 1), err_msg=name)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = str(tmp_path / "ramp16.png")
    cv2.imwrite(path, ramp)
    assert Image.open(path).mode == "I;16"
    image = load_image(path, 32)
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_allclose(image[0], ramp / 65535.0, atol=1.0 / 255)
    assert (image == 1.0).mean() < 0.01  # a clipping conversion saturates almost everything
    dark = np.full((32, 32), 300, np.uint16)  # very dark in 16 bits, bright if clipped to 8
    cv2.imwrite(str(tmp_path / "dark16.png"), dark)
    np.testing.assert_allclose(load_image(str(tmp_path / "dark16.png"), S), 0.0, atol=2.0 / 255)
    mask = load_mask(path, 32)
    assert mask.shape == (32, 32)
    np.testing.assert_allclose(mask, ramp / 65535.0, atol=1.0 / 255)


def test_16_bit_rgb_images_load(tmp_path, rng):
    rgb16 = rng.integers(0, 65536, (20, 20, 3)).astype(np.uint16)
    path = str(tmp_path / "rgb16.png")
    cv2.imwrite(path, rgb16[..., ::-1])  # OpenCV writes BGR
    image = load_image(path, 20)
    np.testing.assert_allclose(image, (rgb16 / 65535.0).transpose(2, 0, 1), atol=1.0 / 255)


def test_mask_of_another_size_is_resized(tmp_path, rng):
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png"]})
    mask = (rng.random((20, 20)) > 0.5).astype(np.uint8) * 255
    mask_path = os.path.join(root, "cat", "ground_truth", "crack", "000_mask.png")
    save(mask_path, mask)
    dataset = MVTecDataset.from_folder(root, "cat", "test", S)
    (index,) = [i for i, sample in enumerate(dataset.samples) if sample.label == 1]
    _, label, loaded, _ = dataset[index]
    assert label == 1 and loaded.shape == (S, S) and loaded.dtype == np.float32
    expected = np.asarray(Image.fromarray(mask).resize((S, S), Image.BILINEAR),
                          dtype=np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(loaded, expected)
    assert 0 < loaded.mean() < 1 and ((loaded > 0) & (loaded < 1)).any()  # soft edges kept


@pytest.mark.parametrize("eval_batch_size,sizes", [(5, [5, 5, 2]), (None, [4, 4, 4])])
def test_test_loader_streams_batches(demo_root, eval_batch_size, sizes):
    config = make_config(demo_root, eval_batch_size=eval_batch_size, batch_size=4)
    loader = build_test_loader(config)
    seen, indices = [], []
    for images, labels, masks, batch_indices in loader:
        assert list(images.shape[1:]) == [3, 64, 64] and list(masks.shape[1:]) == [64, 64]
        assert images.shape[0] == labels.shape[0] == masks.shape[0]
        seen.append(images.shape[0])
        indices += batch_indices.numpy().tolist()
    assert seen == sizes
    assert indices == list(range(12))  # in order, every image once
    folders = [os.path.basename(os.path.dirname(path)) for path in loader.dataset.paths]
    assert sorted(folders) == ["blob"] * 4 + ["good"] * 4 + ["scratch"] * 4
    np.testing.assert_array_equal(loader.dataset.labels, [int(f != "good") for f in folders])


def test_test_loader_reads_images_lazily(tmp_path, monkeypatch):
    """The loader reads images as batches are asked for, not the whole test set up front."""
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png"]}, good=[f"{i:03d}.png" for i in range(80)])
    calls = []
    read = MVTecDataset.__getitem__
    monkeypatch.setattr(MVTecDataset, "__getitem__",
                        lambda self, index: calls.append(index) or read(self, index))
    config = make_config(root, normal_class="cat", mvtec_img_size=32, eval_batch_size=2)
    batches = iter(build_test_loader(config))
    first = next(batches)
    assert first[0].shape[0] == 2
    assert 2 <= len(calls) < 81 / 2
    assert sum(batch[0].shape[0] for batch in batches) == 79
    assert sorted(calls) == list(range(81))


# ---- hostile or odd files ---------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height RGB pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [100_000, 10_000])  # beyond twice Pillow's limit, and between
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, side):
    """Pillow itself only warns between MAX_IMAGE_PIXELS and twice that, and then decodes."""
    path = str(tmp_path / "bomb.png")
    with open(path, "wb") as stream:
        stream.write(png_claiming(side, side))
    assert side * side > Image.MAX_IMAGE_PIXELS
    for load in (load_image, load_mask):
        with pytest.raises(UserError) as error:
            load(path, S)
        message = str(error.value)
        assert message.startswith(f"refusing to read image {path}: ") and \
            "decompression bomb" in message and str(side) in message


def test_a_mask_of_another_aspect_ratio_than_its_image_is_refused(tmp_path, rng):
    """Half the size (same shape) is resized like the image; another shape cannot be its mask."""
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png"]}, masks=False)  # the images are 12 x 12
    image = os.path.join(root, "cat", "test", "crack", "000.png")
    mask_path = os.path.join(root, "cat", "ground_truth", "crack", "000_mask.png")
    for shape, accepted in [((6, 6), True), ((24, 25), True), ((12, 30), False),
                            ((6, 12), False)]:
        save(mask_path, np.full(shape, 255, np.uint8))
        dataset = MVTecDataset.from_folder(root, "cat", "test", S)
        (index,) = [i for i, sample in enumerate(dataset.samples) if sample.label == 1]
        if accepted:
            assert dataset[index][2].min() == 1.0
            continue
        with pytest.raises(UserError) as error:
            dataset[index]
        assert str(error.value) == (f"mask {mask_path} is {shape[1]}x{shape[0]} pixels but its "
                                    f"image {image} is 12x12: another aspect ratio, so it "
                                    "cannot be that image's mask")


@pytest.mark.parametrize("masks", ["required", "optional"])
def test_a_test_folder_without_images_is_named(tmp_path, masks):
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png"]}, masks=masks == "required")
    empty = os.path.join(root, "cat", "test", "hole")
    os.makedirs(empty)
    open(os.path.join(empty, "notes.txt"), "w").write("no images")
    with pytest.raises(UserError) as error:
        scan_split(root, "cat", "test", masks)
    assert str(error.value) == (f"no images in {empty}: put its images back, or remove the "
                                "empty folder")
    assert scan_split(root, "cat", "train", masks)  # other splits do not care


def test_hidden_folders_are_not_classes(tmp_path):
    """A notebook's .ipynb_checkpoints in test/ is no defect type."""
    root = str(tmp_path)
    codes = make_category(root, {"crack": ["000.png"]})
    hidden = os.path.join(root, "cat", "test", ".ipynb_checkpoints")
    save(os.path.join(hidden, "000-checkpoint.png"), coded_image(3))
    samples = scan_split(root, "cat", "test")
    assert sorted(sample.path for sample in samples) == sorted(codes)


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    root = str(tmp_path)
    make_category(root, {"crack": ["000.png"]})
    folder = os.path.join(root, "cat", "test", "good")
    odd = os.path.join(folder, os.fsdecode(b"caf\xe9-\xff.png"))
    os.rename(os.path.join(folder, "000.png"), odd)
    dataset = MVTecDataset.from_folder(root, "cat", "test", S)
    assert odd in dataset.paths
    image = dataset[dataset.paths.index(odd)][0]
    assert image.shape == (3, S, S) and image.max() > 0


def test_a_symbolic_link_loop_is_named_and_linked_folders_are_read(tmp_path):
    root = str(tmp_path / "data")
    codes = make_category(root, {"crack": ["000.png", "001.png"]})
    elsewhere = str(tmp_path / "elsewhere" / "good")
    os.makedirs(os.path.dirname(elsewhere))
    os.rename(os.path.join(root, "cat", "test", "good"), elsewhere)
    os.symlink(elsewhere, os.path.join(root, "cat", "test", "good"))  # data on another disk
    assert sorted(sample.path for sample in scan_split(root, "cat", "test")) == sorted(codes)
    loop = os.path.join(root, "cat", "test", "crack", "again")
    os.symlink(os.path.join("..", "..", "test"), loop)  # test/crack/again -> test
    with pytest.raises(UserError) as error:
        scan_split(root, "cat", "test")
    message = str(error.value)
    assert "a symbolic link loops back or links one folder twice" in message
    assert message.startswith(os.path.join(loop, "crack") + " is ")


def test_the_scan_lists_files_in_paddles_datasetfolder_order(tmp_path):
    """Sub-folders whose names sort differently from the walk ('a-c' before 'a/b')."""
    from paddle.vision.datasets import DatasetFolder
    from dataset import IMG_EXTENSIONS, _image_folders
    split = tmp_path / "test"
    for name in ["good/b.png", "good/a/b.png", "good/a-c.png", "good/a-c/x.png", "good/A.png",
                 "crack/z.jpg", "crack/y.PNG", "zz/a/b/c.png"]:
        save(str(split / name), coded_image(1))
    (split / "crack" / "notes.txt").write_text("not an image")
    paddle_scan = DatasetFolder(str(split), extensions=IMG_EXTENSIONS)
    ours = _image_folders(str(split))
    assert ours.classes == paddle_scan.classes
    assert ours.samples == [tuple(sample) for sample in paddle_scan.samples]
