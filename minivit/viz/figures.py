"""Chapter 7's matplotlib figures: each ``plot_*`` function takes maps from :mod:`minivit.viz.maps`
and returns a ``matplotlib.figure.Figure``.

* :func:`plot_map_grid`: heatmaps over images, one small panel each (e.g. layers x heads);
* the ViT paper's Fig. 7: :func:`plot_mean_attention_distance`, :func:`plot_position_similarity`,
  :func:`plot_patch_components`;
* :func:`plot_cross_layer_similarity`: DeepViT's attention collapse;
* DETR: :func:`plot_detr_encoder_attention`, :func:`plot_detr_queries`.

pyplot is imported inside each function, when a figure is drawn.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from minivit.viz.maps import detr_encoder_attention_at, to_unit_range
from minivit.viz.render import blend_heatmap, draw_boxes, enlarge, overlay_heatmap, tab10_color


def plot_map_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    size: int = 96,
    panel_inches: float = 1.4,
):
    """Heatmaps (rows, cols, gh, gw) over images, one small panel each.

    images: one (C, H, W) for all rows, or (rows, C, H, W).
    """
    import matplotlib.pyplot as plt

    rows, cols = maps.shape[:2]
    images = images.expand(rows, *images.shape) if images.dim() == 3 else images  # (rows, C, H, W)
    figsize = (panel_inches * (cols + 1) + 0.8, panel_inches * rows + 0.6)
    figure, axes = plt.subplots(rows, cols + 1, figsize=figsize, squeeze=False, dpi=60)
    for r in range(rows):
        enlarged = enlarge(images[r], size)  # (size, size, 3)
        axes[r, 0].imshow(enlarged)
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
        for c in range(cols):
            axes[r, c + 1].imshow(blend_heatmap(enlarged, maps[r, c]))
            if r == 0:
                axes[r, c + 1].set_title(col_labels[c], fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([]), axis.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_mean_attention_distance(
    distances: dict[str, torch.Tensor], image_size: int, uniform_distance: float | None = None
):
    """One panel per model: each head's mean attention distance (pixels) against its layer (ViT Fig. 7 right).

    ``distances``: model name -> (L, H). ``uniform_distance``: drawn as a dashed line, the distance
    of attention spread evenly over the image.
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(distances), figsize=(4.5 * len(distances), 3.6), sharey=True, squeeze=False)
    for axis, (name, per_layer_head) in zip(axes[0], distances.items()):
        per_layer_head = per_layer_head.detach().cpu().numpy()  # (L, H)
        layers, heads = per_layer_head.shape
        for head in range(heads):
            axis.scatter(np.arange(layers), per_layer_head[:, head], s=18, label=f"head {head}")
        axis.plot(np.arange(layers), per_layer_head.mean(axis=1), color="black", lw=1, label="mean of heads")
        if uniform_distance is not None:
            axis.axhline(uniform_distance, color="gray", ls="--", lw=1, label="uniform attention")
        axis.set_title(name)
        axis.set_xlabel("layer (network depth)")
        axis.set_xticks(range(layers))
        axis.set_ylim(0, image_size * 0.8)
    axes[0, 0].set_ylabel("mean attention distance (pixels)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Mean attention distance per head ({image_size}x{image_size}-pixel images)")
    figure.tight_layout()
    return figure


def plot_position_similarity(similarity: torch.Tensor):
    """The (gh, gw) grid of (gh, gw) cosine-similarity maps of the position embeddings (ViT Fig. 7 centre)."""
    import matplotlib.pyplot as plt

    similarity = similarity.detach().cpu().numpy()  # (gh, gw, gh, gw)
    grid_h, grid_w = similarity.shape[:2]
    figure, axes = plt.subplots(grid_h, grid_w, figsize=(0.8 * grid_w + 1.2, 0.8 * grid_h + 0.6))
    for r in range(grid_h):
        for c in range(grid_w):
            shown = axes[r, c].imshow(similarity[r, c], vmin=-1, vmax=1, cmap="viridis")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(str(r), rotation=0, ha="right", va="center")
    for c in range(grid_w):
        axes[-1, c].set_xlabel(str(c))
    figure.supxlabel("input patch column")
    figure.supylabel("input patch row")
    figure.suptitle("Position embedding similarity (cosine)")
    figure.colorbar(shown, ax=axes, shrink=0.6, label="cosine similarity")
    return figure


