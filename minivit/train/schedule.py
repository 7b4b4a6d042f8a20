"""What changes along a run: the AdamW parameter groups, warmup + cosine learning rate, and the
image size of each epoch under progressive resizing."""
from __future__ import annotations

import bisect
import itertools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

NO_DECAY_NAMES = ("cls_token", "pos_embed", "class_token", "pos_embedding", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights of Linear/Conv layers decay; norms, biases, embeddings and tokens do not."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = param.ndim < 2 or leaf in NO_DECAY_NAMES or id(param) in embedding_params
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from ``lr / warmup_steps`` to ``lr``, then cosine decay to ``min_lr_ratio * lr``.

    Step it once per optimizer step. Built from ``LinearLR`` + ``CosineAnnealingLR``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in 0..{total_steps - 1} (total_steps), got {warmup_steps}")
    base_lr = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr_ratio * base_lr)
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR's "epoch parameter" deprecation note
        return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def check_progressive(progressive) -> list[list] | None:
    """Validate a progressive-resizing schedule ``[(size, fraction of the epochs), ...]``; returns lists."""
    if progressive is None:
        return None
    if not isinstance(progressive, (list, tuple)) or len(progressive) == 0:
        raise ValueError(f"progressive must be None or a non-empty list of (image size, fraction of the epochs) "
                         f"pairs, e.g. [(16, 0.4), (24, 0.3), (32, 0.3)]; got {progressive!r}")
    try:
        phases = [[int(size), float(fraction)] for size, fraction in progressive]
    except (TypeError, ValueError):
        raise ValueError(f"progressive must be a list of (image size, fraction of the epochs) pairs, "
                         f"e.g. [(16, 0.4), (24, 0.3), (32, 0.3)]; got {progressive!r}") from None
    if any(size < 1 or not 0 < fraction <= 1 for size, fraction in phases):
        raise ValueError(f"progressive sizes must be >= 1 and fractions in (0, 1], got {phases}")
    if abs(sum(fraction for _, fraction in phases) - 1) > 1e-6:
        raise ValueError(f"progressive fractions must add up to 1, got {phases} "
                         f"(sum {sum(f for _, f in phases):g})")
    return phases


def train_sizes(progressive, epochs: int, full_size: int) -> list[int]:
    """The training image size of each epoch: ``full_size`` throughout, or the phases of ``progressive``.

    Epoch ``e`` belongs to the phase that holds the middle of the epoch, ``(e + 0.5) / epochs``;
    every phase with at least half an epoch gets its epochs.
    """
    phases = check_progressive(progressive)
    if phases is None:
        return [full_size] * epochs
    ends = list(itertools.accumulate(fraction for _, fraction in phases))  # where each phase ends, in (0, 1]
    last = len(phases) - 1  # rounding may leave the last end a hair below 1
    return [phases[min(bisect.bisect_right(ends, (epoch + 0.5) / epochs), last)][0] for epoch in range(epochs)]


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images (B, C, H, W) -> (B, C, size, size), bilinear with antialiasing (a no-op at H = W = size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
