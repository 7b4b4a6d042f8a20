"""Attention maps as numbers: pure tensor maths (no matplotlib, no widgets).

Shapes: L layers, H heads, T tokens (prefix tokens such as the class token first, then the
N = gh * gw patches row by row), B images, Q object queries of DETR.

* :func:`capture_attention`: every layer's and head's weights of a ViT, (L, B, H, T, T), from
  the model's weight-returning path ``forward_with_attention`` (no hooks, no patching);
* one query's map: :func:`query_maps`, :func:`classifier_maps`, :func:`upsample_maps`;
* through depth: :func:`attention_rollout` (Abnar & Zuidema, 2020), :func:`cross_layer_similarity`
  (attention collapse, DeepViT, Zhou et al. 2021); :func:`mask_patches`, a deletion test of such maps;
* the ViT paper's Fig. 7: :func:`mean_attention_distance` (right), :func:`position_embedding_similarity`
  (centre), :func:`patch_embedding_components` (left);
* DETR: :func:`detr_encoder_attention_at`, :func:`detr_cross_attention_maps`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minivit.devices import module_device

# ----------------------------------------------------------------------------- capture


def num_prefix_tokens(model) -> int:
    """Tokens before the patches: 1 for a class token, 0 for a mean-pooled ViT."""
    return model.num_tokens - model.num_patches


@torch.no_grad()
def capture_attention(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a ViT once and return ``(logits (B, classes), attention (L, B, H, T, T))``.

    Uses ``model.forward_with_attention``, the written-out attention path that returns its
    softmax weights; the model is put in eval mode so that no dropout touches the weights.
    The images move to the model's device; the results come back to the CPU, where maps are drawn.
    """
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"{type(model).__name__} has no forward_with_attention(images); pass a minivit ViT")
    if images.dim() == 3:
        images = images[None]  # (C, H, W) -> (1, C, H, W)
    if images.dim() != 4 or images.dtype == torch.uint8:
        raise ValueError(
            f"expected preprocessed float images (B, C, H, W), got dtype {images.dtype} and shape "
            f"{tuple(images.shape)}; convert uint8 images with the model's preprocessing first"
        )
    model.eval()
    logits, attention = model.forward_with_attention(images.to(module_device(model)))  # where the model is
    return logits.cpu(), attention.cpu()  # (B, classes), (L, B, H, T, T), back on the CPU for drawing


def _check_square(attention: torch.Tensor, name: str = "attention") -> None:
    if attention.dim() < 2 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"{name} must end in (T, T) (queries x keys), got shape {tuple(attention.shape)}")


def _check_grid(num_patches: int, grid_size: tuple[int, int]) -> tuple[int, int]:
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if grid_h * grid_w != num_patches:
        raise ValueError(
            f"a {grid_h}x{grid_w} patch grid has {grid_h * grid_w} patches but the attention has {num_patches} "
            f"patch tokens; check grid_size and num_prefix_tokens"
        )
    return grid_h, grid_w


# ----------------------------------------------------------------------------- maps


