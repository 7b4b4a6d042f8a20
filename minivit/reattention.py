"""Chapter 9: DeepViT's re-attention (Zhou et al., 2021), against attention collapse.

In a deep ViT the attention maps of neighbouring layers can become nearly equal ("attention
collapse", measured by :func:`minivit.viz.cross_layer_similarity`). Re-attention mixes each
layer's H attention maps with a learnable H x H matrix theta before they weigh the values::

    A = softmax(Q K^T / sqrt(d))              (B, H, T, T), one map per head
    A' = Norm(theta^T A): A'_g = sum_h theta[h, g] A_h, then a norm over the heads
    output = A' V                             (B, H, T, d) -> heads merged -> proj

The norm is a ``BatchNorm2d`` over the head channels, as in the authors' code (``"batch"``);
``"layer"`` is a LayerNorm across the heads at each (query, key) position (as in
lucidrains' vit-pytorch); ``"none"`` leaves the mixed maps as they are. theta starts as the
identity, so an untrained re-attention block with ``norm="none"`` is plain attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from minivit.attention import MultiHeadAttention, merge_masks
from minivit.vit import ViT

NORMS = ("batch", "layer", "none")


class ReAttention(MultiHeadAttention):
    """Multi-head self-attention whose H maps are mixed by a learnable ``theta`` (H, H) and normalized.

    Same parameters as :class:`~minivit.attention.MultiHeadAttention` (``qkv``, ``proj``) plus
    ``theta`` and the norm's. Self-attention only. Returns ``(output (B, T, D), maps (B, H, T, T) or
    None)``: with ``reported_maps="mixed"`` (the default) the re-attention maps A' that weigh the
    values, with ``"softmax"`` the softmax maps A before the mixing (comparable with a plain
    attention layer's: a normalized A' has mean zero and is not a distribution).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 norm: str = "batch"):
        super().__init__(dim, num_heads, qkv_bias, attn_dropout)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS} (batch: BatchNorm2d over the heads, as DeepViT's code; "
                             f"layer: LayerNorm across the heads; none), got {norm!r}")
        self.norm_kind = norm
        self.reported_maps = "mixed"  # or "softmax": which maps forward(need_weights=True) returns
        self.theta = nn.Parameter(torch.eye(num_heads))  # (H, H): theta[h, g] = weight of head h in new map g
        if norm == "batch":
            self.head_norm = nn.BatchNorm2d(num_heads)
        elif norm == "layer":
            self.head_norm = nn.LayerNorm(num_heads)
        else:
            self.head_norm = None

    def mix(self, attention: torch.Tensor) -> torch.Tensor:
        """Attention maps (B, H, T, T) -> re-attention maps (B, H, T, T): theta^T A, then the norm."""
        mixed = torch.einsum("bhij,hg->bgij", attention, self.theta)  # (B, H, T, T)
        if self.norm_kind == "batch":
            return self.head_norm(mixed)  # statistics per head over (B, T, T)
        if self.norm_kind == "layer":
            return self.head_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # across the H heads
        return mixed

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("ReAttention is self-attention only: call it with the tokens alone, attn(x)")
        if query.dim() != 3 or query.shape[-1] != self.dim:
            raise ValueError(f"query must be (B, tokens, {self.dim}), got shape {tuple(query.shape)}")
        batch, tokens, _ = query.shape
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for t in self.qkv(query).chunk(3, dim=-1))  # each (B, H, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, T)
        mask = merge_masks(attn_mask, key_padding_mask, tokens)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        softmax = scores.softmax(dim=-1)  # (B, H, T, T)
        attention = self.mix(softmax)  # (B, H, T, T)
        if self.training and self.attn_dropout > 0:
            attention = nn.functional.dropout(attention, self.attn_dropout)
        out = (attention @ v).transpose(1, 2).reshape(batch, tokens, self.dim)  # (B, H, T, d) -> (B, T, D)
        if not need_weights:
            return self.proj(out), None
        return self.proj(out), softmax if self.reported_maps == "softmax" else attention


def use_reattention(model: ViT, norm: str = "batch") -> ViT:
    """Replace every block's attention of ``model`` by :class:`ReAttention` (in place), keeping its weights.

    theta starts as the identity. Returns the model.
    """
    if not isinstance(model, ViT):
        raise TypeError(f"model must be a minivit ViT, got {type(model).__name__}")
    for block in model.encoder.blocks:
        old = block.attn
        new = ReAttention(old.dim, old.num_heads, old.qkv.bias is not None, old.attn_dropout, norm)
        new.load_state_dict(old.state_dict(), strict=False)  # qkv and proj; theta and the norm are new
        block.attn = new.to(old.qkv.weight.device)
    return model


def report_maps(model: nn.Module, which: str) -> nn.Module:
    """Make every :class:`ReAttention` of ``model`` report ``"mixed"`` (A') or ``"softmax"`` (A) maps."""
    if which not in ("mixed", "softmax"):
        raise ValueError(f"which must be 'mixed' (the re-attention maps) or 'softmax' (before mixing), got {which!r}")
    for module in model.modules():
        if isinstance(module, ReAttention):
            module.reported_maps = which
    return model


def reattention_vit(norm: str = "batch", **config) -> ViT:
    """A ViT (``ViTConfig`` fields as keywords) with re-attention in every block."""
    return use_reattention(ViT(**config), norm)
