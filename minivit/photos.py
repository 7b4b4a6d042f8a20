"""A real photograph without a download, and what ImageNet and COCO models need around it.

* :func:`sample_photo`: Grace Hopper's portrait, shipped with matplotlib, as uint8 (3, 600, 512);
* :func:`imagenet_preprocess`: torchvision's evaluation transform for ViT-B/16's ImageNet weights
  (``ViT_B_16_Weights.IMAGENET1K_V1.transforms()``): shorter side to 256 (bilinear, antialiased),
  centre crop 224, values in [0, 1], ImageNet mean and std;
* :func:`square_thumbnail`: the centre square, resized (e.g. to CIFAR-10's 32 x 32);
* :func:`imagenet_classes`, :func:`coco_classes`: the names behind a classifier's 1000 outputs and
  DETR's 91 COCO label ids; both ship inside torchvision, so they need no internet.
"""
from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_photo() -> torch.Tensor:
    """Grace Hopper's portrait from matplotlib's sample data: uint8 (3, 600, 512), RGB, no internet needed."""
    import matplotlib.cbook
    import numpy as np
    from PIL import Image  # matplotlib's own image reader

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def _check_images(images, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (3, H, W) or (B, 3, H, W), got {type(images).__name__}")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(
            f"{name} must be RGB, (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}; "
            "convert grey or RGBA photos to RGB first"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0-255) or float in [0, 1], got dtype {images.dtype}")


def imagenet_preprocess(images: torch.Tensor, resize_size: int = 256, crop_size: int = 224) -> torch.Tensor:
    """ImageNet evaluation preprocessing of torchvision's ViT-B/16: (.., 3, H, W) -> float (.., 3, 224, 224).

    The shorter side is resized to ``resize_size`` (bilinear, antialiased), the centre
    ``crop_size`` square is kept, uint8 becomes [0, 1], and each channel is normalized with the
    ImageNet mean and std. Equal to ``ViT_B_16_Weights.IMAGENET1K_V1.transforms()``.
    """
    _check_images(images)
    if crop_size > resize_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size})")
    images = TF.resize(images, [resize_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    images = TF.center_crop(images, [crop_size])  # (.., 3, 224, 224)
    images = TF.convert_image_dtype(images, torch.float)  # uint8 0-255 -> float 0-1
    return TF.normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def square_thumbnail(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """The centre square of each image, resized to ``size`` x ``size`` (antialiased); dtype kept."""
    _check_images(images)
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    side = min(images.shape[-2:])
    square = TF.center_crop(images, [side])  # (.., 3, side, side)
    return TF.resize(square, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)  # (.., 3, s, s)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the order of an ImageNet classifier's outputs (from torchvision)."""
    from torchvision.models import ViT_B_16_Weights

    return list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])


def coco_classes() -> list[str]:
    """COCO's names indexed by category id 0-90 (DETR's 91 labels; 0 is background, 10 unused ids are ``"N/A"``)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
