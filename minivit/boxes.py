"""Chapters 5 and 6: bounding boxes, their two formats, IoU and generalized IoU.

Two formats, both with the last dimension 4:

* ``cxcywh``: centre x, centre y, width, height (what DETR predicts, normalized to [0, 1]);
* ``xyxy``:   left, top, right, bottom (what IoU is computed on).

Every function here agrees with ``torchvision.ops`` (``box_convert``, ``box_area``,
``box_iou``, ``generalized_box_iou``; see tests/test_boxes.py). Bad boxes (a wrong last
dimension, NaN or infinite values, right < left or bottom < top) raise a ``ValueError``
that names the first offending box and its values.
"""
from __future__ import annotations

import torch

BOX_FORMATS = ("xyxy", "cxcywh")


def check_boxes(boxes: torch.Tensor, fmt: str | None = "xyxy", name: str = "boxes") -> torch.Tensor:
    """Raise a ``ValueError`` naming the first bad box; return ``boxes`` unchanged if all are valid.

    Valid means: a tensor of shape (..., 4), finite values, and non-negative extent
    (``x2 >= x1`` and ``y2 >= y1`` for ``xyxy``; ``w >= 0`` and ``h >= 0`` for ``cxcywh``;
    not checked for ``fmt=None``).
    """
    if fmt is not None and fmt not in BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; choose one of {', '.join(BOX_FORMATS)}")
    if not isinstance(boxes, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., 4), got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have shape (..., 4) ({fmt}), got {tuple(boxes.shape)}; "
            f"for a single box use shape (1, 4)"
        )
    flat = boxes.detach().reshape(-1, 4)
    if not bool(torch.isfinite(flat).all()):
        index = int((~torch.isfinite(flat)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}[{_index(boxes, index)}] = {flat[index].tolist()} contains NaN or inf")
    if fmt is None:
        return boxes
    if fmt == "xyxy":
        degenerate = flat[:, 2:] < flat[:, :2]  # (N, 2): x2 < x1, y2 < y1
        what = "x2 < x1 or y2 < y1 (expected xyxy = left, top, right, bottom)"
    else:
        degenerate = flat[:, 2:] < 0  # (N, 2): w < 0, h < 0
        what = "negative width or height (expected cxcywh = centre x, centre y, width, height)"
    if bool(degenerate.any()):
        index = int(degenerate.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}[{_index(boxes, index)}] = {flat[index].tolist()} is degenerate: {what}")
    return boxes


def _index(boxes: torch.Tensor, flat_index: int) -> str:
    """The position of box ``flat_index`` in ``boxes`` of shape (..., 4), e.g. ``2`` or ``1, 3``."""
    lead = boxes.shape[:-1]
    if len(lead) <= 1:
        return str(flat_index)
    position = []
    for size in reversed(lead):
        position.append(flat_index % size)
        flat_index //= size
    return ", ".join(str(p) for p in reversed(position))


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2); shape (..., 4) is kept."""
    check_boxes(boxes, "cxcywh")
    return _cxcywh_to_xyxy(boxes)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """:func:`box_cxcywh_to_xyxy` without the checks (no host sync), for inputs checked at the entry point."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h); shape (..., 4) is kept."""
    check_boxes(boxes, "xyxy")
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of xyxy boxes: (..., 4) -> (...)."""
    check_boxes(boxes, "xyxy")
    return _area(boxes)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _check_pair(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        check_boxes(boxes, "xyxy", name)
        if boxes.dim() < 2:
            raise ValueError(
                f"{name} must have shape (N, 4) (or (..., N, 4)) for pairwise IoU, got {tuple(boxes.shape)}"
            )
    if boxes1.shape[:-2] != boxes2.shape[:-2]:
        raise ValueError(
            f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} must have the same leading "
            "(batch) dimensions"
        )


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of every pair: xyxy (N, 4) and (M, 4) -> (iou (N, M), union (N, M)).

    Batched too: (..., N, 4) and (..., M, 4) -> (..., N, M). IoU = |A ∩ B| / |A ∪ B|.
    Two boxes of zero area give 0 / 0 = NaN, as in torchvision.
    """
    _check_pair(boxes1, boxes2)
    return _iou_and_union(boxes1, boxes2)


def _iou_and_union(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    boxes1, boxes2 = boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)  # (..., N, 1, 4), (..., 1, M, 4)
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])  # (..., N, M, 2)
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])  # (..., N, M, 2)
    overlap = (bottom_right - top_left).clamp(min=0)  # (..., N, M, 2), 0 where the boxes do not meet
    inter = overlap[..., 0] * overlap[..., 1]  # (..., N, M)
    union = _area(boxes1) + _area(boxes2) - inter  # (..., N, M)
    return inter / union, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of every pair: xyxy (N, 4) and (M, 4) -> (N, M), values in [-1, 1].

    Batched too: (..., N, 4) and (..., M, 4) -> (..., N, M).
    GIoU = IoU - |C \\ (A ∪ B)| / |C|, with C the smallest box enclosing A and B
    (Rezatofighi et al., 2019). Unlike IoU it still says how far apart two disjoint boxes are.
    """
    _check_pair(boxes1, boxes2)
    return _generalized_box_iou(boxes1, boxes2)


def _generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """:func:`generalized_box_iou` without the checks (no host sync), for inputs checked at the entry point."""
    iou, union = _iou_and_union(boxes1, boxes2)  # (..., N, M) each
    boxes1, boxes2 = boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)  # (..., N, 1, 4), (..., 1, M, 4)
    top_left = torch.min(boxes1[..., :2], boxes2[..., :2])  # (..., N, M, 2)
    bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])  # (..., N, M, 2)
    size = bottom_right - top_left  # (..., N, M, 2), never negative for valid boxes
    enclosing = size[..., 0] * size[..., 1]  # (..., N, M)
    return iou - (enclosing - union) / enclosing


def _image_scale(boxes: torch.Tensor, image_size) -> torch.Tensor:
    """(W, H, W, H) for ``image_size`` = (H, W), broadcastable against boxes (..., 4)."""
    if isinstance(image_size, torch.Tensor):
        image_size = image_size.tolist()
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (height, width) with positive sizes, got {image_size}")
    height, width = image_size
    return torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)


def normalize_boxes(boxes: torch.Tensor, image_size) -> torch.Tensor:
    """Pixels -> [0, 1]: divide x and widths by the image width, y and heights by its height.

    Works for both formats (it only rescales). ``image_size`` is (height, width).
    """
    check_boxes(boxes, None)
    return boxes / _image_scale(boxes, image_size)


def denormalize_boxes(boxes: torch.Tensor, image_size) -> torch.Tensor:
    """[0, 1] -> pixels, the inverse of :func:`normalize_boxes`. ``image_size`` is (height, width)."""
    check_boxes(boxes, None)
    return boxes * _image_scale(boxes, image_size)
