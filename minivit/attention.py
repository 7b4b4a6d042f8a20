"""Chapter 2: scaled dot-product attention and multi-head attention.

Shapes: B batch, H heads, N query tokens, M key tokens, D model width, d = D / H.
Masks follow the references they are tested against:

* ``attn_mask`` as in ``F.scaled_dot_product_attention``: boolean, ``True`` = may attend,
  or a float tensor added to the scores; broadcastable to (B, H, N, M);
* ``key_padding_mask`` as in ``nn.MultiheadAttention``: (B, M) boolean, ``True`` = padding, ignore.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q K^T / sqrt(d) + mask) V``, written out; returns ``(output, attn_weights)``.

    query (..., N, d), key (..., M, d), value (..., M, d_v) -> output (..., N, d_v),
    attn_weights (..., N, M). Equal to ``F.scaled_dot_product_attention``, which is faster
    but does not return the weights.
    """
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same last dimension, got {query.shape[-1]} and {key.shape[-1]}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must have the same number of tokens, got {key.shape[-2]} and {value.shape[-2]}")
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (..., N, M)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    attn_weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        attn_weights = F.dropout(attn_weights, p=dropout_p)
    return attn_weights @ value, attn_weights  # (..., N, d_v), (..., N, M)


def merge_masks(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, num_keys: int
) -> torch.Tensor | None:
    """One boolean 'may attend' mask from an ``attn_mask`` and a ``key_padding_mask`` (either may be None)."""
    if key_padding_mask is None:
        return attn_mask
    if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != num_keys:
        raise ValueError(f"key_padding_mask must be (B, {num_keys}), got {tuple(key_padding_mask.shape)}")
    keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, M)
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask.masked_fill(~keep, float("-inf"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused input projection, batch first: (B, N, D).

    The parameters are laid out as in ``nn.MultiheadAttention`` (``qkv.weight`` is its
    ``in_proj_weight``, ``proj`` its ``out_proj``), so weights copy over one to one.
    ``need_weights=False`` runs the fused kernel ``F.scaled_dot_product_attention``;
    ``need_weights=True`` runs the written-out path and also returns the weights
    (B, H, N, M), which chapter 7 draws. Both give the same output.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}; choose num_heads that divides dim "
                f"(each head gets dim / num_heads channels)"
            )
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _project(self, query, key, value) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if key is query and value is query:  # self-attention: one matrix product
            return self.qkv(query).chunk(3, dim=-1)
        weights = self.qkv.weight.chunk(3)
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query`` (B, N, D) to ``key``/``value`` (B, M, D); both default to ``query``.

        Returns ``(output (B, N, D), attn_weights (B, H, N, M) or None)``.
        """
        key = query if key is None else key
        value = key if value is None else value
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if tensor.dim() != 3 or tensor.shape[-1] != self.dim:
                raise ValueError(f"{name} must be (B, tokens, {self.dim}), got shape {tuple(tensor.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"batch/token sizes disagree: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )
        batch, num_queries, _ = query.shape
        q, k, v = self._project(query, key, value)  # each (B, tokens, D)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, H, tokens, d)
        mask = merge_masks(attn_mask, key_padding_mask, k.shape[2])
        dropout_p = self.attn_dropout if self.training else 0.0
        if need_weights:
            out, attn_weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)
        else:
            out, attn_weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
        out = out.transpose(1, 2).reshape(batch, num_queries, self.dim)  # (B, N, H, d) -> (B, N, D)
        return self.proj(out), attn_weights
