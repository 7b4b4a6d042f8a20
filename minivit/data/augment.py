"""Batched data pipeline for in-memory image sets: statistics, augmentation, batches.

Everything works on whole batches of uint8 images ``(B, C, H, W)`` on whatever device
the data lives (the CPU, or a GPU holding the whole of CIFAR-10: 150 MB), so no
per-image Python loop or PIL call ever starves the model.

* :func:`channel_stats` computes the normalization mean/std from the training set;
* :func:`random_crop` and :func:`random_flip` are the classic CIFAR augmentations,
  with their random choices drawn per image;
* :func:`trivial_augment` applies torchvision's TrivialAugmentWide batched, one random
  operation per group of images (a stronger augmentation for long runs);
* :class:`Augment` bundles them; :func:`iterate_batches` yields shuffled (and, under
  DistributedDataParallel, sharded) batches from tensors that never leave the device.

The random choices of crop and flip come from a generator seeded by ``(seed, epoch,
step)`` and are drawn for the *global* batch: a run is reproducible, resumes exactly
mid-course, and gives each rank of a distributed run its slice of the same choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 (0..255) before augmentation, got {images.dtype}; "
                         f"augment first, then call normalize()")


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (0..255) -> ``dtype`` in 0..1, same shape; floating-point images are taken as 0..1
    already and only cast to ``dtype``."""
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255
    if images.is_floating_point():
        return images.to(dtype)
    raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")


def channel_stats(images: torch.Tensor, chunk: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, on the 0..1 scale.

    Computed in float64 chunks, so the whole set is never converted at once. An empty set, or a
    channel with one value throughout (std 0: normalizing would divide by zero), is a ``ValueError``.
    """
    _check_images(images)
    if images.numel() == 0:
        raise ValueError(f"images is empty (shape {tuple(images.shape)}): channel statistics need at least one "
                         f"pixel; check the data folder and the limit")
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = to_float(images[start:start + chunk], torch.float64)  # (b, C, H, W) in 0..1
        total += block.sum(dim=(0, 2, 3))
        total_sq += (block ** 2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp_min(0).sqrt()
    constant = std * 255 < 1e-6  # (C,)
    if bool(constant.any()):
        channel = int(torch.nonzero(constant).flatten()[0])
        raise ValueError(f"channel {channel} of all {len(images)} images has the one value "
                         f"{round(float(mean[channel]) * 255)} (std 0): normalizing would divide by zero; "
                         f"check that the images were decoded right (not blank)")
    return mean.float(), std.float()


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float ``(x / 255 - mean) / std`` with per-channel statistics."""
    _check_images(images)
    if mean.numel() != images.shape[1] or std.numel() != images.shape[1]:
        raise ValueError(
            f"mean/std have {mean.numel()}/{std.numel()} entries but images have {images.shape[1]} channels"
        )
    mean = mean.to(images.device, dtype).view(1, -1, 1, 1)
    std = std.to(images.device, dtype).view(1, -1, 1, 1)
    return (to_float(images, dtype) - mean) / std


def random_crop(images: torch.Tensor, padding: int, offsets: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and cut a random crop of the original size.

    ``offsets`` (B, 2) int gives each image's (top, left) in the padded image, in
    ``0..2*padding``; without it they are drawn from ``generator``.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, channels, height, width = images.shape
    if padding == 0:
        return images
    if offsets is None:
        offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator,
                                device=generator.device if generator is not None else "cpu")
    offsets = offsets.to(images.device)
    if offsets.shape != (batch, 2):
        raise ValueError(f"offsets must have shape ({batch}, 2), got {tuple(offsets.shape)}")
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
    batch_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[batch_index, channel_index, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]


def random_flip(images: torch.Tensor, flips: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right where ``flips`` (B,) bool is True (default: a fair coin each)."""
    _check_images(images)
    if flips is None:
        flips = torch.rand(len(images), generator=generator,
                           device=generator.device if generator is not None else "cpu") < 0.5
    flips = flips.to(images.device)
    if flips.shape != (len(images),):
        raise ValueError(f"flips must have shape ({len(images)},), got {tuple(flips.shape)}")
    return torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)


def trivial_augment(images: torch.Tensor, group_size: int = 16) -> torch.Tensor:
    """TrivialAugmentWide (one random operation of random strength per image group), batched.

    torchvision's ``v2.TrivialAugmentWide`` draws one operation per call; calling it on
    groups of ``group_size`` images gives many different operations per batch at a
    fraction of the cost of one call per image. Uses the global torch RNG.
    """
    from torchvision.transforms import v2

    _check_images(images)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    transform = v2.TrivialAugmentWide()
    return torch.cat([transform(group) for group in images.split(group_size)])


@dataclass
class Augment:
    """The training augmentation: random crop with padding, horizontal flip, optionally TrivialAugment.

    ``augment(images, generator)`` maps uint8 ``(B, C, H, W)`` to uint8 of the same shape.
    """

    crop_padding: int = 4
    flip: bool = True
    trivial_augment: bool = False
    trivial_group_size: int = 16

    def __post_init__(self):
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    def draw(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random crop offsets and flips for a batch (so that ranks can share them)."""
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (batch, 2), generator=generator)
        flips = torch.rand(batch, generator=generator) < 0.5
        return {"offsets": offsets, "flips": flips}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        _check_images(images)
        if params is None:
            params = self.draw(len(images), generator or torch.Generator().manual_seed(0))
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, offsets=params["offsets"])
        if self.flip:
            images = random_flip(images, flips=params["flips"])
        if self.trivial_augment:
            images = trivial_augment(images, self.trivial_group_size)
        return images


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, step): the same on every rank and after a resume."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) % (2 ** 63))


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    augment: Augment | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches of an in-memory set, on the device the tensors are on.

    ``batch_size`` is the *global* batch. With ``world_size > 1`` every rank draws the
    same permutation and augmentation choices and keeps its contiguous slice of each
    global batch (what ``DistributedSampler`` does for a map-style data set); the
    global batch must then divide evenly by ``world_size``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if batch_size % world_size:
        raise ValueError(f"global batch {batch_size} does not divide by the {world_size} processes; "
                         f"choose a multiple of {world_size}")
    count = len(images)
    if shuffle:
        order = torch.randperm(count, generator=step_generator(seed, epoch, -1)).to(images.device)
    else:
        order = torch.arange(count, device=images.device)
    stop = count - count % batch_size if drop_last else count
    for step, start in enumerate(range(0, stop, batch_size)):
        global_index = order[start:start + batch_size]
        per_rank = -(-len(global_index) // world_size)
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        batch_images = images[global_index[local]]
        if augment is not None:
            params = augment.draw(len(global_index), step_generator(seed, epoch, step))
            params = {name: value[local] for name, value in params.items()}
            batch_images = augment(batch_images, params=params)
        yield batch_images, labels[global_index[local]]


def num_batches(count: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``count`` samples."""
    return count // batch_size if drop_last else -(-count // batch_size)
