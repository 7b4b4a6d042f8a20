"""Data of the course: CIFAR-10 as uint8 tensors (``cifar10``), its batched augmentation
(``augment``, chapter 4) and a synthetic detection set (``shapes``, chapter 6)."""
from minivit.data.augment import Augment, channel_stats, iterate_batches, normalize, to_float
from minivit.data.cifar10 import CIFAR10_CLASSES, ImageSet, load_cifar10, load_image_folder
from minivit.data.shapes import SHAPE_CLASSES, ShapesSet, collate_detection, make_shapes

__all__ = [
    "Augment",
    "CIFAR10_CLASSES",
    "ImageSet",
    "SHAPE_CLASSES",
    "ShapesSet",
    "channel_stats",
    "collate_detection",
    "iterate_batches",
    "load_cifar10",
    "load_image_folder",
    "make_shapes",
    "normalize",
    "to_float",
]
