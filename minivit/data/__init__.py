"""Data of the course: CIFAR-10 as uint8 tensors (``cifar10``), its batched augmentation
(``augment``, chapter 4) and a synthetic detection set (``shapes``, chapter 6)."""
from minivit.data.cifar10 import CIFAR10_CLASSES, ImageSet, load_cifar10, load_image_folder

__all__ = ["CIFAR10_CLASSES", "ImageSet", "load_cifar10", "load_image_folder"]
