"""Scoring a classifier: logits with test-time augmentation, loss and accuracy (sharded under DDP),
the confusion matrix, the pairs of classes most confused and the most confident mistakes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from minivit.data.augment import normalize, random_crop
from minivit.data.cifar10 import ImageSet
from minivit.devices import autocast, module_device
from minivit.train.distributed import rank_and_world_size


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            batch_size: int = 500, tta_flip: bool = False, amp_dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, tta_shift: int = 0) -> torch.Tensor:
    """Logits (N, classes) of uint8 images (N, C, H, W), in eval mode.

    Test-time augmentation averages the logits of several views: ``tta_flip`` adds the mirror
    image, ``tta_shift`` > 0 adds four copies shifted diagonally by that many pixels (zero
    padding, as the training crops); both together give 10 views.
    """
    if tta_shift < 0:
        raise ValueError(f"tta_shift must be >= 0 pixels, got {tta_shift}")
    device = torch.device(device) if device is not None else module_device(model)
    shifts = [(0, 0)] + ([(dy, dx) for dy in (-tta_shift, tta_shift) for dx in (-tta_shift, tta_shift)]
                         if tta_shift else [])
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device)  # (b, C, H, W) uint8
        total = 0.0
        for dy, dx in shifts:
            offsets = torch.tensor([[tta_shift + dy, tta_shift + dx]], device=device).expand(len(chunk), 2)
            batch = normalize(random_crop(chunk, tta_shift, offsets=offsets), mean, std)  # the view, shifted
            with autocast(device, amp_dtype):
                total = total + model(batch).float()
                if tta_flip:
                    total = total + model(batch.flip(-1)).float()
        outputs.append(total / (len(shifts) * (2 if tta_flip else 1)))  # (b, classes)
    model.train(was_training)
    return torch.cat(outputs)


def evaluate(model: nn.Module, data: ImageSet, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 500,
             tta_flip: bool = False, amp_dtype: torch.dtype | None = None,
             device: torch.device | str | None = None, tta_shift: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``data``; under DDP each rank scores its shard."""
    rank, world_size = rank_and_world_size()
    shard = slice(rank * len(data) // world_size, (rank + 1) * len(data) // world_size)
    logits = predict(model, data.images[shard], mean, std, batch_size, tta_flip, amp_dtype, device, tta_shift)
    labels = data.labels[shard].to(logits.device)
    totals = torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                          (logits.argmax(1) == labels).sum().float()])
    if world_size > 1:
        dist.all_reduce(totals)
    return (totals[0] / len(data)).item(), (totals[1] / len(data)).item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    index = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def misclassified(predictions: torch.Tensor, labels: torch.Tensor, confidences: torch.Tensor | None = None,
                  count: int = 16) -> torch.Tensor:
    """Indices of up to ``count`` wrong predictions, the most confident mistakes first when given confidences."""
    wrong = torch.nonzero(predictions.cpu() != labels.cpu()).flatten()
    if confidences is not None:
        wrong = wrong[confidences.cpu()[wrong].argsort(descending=True)]
    return wrong[:count]


def top_confusions(matrix: torch.Tensor, classes: Sequence[str], count: int = 3) -> list[tuple[str, str, int]]:
    """The ``count`` class pairs confused most often in either direction, as ``(class, class, images)``,
    from a confusion matrix (row = true class, column = predicted class); the largest first."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(classes):
        raise ValueError(f"matrix must be (classes, classes) = ({len(classes)}, {len(classes)}), "
                         f"got {tuple(matrix.shape)}")
    both_ways = (matrix + matrix.T).triu(diagonal=1)  # (C, C): pair (i, j), i < j, counted once
    counts, flat = both_ways.flatten().sort(descending=True, stable=True)
    size = matrix.shape[0]
    return [(classes[int(index) // size], classes[int(index) % size], int(images))
            for images, index in zip(counts[:count].tolist(), flat[:count].tolist()) if images > 0]
