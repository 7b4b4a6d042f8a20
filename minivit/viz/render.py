"""Attention maps as pictures: (H, W, 3) uint8 arrays, the explorers' and the figures' building blocks.

:func:`enlarge` an image, :func:`blend_heatmap` (or :func:`overlay_heatmap`) a map on top of it,
:func:`draw_boxes` on it, and encode it with :func:`png_bytes` for an ``ipywidgets.Image``.
matplotlib (for its colour maps) and torchvision (for its box drawing) are imported when first
used, so that importing :mod:`minivit.viz` for its maths stays light.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from minivit.viz.maps import upsample_maps


def _as_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) uint8 tensor or float tensor in [0, 1] -> (H, W, 3) uint8 array."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image (C, H, W) with 1 or 3 channels, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()


def enlarge(image: torch.Tensor, size: int = 256) -> np.ndarray:
    """An image (C, H, W) enlarged to (size, size, 3) uint8 with nearest-neighbour pixels."""
    return np.asarray(Image.fromarray(_as_hwc_uint8(image)).resize((size, size), Image.NEAREST))


def overlay_heatmap(
    image: torch.Tensor, heatmap: torch.Tensor, size: int = 256, alpha: float = 0.6, cmap: str = "inferno"
) -> np.ndarray:
    """The image (C, H, W) enlarged to size x size, a min-max scaled heatmap (h, w) on top: (size, size, 3) uint8."""
    return blend_heatmap(enlarge(image, size), heatmap, alpha, cmap)


def blend_heatmap(base: np.ndarray, heatmap: torch.Tensor, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """An enlarged image (S, S, 3) uint8 with a min-max scaled heatmap (h, w) blended on top: (S, S, 3) uint8."""
    import matplotlib

    heat = upsample_maps(heatmap.detach().float().cpu(), base.shape[:2]).numpy()  # (h, w) -> (S, S)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    colored = matplotlib.colormaps[cmap](heat, bytes=True)[..., :3].astype(np.float32)  # (S, S, 3) in 0..255
    blended = (1 - alpha) * base.astype(np.float32) + alpha * colored
    return blended.clip(0, 255).round().astype(np.uint8)


def tab10_color(index: int) -> tuple[int, int, int]:
    """Colour ``index`` (cycling) of matplotlib's tab10 palette as 0..255 RGB: one box colour per object."""
    import matplotlib

    return tuple(int(255 * v) for v in matplotlib.colormaps["tab10"](index % 10)[:3])


def draw_boxes(
    image_hwc: np.ndarray, boxes_xyxy: torch.Tensor, labels: Sequence[str] | None = None, colors="lime", width: int = 2
) -> np.ndarray:
    """Draw boxes (K, 4) in pixel xyxy on an (H, W, 3) uint8 array (torchvision's draw_bounding_boxes)."""
    canvas = torch.from_numpy(np.array(image_hwc, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy, (3, H, W)
    if len(boxes_xyxy):
        from torchvision.utils import draw_bounding_boxes

        labels = list(labels) if labels else None
        canvas = draw_bounding_boxes(canvas, boxes_xyxy.float(), labels=labels, colors=colors, width=width)
    return canvas.permute(1, 2, 0).numpy()  # (H, W, 3)


def png_bytes(image_hwc: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG (fast compression) for an ``ipywidgets.Image``."""
    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
