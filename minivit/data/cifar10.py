"""CIFAR-10 as uint8 tensors, from an image folder, torchvision's files or its download.

CIFAR-10 is found, in this order:

1. an image-folder tree ``<data>/cifar10/<split>/<class>/*.jpg|png`` (how machines
   without internet get it);
2. torchvision's pickled copy ``<data>/cifar-10-batches-py`` (from an earlier download);
3. torchvision's download into ``<data>`` (needs the network).

The images are decoded once and cached as uint8 arrays in ``<data>/cache``, so a
second load of all 60,000 images takes about a second.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minivit.runtime import data_dir

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")


@dataclass
class ImageSet:
    """A labelled image set held in memory: ``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int, seed: int = 0) -> "ImageSet":
        """A class-balanced random subset of ``count`` images (the same for the same seed)."""
        if count >= len(self):
            return self
        generator = torch.Generator().manual_seed(seed)
        per_class = [
            idx[torch.randperm(len(idx), generator=generator)]
            for idx in (torch.nonzero(self.labels == c).flatten() for c in range(len(self.classes)))
        ]
        # interleave the classes so that any prefix stays balanced
        order = torch.stack([p[: count // len(per_class) + 1] for p in per_class], dim=1).flatten()[:count]
        return ImageSet(self.images[order], self.labels[order], self.classes)


def load_image_folder(root: str | Path, classes: tuple[str, ...] | None = None, workers: int = 4) -> ImageSet:
    """Decode an image-folder tree ``root/<class>/*.jpg|png`` into an :class:`ImageSet`.

    Class folders are taken in ``classes`` order (default: sorted folder names);
    all images must have the same size.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = tuple(classes) if classes else tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} is missing (expected one folder per class: {classes})")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [index] * len(found)
    if not files:
        raise FileNotFoundError(f"no .jpg or .png images under {root}/<class>/")

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        images = list(pool.map(decode, files))
    shapes = {img.shape for img in images}
    if len(shapes) != 1:
        raise ValueError(f"images under {root} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64), classes)


def _missing_cifar10_message(root: Path, split: str, reason: str) -> str:
    return (
        f"CIFAR-10 ({split} split) is not on this machine and could not be downloaded ({reason}).\n"
        f"Put it in one of these places, then run again:\n"
        f"  * an image-folder tree {root / 'cifar10' / split}/<class>/*.jpg|png "
        f"(classes: {', '.join(CIFAR10_CLASSES)});\n"
        f"  * torchvision's files {root / 'cifar-10-batches-py'}/ (from cifar-10-python.tar.gz).\n"
        f"Set MINIVIT_DATA to use another data folder."
    )


def _load_cifar10_uncached(root: Path, split: str) -> ImageSet:
    folder = root / "cifar10" / split
    if folder.is_dir():
        return load_image_folder(folder, CIFAR10_CLASSES)
    from torchvision.datasets import CIFAR10

    train = split == "train"
    try:
        dataset = CIFAR10(str(root), train=train, download=False)
    except RuntimeError:  # not downloaded yet
        try:
            dataset = CIFAR10(str(root), train=train, download=True)
        except Exception as exc:  # offline: URLError, socket errors, ...
            raise FileNotFoundError(_missing_cifar10_message(root, split, f"{type(exc).__name__}: {exc}")) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64), CIFAR10_CLASSES)


def load_cifar10(split: str = "train", root: str | Path | None = None, limit: int | None = None) -> ImageSet:
    """CIFAR-10 as uint8 tensors: images (N, 3, 32, 32), labels (N,).

    ``limit`` keeps a class-balanced subset (for the ``smoke`` and ``cpu`` profiles).
    The first call decodes and caches the images; later calls read the cache.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; use 'train' or 'test'")
    root = Path(root) if root is not None else data_dir()
    cache = root / "cache" / f"cifar10_{split}.npz"
    if cache.exists():
        with np.load(cache) as arrays:
            data = ImageSet(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), CIFAR10_CLASSES)
    else:
        data = _load_cifar10_uncached(root, split)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")
        np.savez(partial, images=data.images.numpy(), labels=data.labels.numpy())
        partial.replace(cache)  # atomic: a killed run never leaves a broken cache
    return data.subset(limit) if limit is not None else data