def plot_patch_components(components: torch.Tensor, explained: torch.Tensor, title: str):
    """Principal components of the patch filters (k, 3, P, P) drawn as RGB patches (ViT Fig. 7 left)."""
    import matplotlib.pyplot as plt

    count = len(components)
    cols = min(count, 7)
    rows = math.ceil(count / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.5), squeeze=False)
    pictures = to_unit_range(components)  # (k, 3, P, P) in [0, 1]
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([]), axis.set_yticks([])
        if index < count:
            axis.imshow(pictures[index].permute(1, 2, 0).numpy(), interpolation="nearest")  # (P, P, 3)
            axis.set_title(f"PC{index + 1} {explained[index]:.0%}", fontsize=8)
        else:
            axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_cross_layer_similarity(similarity: torch.Tensor, title: str):
    """DeepViT's cross-layer similarity: the (L, L) matrix and each layer's similarity with the next."""
    import matplotlib.pyplot as plt

    similarity = similarity.detach().cpu().numpy()  # (L, L)
    layers = similarity.shape[0]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    shown = left.imshow(similarity, vmin=0, vmax=1, cmap="magma")
    left.set_xlabel("layer q"), left.set_ylabel("layer p"), left.set_title("cosine similarity of attention maps")
    left.set_xticks(range(layers)), left.set_yticks(range(layers))
    figure.colorbar(shown, ax=left, label="similarity")
    neighbours = similarity.diagonal(offset=1)  # (L - 1,)
    right.plot(range(layers - 1), neighbours, marker="o")
    right.set_ylim(0, 1.05)
    right.set_xticks(range(layers - 1), [f"{p}-{p + 1}" for p in range(layers - 1)])
    right.set_xlabel("layer pair (p, p+1)"), right.set_ylabel("similarity"), right.set_title("each layer vs. the next")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_detr_encoder_attention(
    image: torch.Tensor, encoder_attention: torch.Tensor, feature_size, references, layer: int = -1, size: int = 192
):
    """DETR encoder self-attention (mean of heads) at a few reference points (row, col) of the feature map.

    encoder_attention: (L, B, H, h*w, h*w) with feature_size (h, w); image: (3, H, W).
    """
    import matplotlib.pyplot as plt

    height, width = feature_size
    image_h, image_w = image.shape[-2:]
    extent = (0, image_w, image_h, 0)  # axes in the image's own pixels
    figure, axes = plt.subplots(1, len(references) + 1, figsize=(2.6 * (len(references) + 1), 3), dpi=64)
    axes[0].imshow(enlarge(image, size), extent=extent)
    for index, (row, col) in enumerate(references):
        x, y = (col + 0.5) * image_w / width, (row + 0.5) * image_h / height  # the feature pixel's centre
        point = dict(x=[x], y=[y], s=60, color=f"C{index}", edgecolors="white")
        axes[0].scatter(**point)
        attention_map = detr_encoder_attention_at(encoder_attention, feature_size, (row, col), layer)  # (h, w)
        axes[index + 1].imshow(overlay_heatmap(image, attention_map, size), extent=extent)
        axes[index + 1].scatter(**point)
        axes[index + 1].set_title(f"reference (row {row}, col {col})", fontsize=9)
    axes[0].set_title("image and reference points", fontsize=9)
    for axis in axes:
        axis.set_xlabel("x (pixels)", fontsize=8)
    axes[0].set_ylabel("y (pixels)", fontsize=8)
    layer_number = layer % len(encoder_attention)
    figure.suptitle(f"DETR encoder self-attention (layer {layer_number}, mean of heads; feature map {height}x{width})")
    figure.tight_layout()
    return figure


def plot_detr_queries(
    image: torch.Tensor, boxes: torch.Tensor, labels, scores, maps: torch.Tensor, class_names, size: int = 192
):
    """Per predicted object: its box (top) and its query's decoder cross-attention (bottom), as in the DETR paper.

    boxes: (K, 4) pixel xyxy on the image (3, H, W); labels, scores: (K,); maps: (K, h, w).
    """
    import matplotlib.pyplot as plt

    count = max(len(boxes), 1)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False, dpi=56)
    scale = size / image.shape[-1]
    for index in range(len(boxes)):
        name = f"{class_names[int(labels[index])]} {float(scores[index]):.2f}"
        boxed = draw_boxes(enlarge(image, size), boxes[index : index + 1] * scale, [name], colors=[tab10_color(index)])
        axes[0, index].imshow(boxed)
        axes[0, index].set_title(name, fontsize=9)
        axes[1, index].imshow(overlay_heatmap(image, maps[index], size))
    if len(boxes) == 0:
        axes[0, 0].imshow(enlarge(image, size))
        axes[0, 0].set_title("no detection above the threshold", fontsize=9)
        axes[1, 0].axis("off")
    axes[0, 0].set_ylabel("predicted box")
    axes[1, 0].set_ylabel("cross-attention")
    for axis in axes.flat:
        axis.set_xticks([]), axis.set_yticks([])
    figure.suptitle("DETR: each detection's object query, its box and where it attends (last decoder layer)")
    figure.tight_layout()
    return figure
