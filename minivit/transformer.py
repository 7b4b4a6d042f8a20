"""Chapter 2: positional encodings and the pre-norm transformer encoder block.

A pre-norm block normalizes the *input of each branch* and adds the branch back to an
un-normalized residual stream::

    x = x + Attention(LayerNorm(x))
    x = x + MLP(LayerNorm(x))

The stream itself is never normalized inside a block (only once, after the last block),
so the identity path from input to output stays clean and gradients reach early layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from minivit.attention import MultiHeadAttention


def sinusoidal_position_encoding(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need": (num_positions, dim).

    ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(p / base^(2i/dim))``.
    """
    if dim % 2 != 0:
        raise ValueError(f"dim must be even for sin/cos pairs, got {dim}")
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    frequencies = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = positions * frequencies  # (P, dim/2)
    encoding = torch.empty(num_positions, dim)
    encoding[:, 0::2], encoding[:, 1::2] = angles.sin(), angles.cos()
    return encoding


def drop_path(x: torch.Tensor, rate: float, training: bool = True) -> torch.Tensor:
    """Stochastic depth: zero a whole sample's branch with probability ``rate`` and scale the kept ones by
    ``1 / (1 - rate)``, so the expected output is unchanged. Identity when not training or ``rate == 0``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1) (the probability of dropping a sample's branch), got {rate}")
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - rate)  # (B, 1, ..., 1)
    return x * keep / (1.0 - rate)


class DropPath(nn.Module):
    """:func:`drop_path` as a module (stochastic depth, Huang et al. 2016), active in training mode only."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        drop_path(torch.zeros(1), rate, training=False)  # checks the rate
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 (first block) to ``max_rate`` (last), as DeiT
    and Swin do: early blocks, which every later one builds on, are dropped least."""
    if depth == 1:
        return [max_rate]
    return [max_rate * i / (depth - 1) for i in range(depth)]


class MLP(nn.Module):
    """The transformer's feed-forward branch: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))  # (B, N, D) -> (B, N, hidden) -> (B, N, D)


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``. Input and output (B, N, D).

    ``drop_path`` > 0 drops each branch per sample with that probability in training (stochastic depth).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, num_heads, attn_dropout=attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward_with_attention(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and its attention weights (B, H, N, N) (None if ``need_weights=False``)."""
        attended, attn_weights = self.attn(self.norm1(x), attn_mask=attn_mask, need_weights=need_weights)
        x = x + self.drop_path(self.drop(attended))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn_weights

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_attention(x, attn_mask, need_weights=False)[0]


class Encoder(nn.Module):
    """A stack of pre-norm blocks and the final LayerNorm. Input and output (B, N, D).

    ``drop_path`` is the stochastic-depth rate of the last block; earlier blocks get less
    (:func:`drop_path_rates`).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_dim, dropout, attn_dropout, norm_eps, rate)
            for rate in drop_path_rates(drop_path, depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x)

    def forward_with_attention(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder output and every block's attention weights stacked: (depth, B, H, N, N)."""
        weights = []
        for block in self.blocks:
            x, attn_weights = block.forward_with_attention(x, attn_mask)
            weights.append(attn_weights)
        return self.norm(x), torch.stack(weights)
