"""Finiteness checks where data and weights enter minivit (never inside a training step).

One NaN pixel or weight spreads silently: through BatchNorm's running statistics into every later
image, through a loss into every weight. These checks run once, at the entry points (loading a
state dict, starting to train, predicting), each with one host synchronization.
"""
from __future__ import annotations

from typing import Mapping

import torch


def nonfinite_weights(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or inf."""
    floating = [(name, t) for name, t in state_dict.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floating:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in floating]).cpu()  # one host copy
    return [name for (name, _), ok in zip(floating, finite.tolist()) if not ok]


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], source: str, fix: str) -> None:
    """``ValueError`` naming ``source`` and the first bad tensors when any weight is NaN or inf."""
    bad = nonfinite_weights(state_dict)
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} in all)" if len(bad) > 4 else "")
        raise ValueError(f"{source}: {len(bad)} weight tensor(s) hold NaN or inf ({shown}); {fix}")


def check_finite_images(images: torch.Tensor, name: str = "images") -> None:
    """``ValueError`` naming the first image with a NaN or inf pixel; uint8 images are always finite."""
    if not images.is_floating_point():
        return
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)  # (N,) one flag per image
    if bool(bad.any()):
        indices = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"{name}[{indices[0]}] contains NaN or inf pixels ({len(indices)} of {len(images)} "
                         f"images do); fix or drop those images before they reach the model (one NaN pixel "
                         f"spreads through BatchNorm's running statistics to every later image)")
