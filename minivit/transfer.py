"""Chapter 9: transfer a pretrained ViT to a new task and a new resolution.

* :func:`resample_position_embedding`: a learned position table (1, prefix + g*g, D) resampled
  bicubically to another grid of patches, the class token's entry kept as it is. With
  ``align_corners=True`` it is torchvision's ``interpolate_embeddings``; with the default
  ``align_corners=False`` (and antialiasing when shrinking) it is timm's ``resample_abs_pos_embed``
  and what a ``dynamic_size`` ViT does on the fly (``ViT.position_embedding``).
* :func:`resize_vit`: the same ViT for another image size, every weight copied, positions resampled.
* :func:`replace_head`, :func:`set_trainable`, :func:`transfer`: a new head, then a linear probe
  (only the head learns) or a full fine-tune (everything learns), trained by chapter 4's ``fit``.
* :func:`shapes_classification`: chapter 6's synthetic shapes as a 3-class task (the largest shape).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivit.data.cifar10 import ImageSet
from minivit.data.shapes import SHAPE_CLASSES, make_shapes
from minivit.vit import ViT

MODES = ("probe", "full")


def _grid(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"{name} must be a positive int or a (rows, cols) pair of them, got {value!r}")
    return tuple(value)


def resample_position_embedding(pos_embed: torch.Tensor, new_grid, num_prefix_tokens: int = 1, old_grid=None, *,
                                mode: str = "bicubic", align_corners: bool = False,
                                antialias: bool | None = None) -> torch.Tensor:
    """Resample a position table (1, prefix + gh*gw, D) to ``new_grid`` patches: (1, prefix + rows*cols, D).

    The first ``num_prefix_tokens`` rows (the class token's) are kept; the rest is seen as a D-channel
    image of gh x gw pixels and resized. ``old_grid`` defaults to the square grid the table holds.
    ``antialias`` defaults to True when the grid shrinks (as timm); torchvision uses
    ``align_corners=True`` and no antialiasing.
    """
    if not isinstance(pos_embed, torch.Tensor) or pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        shape = tuple(pos_embed.shape) if isinstance(pos_embed, torch.Tensor) else type(pos_embed).__name__
        raise ValueError(f"pos_embed must be a tensor (1, tokens, D), got {shape}")
    if not 0 <= num_prefix_tokens < pos_embed.shape[1]:
        raise ValueError(f"num_prefix_tokens must be in [0, {pos_embed.shape[1]}), got {num_prefix_tokens}")
    rows, cols = _grid(new_grid, "new_grid")
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid; pass old_grid=(h, w)")
        old_grid = (side, side)
    old_rows, old_cols = _grid(old_grid, "old_grid")
    if old_rows * old_cols != num_patches:
        raise ValueError(f"old_grid {old_grid} has {old_rows * old_cols} patches but pos_embed holds {num_patches}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]  # (1, p, D), (1, N, D)
    if (rows, cols) == (old_rows, old_cols):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_rows, old_cols, dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    if antialias is None:
        antialias = rows < old_rows or cols < old_cols
    grid = F.interpolate(grid.float(), size=(rows, cols), mode=mode, align_corners=align_corners,
                         antialias=antialias).to(pos_embed.dtype)  # (1, D, rows, cols)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)  # (1, rows*cols, D)
    return torch.cat([prefix, grid], dim=1)


def resize_vit(model: ViT, image_size: int, *, align_corners: bool = False) -> ViT:
    """A copy of ``model`` for ``image_size`` x ``image_size`` images: same weights, positions resampled."""
    if not isinstance(model, ViT):
        raise TypeError(f"model must be a minivit ViT, got {type(model).__name__}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size % model.patch_size:
        raise ValueError(f"image_size must be an int multiple of the patch size {model.patch_size}, "
                         f"got {image_size!r}")
    resized = ViT(model.config.replace(image_size=image_size))
    state = dict(model.state_dict())
    if isinstance(model.pos_embed, nn.Parameter):
        grid = image_size // model.patch_size
        state["pos_embed"] = resample_position_embedding(
            model.pos_embed.detach(), grid, 1 if model.cls_token is not None else 0, align_corners=align_corners)
    resized.load_state_dict(state)
    return resized.to(next(model.parameters()).device)


def replace_head(model: ViT, num_classes: int) -> ViT:
    """Give ``model`` a new zero-initialized head for ``num_classes`` classes (in place); returns the model."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    old = model.head
    model.head = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    if hasattr(model, "config") and hasattr(model.config, "replace"):
        model.config = model.config.replace(num_classes=num_classes)
    return model


def set_trainable(model: nn.Module, mode: str) -> int:
    """``"probe"``: only ``model.head`` learns (a linear probe on frozen features); ``"full"``: everything.

    Returns the number of trainable parameters.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (probe: train only the head; full: train all), got {mode!r}")
    head = {id(p) for p in model.head.parameters()}
    for param in model.parameters():
        param.requires_grad_(mode == "full" or id(param) in head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def transfer(model: ViT, train_set: ImageSet, test_set: ImageSet, config, mode: str = "full", **fit_kwargs):
    """Fine-tune (``mode="full"``) or linearly probe (``"probe"``) ``model`` with chapter 4's ``fit``.

    The head must already fit the new classes (:func:`replace_head`). Returns fit's ``History``.
    """
    from minivit.train import fit

    if model.head.out_features != len(train_set.classes):
        raise ValueError(f"the model's head has {model.head.out_features} outputs but the data has "
                         f"{len(train_set.classes)} classes; call replace_head(model, {len(train_set.classes)}) first")
    set_trainable(model, mode)
    return fit(model, train_set, test_set, config, **fit_kwargs)


def shapes_classification(num_images: int, image_size: int = 32, seed: int = 0, max_objects: int = 3) -> ImageSet:
    """Chapter 6's shapes images as a classification set: the label is the class of the largest shape.

    Images are uint8 (N, 3, S, S) as CIFAR-10's; ``classes`` are ``SHAPE_CLASSES``.
    """
    data = make_shapes(num_images, image_size=image_size, seed=seed, min_objects=1, max_objects=max_objects,
                       dtype="uint8")
    labels = []
    for target in data.targets:
        areas = target["boxes"][:, 2] * target["boxes"][:, 3]  # (T,) of normalized cxcywh boxes
        labels.append(int(target["labels"][areas.argmax()]))
    source = f"synthetic shapes (minivit.data.shapes, seed {seed}), label: the largest shape"
    return ImageSet(data.images, torch.tensor(labels, dtype=torch.int64), SHAPE_CLASSES, source)
