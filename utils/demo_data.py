"""A small synthetic category in the MVTec AD layout, so that everything runs offline.

Normal images are a woven texture (crossed gratings with a random phase, colour jitter and noise);
test defects are scratches (thin lines) and blobs (filled ellipses of another colour), each with
its ground-truth mask. `python -m utils.demo_data --root data/demo` writes category `demo`.
"""
import argparse
import os

import cv2
import numpy as np

DEFECTS = ("blob", "scratch")


def normal_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] uint8: crossed gratings with random phase, colour and noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    period = 8.0 + rng.uniform(-0.3, 0.3)
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
    weave = (np.sin(2 * np.pi * period * x + phase_x) * np.sin(2 * np.pi * period * y + phase_y))
    base = np.array([150, 120, 90]) + rng.uniform(-10, 10, size=3)
    image = base[None, None, :] + 40 * weave[..., None] + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator):
    """The image with one defect drawn in, and its binary mask (0 / 255)."""
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    if kind == "scratch":
        start = rng.integers(size // 8, size - size // 8, size=2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.6) * size
        end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
        thickness = max(1, size // 64)
        cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in end), 255, thickness)
        colour = (235, 235, 235) if rng.random() < 0.5 else (30, 30, 30)
    else:
        centre = tuple(int(v) for v in rng.integers(size // 5, size - size // 5, size=2))
        axes = tuple(int(v) for v in rng.integers(size // 16, size // 7, size=2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        colour = tuple(int(v) for v in rng.integers(20, 90, size=3))
    defective = image.copy()
    defective[mask > 0] = colour
    return defective, mask


def _save(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, array):
        raise OSError(f"cannot write {path}")


def make_demo_category(root: str, category: str = "demo", size: int = 128, num_train: int = 40,
                       num_test_good: int = 10, num_per_defect: int = 10, seed: int = 0) -> str:
    """Write the category under root/category and return that folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, category)
    for i in range(num_train):
        _save(os.path.join(folder, "train", "good", f"{i:03d}.png"), normal_texture(rng, size))
    for i in range(num_test_good):
        _save(os.path.join(folder, "test", "good", f"{i:03d}.png"), normal_texture(rng, size))
    for kind in DEFECTS:
        for i in range(num_per_defect):
            image, mask = add_defect(normal_texture(rng, size), kind, rng)
            _save(os.path.join(folder, "test", kind, f"{i:03d}.png"), image)
            _save(os.path.join(folder, "ground_truth", kind, f"{i:03d}_mask.png"), mask)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic MVTec-style category.")
    parser.add_argument("--root", default="data/demo")
    parser.add_argument("--category", default="demo")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num_train", type=int, default=40)
    parser.add_argument("--num_test_good", type=int, default=10)
    parser.add_argument("--num_per_defect", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = make_demo_category(args.root, args.category, args.size, args.num_train,
                                args.num_test_good, args.num_per_defect, args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
