"""Chapter 8: mixup and CutMix, batch-level augmentations with soft labels.

Both pair each image of a batch with another one of the same batch (a random permutation) and a
weight lambda ~ Beta(alpha, alpha):

* mixup (Zhang et al. 2018) blends the pixels, ``lam * x + (1 - lam) * x[perm]``;
* CutMix (Yun et al. 2019) pastes a box of ``x[perm]`` into ``x``, the box covering ``1 - lam``
  of the image (clipped at the borders, after which lambda is recomputed from the real area).

The target is the same blend of the two one-hot labels: ``lam * y + (1 - lam) * y[perm]`` (B, classes),
which ``F.cross_entropy`` takes as class probabilities. They work on normalized float batches
(after :func:`~minivit.data.augment.normalize`); :func:`~minivit.train.fit` applies them when
``TrainConfig.mixup_alpha`` or ``cutmix_alpha`` is above 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_batch(images: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a floating-point (B, C, H, W) tensor (mix after normalize()), got "
                         + (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                            else type(images).__name__))
    if labels.shape != (len(images),) or perm.shape != (len(images),):
        raise ValueError(f"labels and perm must be ({len(images)},) for {len(images)} images, got "
                         f"{tuple(labels.shape)} and {tuple(perm.shape)}")


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (the weight of each image's own label), got {lam}")


def mixed_targets(labels: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """``lam * one_hot(labels) + (1 - lam) * one_hot(labels[perm])``: (B, num_classes), each row sums to 1."""
    _check_lam(lam)
    one_hot = F.one_hot(labels, num_classes).float()  # (B, classes)
    return lam * one_hot + (1.0 - lam) * one_hot[perm]


def mixup(images: torch.Tensor, labels: torch.Tensor, lam: float, perm: torch.Tensor,
          num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image with ``images[perm]``: (mixed images (B, C, H, W), soft targets (B, classes))."""
    _check_batch(images, labels, perm)
    _check_lam(lam)
    return lam * images + (1.0 - lam) * images[perm], mixed_targets(labels, perm, lam, num_classes)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, ...]:
    """A box (top, left, bottom, right) of about ``(1 - lam) * height * width`` pixels, centred at random
    and clipped at the image's borders (so it can come out smaller)."""
    _check_lam(lam)
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * cut), round(width * cut)
    cy, cx = (int(torch.randint(size, (1,), generator=generator)) for size in (height, width))
    top, bottom = max(cy - box_h // 2, 0), min(cy - box_h // 2 + box_h, height)
    left, right = max(cx - box_w // 2, 0), min(cx - box_w // 2 + box_w, width)
    return top, left, bottom, right


def cutmix(images: torch.Tensor, labels: torch.Tensor, box: tuple[int, int, int, int], perm: torch.Tensor,
           num_classes: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste ``images[perm]`` into ``box``: (images, soft targets, lambda = the share of each image kept)."""
    _check_batch(images, labels, perm)
    top, left, bottom, right = box
    height, width = images.shape[-2:]
    if not (0 <= top <= bottom <= height and 0 <= left <= right <= width):
        raise ValueError(f"box (top, left, bottom, right) = {box} does not lie inside the {height}x{width} images")
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, mixed_targets(labels, perm, lam, num_classes), lam


def sample_lam(alpha: float, generator: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha), from ``generator`` (through numpy, whose Beta takes a seed)."""
    import numpy as np

    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 for Beta(alpha, alpha), got {alpha}")
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix on a batch (one of the two at random when both alphas are above 0, as timm does).

    Returns (images, soft targets (B, classes)); with both alphas 0 the images unchanged and one-hot targets.
    The random choices come from ``generator`` (CPU), so a seeded run is reproducible.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0 (0: off), got {mixup_alpha}, {cutmix_alpha}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if not mixup_alpha and not cutmix_alpha:
        return images, F.one_hot(labels, num_classes).float()
    use_cutmix = cutmix_alpha > 0 and (not mixup_alpha or bool(torch.rand(1, generator=generator) < 0.5))
    perm = torch.randperm(len(images), generator=generator).to(images.device)
    if use_cutmix:
        box = cutmix_box(images.shape[-2], images.shape[-1], sample_lam(cutmix_alpha, generator), generator)
        mixed, targets, _ = cutmix(images, labels, box, perm, num_classes)
        return mixed, targets
    return mixup(images, labels, sample_lam(mixup_alpha, generator), perm, num_classes)
