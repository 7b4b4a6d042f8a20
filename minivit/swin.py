"""Chapter 8: windowed and shifted-window attention (Swin, Liu et al. 2021).

Global attention over an h x w grid of tokens costs (hw)^2. Swin cuts the grid into
non-overlapping M x M windows and attends only inside each one: (hw / M^2) windows of M^2
tokens cost hw * M^2, linear in the number of tokens. Every other block shifts the grid by
M/2 before cutting it, so information crosses window borders; the shift is a cyclic roll, and
a mask stops tokens that the roll brought together from far apart from attending to each other.
Positions enter as a learned bias per head and per relative offset, added to the scores::

    tokens (B, h*w, D) -> grid (B, h, w, D) -> [roll by -M/2] -> windows (B*nW, M*M, D)
        -> attention + relative bias (+ shift mask) -> grid -> [roll back] -> tokens (B, h*w, D)

:class:`SwinBlock` is chapter 2's pre-norm block with this attention, and with the window
covering the whole grid and no shift it *is* that block with a relative-position bias
(tests/test_swin.py). :class:`WindowViT` stacks them into a small single-stage classifier
(no patch merging: CIFAR-10's 8 x 8 grid of 4-pixel patches is too small for Swin's 4 stages).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minivit.attention import AttentionCost, measure_attention_cost
from minivit.configs import FLAG, ConfigError, Range, positive, probability, setting
from minivit.transformer import EncoderBlock, drop_path_rates
from minivit.vit import PatchEmbedding, PatchTransformerConfig, _check_image_batch, _check_model_input


def _check_grid(height: int, width: int, window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1 (tokens per window side), got {window}")
    if height % window or width % window:
        raise ValueError(f"the token grid {height}x{width} is not divisible by window={window}; choose a window "
                         f"that divides both sides (or pad the grid)")


def window_partition(grid: torch.Tensor, window: int) -> torch.Tensor:
    """Cut a grid (B, h, w, D) into windows (B * h/M * w/M, M*M, D), window by window, row by row inside."""
    if grid.dim() != 4:
        raise ValueError(f"grid must be (B, h, w, D), got shape {tuple(grid.shape)}")
    batch, height, width, dim = grid.shape
    _check_grid(height, width, window)
    windows = grid.reshape(batch, height // window, window, width // window, window, dim)  # (B, h/M, M, w/M, M, D)
    windows = windows.permute(0, 1, 3, 2, 4, 5)  # (B, h/M, w/M, M, M, D)
    return windows.reshape(-1, window * window, dim)  # (B*nW, M*M, D)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`window_partition`: windows (B*nW, M*M, D) -> grid (B, h, w, D)."""
    _check_grid(height, width, window)
    per_image = (height // window) * (width // window)
    if windows.dim() != 3 or windows.shape[1] != window * window or windows.shape[0] % per_image:
        raise ValueError(f"windows must be (B * {per_image}, {window * window}, D) for a {height}x{width} grid "
                         f"and window={window}, got shape {tuple(windows.shape)}")
    dim = windows.shape[-1]
    grid = windows.reshape(-1, height // window, width // window, window, window, dim)  # (B, h/M, w/M, M, M, D)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, dim)  # (B, h, w, D)


def relative_position_index(window: int) -> torch.Tensor:
    """(M*M, M*M) long: for tokens i, j of a window, the row of the bias table of their offset.

    Offsets (dy, dx) = (row_i - row_j, col_i - col_j) lie in [-(M-1), M-1]^2: (2M-1)^2 of them,
    numbered ``(dy + M - 1) * (2M - 1) + (dx + M - 1)``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, M*M)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, M*M, M*M), each in [0, 2M-2]
    return offsets[0] * (2 * window - 1) + offsets[1]


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset: ``forward()`` -> (heads, M*M, M*M), added to the scores."""

    def __init__(self, window: int, num_heads: int):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))  # ((2M-1)^2, heads)
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_position_index(window), persistent=False)  # (M*M, M*M)

    def forward(self) -> torch.Tensor:
        return self.table[self.index].permute(2, 0, 1)  # (M*M, M*M, heads) -> (heads, M*M, M*M)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Which tokens may attend to which inside each window of a grid rolled by ``-shift``: (nW, M*M, M*M) bool.

    After the roll, the last row and column of windows hold tokens from up to three regions of the
    original grid (its middle, and strips that wrapped around from the other edge). Each token gets
    its region's label; ``True`` where two tokens share a label. ``shift=0``: all True.
    """
    _check_grid(height, width, window)
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window) = [0, {window}), got {shift}; Swin uses window // 2")
    labels = torch.zeros(1, height, width, 1)
    if shift:
        region = 0
        for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                labels[:, rows, cols] = region
                region += 1
    labels = window_partition(labels, window).squeeze(-1)  # (nW, M*M)
    return labels[:, :, None] == labels[:, None, :]  # (nW, M*M, M*M)


class SwinBlock(EncoderBlock):
    """Chapter 2's pre-norm block with (shifted-)window attention and a relative-position bias.

    Input and output (B, h*w, D), tokens row by row on an h x w grid. ``shift`` > 0 rolls the grid
    by ``-shift`` before cutting windows (and back after), masking the wrapped-around pairs.
    The parameters are those of :class:`~minivit.transformer.EncoderBlock` plus ``rel_bias.table``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, grid_size: int | tuple[int, int], window: int,
                 shift: int = 0, dropout: float = 0.0, attn_dropout: float = 0.0, norm_eps: float = 1e-6,
                 drop_path: float = 0.0):
        super().__init__(dim, num_heads, mlp_dim, dropout, attn_dropout, norm_eps, drop_path)
        self.height, self.width = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        self.window, self.shift = window, shift
        self.rel_bias = RelativePositionBias(window, num_heads)
        mask = shifted_window_mask(self.height, self.width, window, shift)  # checks grid, window and shift
        self.register_buffer("shift_mask", mask if shift else None, persistent=False)

    def attention_bias(self, batch: int) -> torch.Tensor:
        """The float mask added to every window's scores: (B*nW or 1, heads, M*M, M*M)."""
        bias = self.rel_bias()[None]  # (1, heads, M*M, M*M)
        if self.shift_mask is None:
            return bias
        blocked = torch.zeros(self.shift_mask.shape, dtype=bias.dtype, device=bias.device)
        blocked = blocked.masked_fill(~self.shift_mask, float("-inf"))[:, None]  # (nW, 1, M*M, M*M)
        return (bias + blocked).repeat(batch, 1, 1, 1)  # (B*nW, heads, M*M, M*M), window order of window_partition

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch on normalized tokens (B, h*w, D) -> (B, h*w, D)."""
        batch, length, dim = x.shape
        if length != self.height * self.width:
            raise ValueError(f"expected {self.height}x{self.width} = {self.height * self.width} tokens, got {length}")
        grid = x.reshape(batch, self.height, self.width, dim)  # (B, h, w, D)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(grid, self.window)  # (B*nW, M*M, D)
        attended, _ = self.attn(windows, attn_mask=self.attention_bias(batch))  # (B*nW, M*M, D)
        grid = window_reverse(attended, self.window, self.height, self.width)  # (B, h, w, D)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        return grid.reshape(batch, length, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("SwinBlock makes its own mask (relative bias and shift); pass attn_mask=None")
        x = x + self.drop_path(self.drop(self.attend(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_with_attention(self, x, attn_mask=None, need_weights=True):
        raise NotImplementedError("SwinBlock does not return attention weights; use forward")


@dataclass(frozen=True)
class WindowViTConfig(PatchTransformerConfig):
    """A single-stage Swin-style classifier: patches, blocks of (shifted-)window attention, mean pool, head."""

    dim: int = positive(128, "width D of every token", sane_max=16_384)
    depth: int = positive(4, "transformer blocks (odd-numbered ones shifted when shift is on)", sane_max=256)
    num_heads: int = positive(4, "attention heads per block; must divide dim", sane_max=256)
    mlp_dim: int = positive(256, "hidden width of each block's MLP", sane_max=65_536)
    window: int = positive(4, "window side M in tokens; must divide image_size / patch_size", sane_max=1024)
    shift: bool = setting(True, "shift every second block's windows by window // 2", FLAG)
    dropout: float = probability(0.0, "dropout after the attention and in the MLPs")
    drop_path: float = probability(0.0, "stochastic-depth rate of the last block (0 in the first)")
    norm_eps: float = setting(1e-6, "LayerNorm epsilon", Range(0, 1, low_open=True))

    def check_fields(self) -> None:
        super().check_fields()
        grid = self.image_size // self.patch_size
        if grid % self.window:
            raise ConfigError("window", f"the {grid}x{grid} token grid is not divisible by window={self.window}")
        if self.shift and self.window < 2:
            raise ConfigError("shift", "a shift needs window >= 2 (it moves the windows by window // 2)")


class WindowViT(nn.Module):
    """Patch embedding, a stack of :class:`SwinBlock` (shift 0, M/2, 0, M/2, ...), LayerNorm, mean pool, head.

    No absolute position embedding: positions enter through each block's relative bias, as in Swin.
    When the window covers the whole grid no block shifts (there is nothing to cross).
    """

    def __init__(self, config: WindowViTConfig | None = None, **overrides):
        super().__init__()
        self.config = config = WindowViTConfig.resolve(config, overrides)
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.grid_size = config.image_size // config.patch_size
        self.patch_embed = PatchEmbedding(config.patch_size, config.in_channels, config.dim)
        shift = config.window // 2 if config.shift and config.window < self.grid_size else 0
        self.blocks = nn.ModuleList(
            SwinBlock(config.dim, config.num_heads, config.mlp_dim, self.grid_size, config.window,
                      shift if i % 2 else 0, config.dropout, 0.0, config.norm_eps, rate)
            for i, rate in enumerate(drop_path_rates(config.drop_path, config.depth))
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.head = nn.Linear(config.dim, config.num_classes)
        for block in self.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            nn.init.zeros_(block.attn.qkv.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_image_batch(images, self.patch_size, self.config.in_channels)
        _check_model_input(images, self.patch_embed.proj.weight)
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this WindowViT expects {self.image_size}x{self.image_size} images, got "
                             f"{images.shape[-2]}x{images.shape[-1]}; resize them")
        tokens = self.patch_embed(images)  # (B, N, D), the grid row by row
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens).mean(dim=1))  # (B, classes)


@dataclass
class WindowCost:
    """Global vs windowed attention over one grid of tokens."""

    tokens: int
    global_cost: AttentionCost
    window_cost: AttentionCost


def measure_window_attention_cost(grid_size: int, window: int, head_dim: int = 32, num_heads: int = 4,
                                  fused: bool = False, repeats: int = 3,
                                  device: torch.device | str | None = None) -> WindowCost:
    """Time and peak memory of attention over a ``grid_size`` x ``grid_size`` grid: global, then in windows.

    Windowed attention over the grid *is* ordinary attention over M*M tokens with a batch of
    (grid / M)^2 windows, so both are measured with :func:`~minivit.attention.measure_attention_cost`
    (same tokens, same heads). ``fused=False`` (the default here) runs the written-out attention,
    whose memory is the (tokens x tokens) weights that windowing saves; the bias and mask, which add
    one more (M*M)^2 tensor per head and window, are left out of both.
    """
    _check_grid(grid_size, grid_size, window)
    tokens = grid_size * grid_size
    kwargs = dict(head_dim=head_dim, num_heads=num_heads, fused=fused, repeats=repeats, device=device)
    global_cost = measure_attention_cost(tokens, **kwargs)
    window_cost = measure_attention_cost(window * window, batch_size=(grid_size // window) ** 2, **kwargs)
    return WindowCost(tokens, global_cost, window_cost)
