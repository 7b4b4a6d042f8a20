"""Chapter 8: knowledge distillation as in DeiT (Touvron et al. 2021), hard-label variant.

A ViT student gets a second learned token beside the class token (``ViTConfig(distill_token=True)``)
with its own head. The class head learns the true labels; the distillation head learns what a
frozen teacher (here a CNN, whose inductive bias the ViT lacks) predicts, its argmax::

    loss = 0.5 * CE(class head, y) + 0.5 * CE(distillation head, argmax teacher(x))

At test time the student averages both heads' logits. ``fit(student, ..., teacher=cnn)`` trains
this way; the teacher sees the very batches the student sees (same normalization, same augmentation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_distillation_loss(cls_logits: torch.Tensor, dist_logits: torch.Tensor, targets: torch.Tensor,
                           teacher_logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's hard distillation: ``0.5 * CE(cls_logits, targets) + 0.5 * CE(dist_logits, teacher's argmax)``.

    ``targets`` are class indices (B,) or probabilities (B, classes) (mixup/CutMix); label smoothing
    applies to the true-label term only. All logits (B, classes).
    """
    if not cls_logits.shape == dist_logits.shape == teacher_logits.shape or cls_logits.dim() != 2:
        raise ValueError(f"cls_logits, dist_logits and teacher_logits must all be (B, classes), got "
                         f"{tuple(cls_logits.shape)}, {tuple(dist_logits.shape)}, {tuple(teacher_logits.shape)}")
    teacher_labels = teacher_logits.argmax(dim=-1)  # (B,): hard labels, no gradient flows to the teacher
    return (0.5 * F.cross_entropy(cls_logits, targets, label_smoothing=label_smoothing)
            + 0.5 * F.cross_entropy(dist_logits, teacher_labels))


def freeze(teacher: nn.Module) -> nn.Module:
    """The teacher in eval mode with no gradients (in place); returns it."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def check_student(model: nn.Module) -> None:
    """A student for :func:`hard_distillation_loss` must have a distillation token (and its head)."""
    bare = getattr(getattr(model, "_orig_mod", model), "module", getattr(model, "_orig_mod", model))
    if getattr(bare, "head_dist", None) is None:
        raise ValueError(f"distillation needs a student with a distillation token, got a {type(bare).__name__} "
                         f"without one; build it with ViT(..., distill_token=True)")