def query_maps(attention: torch.Tensor, grid_size, query_index: int = 0, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The attention of one query token (default: token 0, the class token) over the patches.

    attention (..., T, T) -> (..., gh, gw): row ``query_index``, patch columns only (the
    weight on the prefix tokens is left out, so a map need not sum to one).
    """
    _check_square(attention)
    grid_h, grid_w = _check_grid(attention.shape[-1] - num_prefix_tokens, grid_size)
    row = attention[..., query_index, num_prefix_tokens:]  # (..., N)
    return row.reshape(*row.shape[:-1], grid_h, grid_w)


def classifier_maps(attention: torch.Tensor, grid_size, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Where the classifier's input looks: attention (..., T, T) -> (..., gh, gw).

    With a class token (``num_prefix_tokens=1``) this is the class token's row. A mean-pooled
    ViT classifies the average of all tokens, and the attention part of that average is
    ``sum_j (mean_i a_ij) v_j``: its weights are the mean of all query rows, which is what
    we return when there is no prefix token.
    """
    if num_prefix_tokens:
        return query_maps(attention, grid_size, 0, num_prefix_tokens)
    _check_square(attention)
    grid_h, grid_w = _check_grid(attention.shape[-1], grid_size)
    pooled = attention.mean(dim=-2)  # (..., N): the average query's weights
    return pooled.reshape(*pooled.shape[:-1], grid_h, grid_w)


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample maps (..., gh, gw) to the image size (..., H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (M, 1, gh, gw)
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)  # (M, 1, H, W)
    return resized.reshape(*lead, *resized.shape[-2:])


def attention_rollout(attention: torch.Tensor, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through all layers: (L, [B,] H, T, T) -> ([B,] T, T).

    Per layer the heads are fused (mean, or max), the residual connection is accounted for
    by ``0.5 * A + 0.5 * I``, rows are renormalized to sum to one, and the layers are chained
    by matrix products, last layer on the left: ``R = A_L ... A_2 A_1``. Row ``i`` of ``R`` says
    how much input token ``j`` flows into output token ``i``.
    """
    return attention_rollout_per_layer(attention, head_fusion, residual)[-1]


def attention_rollout_per_layer(
    attention: torch.Tensor, head_fusion: str = "mean", residual: bool = True
) -> torch.Tensor:
    """The rollout up to every layer: (L, [B,] H, T, T) -> (L, [B,] T, T); entry ``l`` is ``A_l ... A_1``."""
    _check_square(attention)
    if attention.dim() not in (4, 5):
        raise ValueError(f"attention must be (L, H, T, T) or (L, B, H, T, T), got shape {tuple(attention.shape)}")
    if head_fusion == "mean":
        fused = attention.mean(dim=-3)  # (L, [B,] T, T)
    elif head_fusion == "max":
        fused = attention.amax(dim=-3)
    else:
        raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")
    if residual:
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = 0.5 * fused + 0.5 * eye
    fused = fused / fused.sum(dim=-1, keepdim=True)
    rollouts, joint = [], None
    for layer_attention in fused:  # ([B,] T, T) per layer
        joint = layer_attention if joint is None else layer_attention @ joint
        rollouts.append(joint)
    return torch.stack(rollouts)  # (L, [B,] T, T)


def cross_layer_similarity(attention: torch.Tensor) -> torch.Tensor:
    """DeepViT's cross-layer similarity of attention maps: attention (L, [B,] H, T, T) -> (L, L).

    ``M[p, q]`` is the cosine similarity between column ``t`` of head ``h`` in layer ``p`` and in
    layer ``q`` (how token ``t`` is attended to), averaged over heads, tokens (and images).
    Values near one between neighbouring deep layers are DeepViT's "attention collapse".
    """
    _check_square(attention)
    if attention.dim() not in (4, 5):
        raise ValueError(f"attention must be (L, H, T, T) or (L, B, H, T, T), got shape {tuple(attention.shape)}")
    columns = F.normalize(attention.transpose(-1, -2).float(), dim=-1)  # (L, [B,] H, T keys, T queries)
    columns = columns.reshape(columns.shape[0], -1, columns.shape[-1])  # (L, M, T): M = [B*]H*T columns
    return torch.einsum("pmt,qmt->pqm", columns, columns).mean(dim=-1)  # (L, L)


def mask_patches(
    images: torch.Tensor, patch_scores: torch.Tensor, patch_size: int, count: int, which: str = "top",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images (B, C, H, W) with ``count`` patches per image set to zero: the ``"top"`` or ``"bottom"``
    scoring ones of ``patch_scores`` (B, gh, gw) (e.g. the class token's rollout), or ``"random"`` ones.

    A deletion test of a saliency map: if the map marks what the classifier uses, deleting its top
    patches hurts the accuracy more than deleting random ones. Zero is the mean colour of normalized images.
    """
    if images.dim() != 4 or patch_scores.dim() != 3 or patch_scores.shape[0] != images.shape[0]:
        raise ValueError(f"expected images (B, C, H, W) and patch_scores (B, gh, gw) for the same B, got "
                         f"{tuple(images.shape)} and {tuple(patch_scores.shape)}")
    grid_h, grid_w = patch_scores.shape[1:]
    if (grid_h * patch_size, grid_w * patch_size) != tuple(images.shape[-2:]):
        raise ValueError(f"a {grid_h}x{grid_w} grid of {patch_size}-px patches does not tile "
                         f"{images.shape[-2]}x{images.shape[-1]} images")
    if not 0 <= count <= grid_h * grid_w:
        raise ValueError(f"count must be between 0 and {grid_h * grid_w} patches, got {count}")
    flat = patch_scores.reshape(len(patch_scores), -1).float()  # (B, N)
    if which == "random":
        flat = torch.rand(flat.shape, generator=generator)
    elif which == "bottom":
        flat = -flat
    elif which != "top":
        raise ValueError(f"which must be 'top', 'bottom' or 'random', got {which!r}")
    chosen = flat.topk(count, dim=-1).indices  # (B, count)
    keep = torch.ones_like(flat).scatter_(1, chosen, 0.0).reshape(-1, 1, grid_h, grid_w)  # (B, 1, gh, gw)
    keep = keep.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)  # (B, 1, H, W)
    return images * keep.to(images)


# ----------------------------------------------------------------------------- ViT paper, Fig. 7


def patch_distance_matrix(grid_size, patch_size: float) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches: (N, N)."""
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # (gh, gw) each
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size  # (N, 2)
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(
    attention: torch.Tensor, grid_size, patch_size: float, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Mean attention distance in pixels, the ViT paper's "attention distance" (Fig. 7, right).

    For each query patch: the distance to every key patch, weighted by the attention
    (renormalized over the patches, so the weight on the class token does not count), then
    averaged over the query patches. attention (..., T, T) -> (...), e.g. (L, B, H) -> mean
    over B for the (L, H) plot.
    """
    _check_square(attention)
    num_patches = attention.shape[-1] - num_prefix_tokens
    grid = _check_grid(num_patches, grid_size)
    patch_attention = attention[..., num_prefix_tokens:, num_prefix_tokens:]  # (..., N, N)
    patch_attention = patch_attention / patch_attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    distances = patch_distance_matrix(grid, patch_size).to(attention)  # (N, N)
    per_query = (patch_attention * distances).sum(dim=-1)  # (..., N)
    return per_query.mean(dim=-1)  # (...)


def position_embedding_similarity(pos_embed: torch.Tensor, grid_size, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other: (gh, gw, gh, gw).

    ``result[r, c]`` is the (gh, gw) map of patch (r, c), as in the ViT paper's Fig. 7 (centre).
    """
    if pos_embed is None:
        raise ValueError("this model has no position embeddings (pos_embed='none')")
    table = pos_embed.detach().reshape(-1, pos_embed.shape[-1])[num_prefix_tokens:]  # (N, D)
    grid_h, grid_w = _check_grid(table.shape[0], grid_size)
    unit = F.normalize(table.float(), dim=-1)
    return (unit @ unit.T).reshape(grid_h, grid_w, grid_h, grid_w)  # (N, N) -> (gh, gw, gh, gw)


def patch_embedding_components(
    proj_weight: torch.Tensor, num_components: int = 28
) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-projection filters (ViT paper Fig. 7, left).

    proj_weight (D, C, P, P) (the strided convolution's weight: one filter per embedding
    channel) -> components (k, C, P, P) and the fraction of variance each explains (k,).
    Each component's sign is chosen so that its largest entry is positive.
    """
    if proj_weight.dim() != 4:
        raise ValueError(f"expected a Conv2d weight (D, C, P, P), got shape {tuple(proj_weight.shape)}")
    filters = proj_weight.detach().flatten(1).double()  # (D, C*P*P)
    max_components = min(filters.shape)
    if not 1 <= num_components <= max_components:
        raise ValueError(f"num_components must be between 1 and {max_components}, got {num_components}")
    centred = filters - filters.mean(dim=0)
    _, singular_values, vh = torch.linalg.svd(centred, full_matrices=False)  # vh (r, C*P*P)
    explained = singular_values**2 / (singular_values**2).sum()  # (r,)
    components = vh[:num_components]  # (k, C*P*P)
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))  # (k, 1)
    components = components * signs
    return components.reshape(num_components, *proj_weight.shape[1:]).float(), explained[:num_components].float()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Scale each image (..., C, H, W) to [0, 1] by its own minimum and maximum (for display)."""
    flat = images.flatten(-3)  # (..., C*H*W)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(images.shape)


# ----------------------------------------------------------------------------- DETR


def detr_encoder_attention_at(
    encoder_attention: torch.Tensor,
    feature_size: tuple[int, int],
    reference: tuple[int, int],
    layer: int = -1,
    image_index: int = 0,
) -> torch.Tensor:
    """DETR encoder self-attention of one reference pixel of the feature map: (h, w), mean over heads.

    encoder_attention: (L, B, H, h*w, h*w) (a list of per-layer (B, H, h*w, h*w) is stacked);
    reference: (row, column) on the feature map.
    """
    if isinstance(encoder_attention, (list, tuple)):
        encoder_attention = torch.stack(list(encoder_attention))
    height, width = feature_size
    row, col = reference
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"reference {reference} lies outside the {height}x{width} feature map")
    if encoder_attention.dim() != 5 or encoder_attention.shape[-1] != height * width:
        raise ValueError(
            f"encoder attention must be (layers, B, heads, {height * width}, {height * width}), "
            f"got shape {tuple(encoder_attention.shape)}"
        )
    weights = encoder_attention[layer, image_index, :, row * width + col]  # (H, h*w)
    return weights.mean(dim=0).reshape(height, width)  # (h, w)


def detr_cross_attention_maps(
    decoder_cross: torch.Tensor, feature_size: tuple[int, int], layer: int = -1, image_index: int = 0
) -> torch.Tensor:
    """Each object query's cross-attention over the feature map, mean over heads: (Q, h, w).

    decoder_cross: (L, B, H, Q, h*w) from ``DETR.forward_with_attention``.
    """
    if isinstance(decoder_cross, (list, tuple)):
        decoder_cross = torch.stack(list(decoder_cross))
    height, width = feature_size
    if decoder_cross.dim() != 5 or decoder_cross.shape[-1] != height * width:
        raise ValueError(
            f"decoder cross-attention must be (layers, B, heads, queries, {height * width}), "
            f"got shape {tuple(decoder_cross.shape)}"
        )
    weights = decoder_cross[layer, image_index].mean(dim=0)  # (Q, h*w)
    return weights.reshape(-1, height, width)  # (Q, h, w)
