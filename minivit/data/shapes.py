"""Chapter 6: a synthetic detection data set, generated in code (no download).

Each image shows a few filled shapes (square, circle, triangle: the classes) in random
colors (not tied to the class), sizes and positions, on a dark noisy background; shapes may
overlap a little (a later shape is drawn over an earlier one). Targets follow DETR:
``{"labels": (T,) int64, "boxes": (T, 4) normalized cxcywh}``, the boxes being the tight
boxes of the drawn shapes; with ``record_colors=True`` also ``"colors"`` (T,) int64, indices into
``COLOR_NAMES`` (chapter 9's captions). The same seed gives the same images, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minivit.boxes import box_xyxy_to_cxcywh

SHAPE_CLASSES = ("square", "circle", "triangle")
COLORS = {
    "red": (0.9, 0.2, 0.2),
    "green": (0.2, 0.8, 0.3),
    "blue": (0.3, 0.4, 1.0),
    "yellow": (0.95, 0.85, 0.2),
    "magenta": (0.85, 0.3, 0.85),
    "cyan": (0.2, 0.85, 0.9),
}
COLOR_NAMES = tuple(COLORS)  # the index in a target's "colors"


@dataclass
class ShapesSet:
    """Images (N, 3, S, S) (float in [0, 1] or uint8) and one target dict per image."""

    images: torch.Tensor
    targets: list[dict]
    classes: tuple[str, ...] = SHAPE_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ShapesSet(self.images[index], self.targets[index], self.classes)
        return self.images[index], self.targets[index]


def _shape_mask(kind: str, x0: float, y0: float, size: float, image_size: int) -> np.ndarray:
    """Boolean (S, S) mask of a shape inside the square [x0, x0 + size] x [y0, y0 + size] (pixels)."""
    centres = np.arange(image_size) + 0.5
    x, y = centres[None, :], centres[:, None]  # (1, S), (S, 1)
    inside_x, inside_y = (x >= x0) & (x <= x0 + size), (y >= y0) & (y <= y0 + size)
    if kind == "square":
        return inside_x & inside_y
    if kind == "circle":
        radius = size / 2
        return (x - x0 - radius) ** 2 + (y - y0 - radius) ** 2 <= radius**2
    if kind == "triangle":  # apex at the top centre, base along the bottom edge
        half_width = (y - y0) / size * size / 2  # (S, 1): the triangle widens linearly downwards
        return inside_y & (np.abs(x - x0 - size / 2) <= half_width)
    raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPE_CLASSES}")


def _max_iou(box: np.ndarray, others: np.ndarray) -> float:
    """Largest IoU between one xyxy box (4,) and earlier boxes (K, 4) (a placement check; minivit.boxes.box_iou
    does it in torch)."""
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return float((inter / (area(box) + area(others) - inter)).max())


def _mask_box(mask: np.ndarray) -> list[float]:
    """Tight xyxy pixel box of a non-empty mask (pixel edges: right = last column + 1)."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def make_shapes(
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size: float = 0.15,
    max_size: float = 0.4,
    max_overlap: float = 0.2,
    noise: float = 0.05,
    dtype: str = "float",
    record_colors: bool = False,
) -> ShapesSet:
    """Generate ``num_images`` images of ``image_size`` pixels with ``min_objects``..``max_objects`` shapes.

    Sizes are fractions of the image side; a new shape is placed where its box overlaps
    every earlier box with IoU <= ``max_overlap`` (after 100 failed tries it is left out).
    ``dtype``: ``"float"`` (values in [0, 1]) or ``"uint8"``. ``record_colors``: add each shape's colour
    index (into ``COLOR_NAMES``) to the targets as ``"colors"``; the images are the same either way.
    """
    if num_images < 0 or image_size < 8:
        raise ValueError(f"need num_images >= 0 and image_size >= 8, got {num_images} and {image_size}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1 (fractions of the image), got {min_size} and {max_size}")
    if dtype not in ("float", "uint8"):
        raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
    rng = np.random.default_rng(seed)
    palette = np.array(list(COLORS.values()), dtype=np.float32)  # (colors, 3)
    images = np.empty((num_images, 3, image_size, image_size), dtype=np.float32)
    targets = []
    for index in range(num_images):
        background = rng.uniform(0.0, 0.25, size=3).astype(np.float32)
        image = np.broadcast_to(background[:, None, None], images.shape[1:]).copy()
        image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
        boxes, labels, colors = [], [], []
        for _ in range(rng.integers(min_objects, max_objects + 1)):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            color_index = int(rng.integers(len(palette)))
            color = palette[color_index]
            for _try in range(100):
                size = rng.uniform(min_size, max_size) * image_size
                x0, y0 = rng.uniform(0, image_size - size, size=2)
                mask = _shape_mask(SHAPE_CLASSES[label], x0, y0, size, image_size)
                if not mask.any():
                    continue
                box = _mask_box(mask)
                if not boxes or _max_iou(box, np.array(boxes)) <= max_overlap:
                    break
            else:
                continue  # no room for this shape
            image[:, mask] = color[:, None]
            boxes.append(box)
            labels.append(label)
            colors.append(color_index)
        images[index] = np.clip(image, 0.0, 1.0)
        xyxy = torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4) / image_size
        targets.append({"labels": torch.tensor(labels, dtype=torch.int64), "boxes": box_xyxy_to_cxcywh(xyxy)})
        if record_colors:
            targets[-1]["colors"] = torch.tensor(colors, dtype=torch.int64)
    tensor = torch.from_numpy(images)
    if dtype == "uint8":
        tensor = (tensor * 255).round().to(torch.uint8)
    return ShapesSet(tensor, targets)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """For a DataLoader: [(image (3, S, S), target), ...] -> (images (B, 3, S, S), [target, ...])."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
