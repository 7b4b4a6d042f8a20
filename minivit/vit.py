"""Chapter 3: the Vision Transformer (ViT), from patches to logits.

An image (B, C, H, W) is cut into N = (H/P)(W/P) patches of P x P pixels, each patch is
mapped linearly to a D-dimensional token, a class token is prepended (or the tokens are
averaged at the end), position embeddings are added, and the pre-norm encoder of chapter 2
does the rest::

    images (B, C, H, W) -> patches (B, N, D) -> [cls; patches] + pos (B, T, D)
                        -> Encoder -> norm -> token 0 or mean (B, D) -> head (B, classes)

The layout of the parameters matches torchvision's ``VisionTransformer`` one to one, so its
weights load into this model (:func:`load_torchvision_weights`) and give the same outputs.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from minivit.checks import check_finite_weights
from minivit.configs import FLAG, Choice, Config, ConfigError, Range, positive, probability, setting
from minivit.transformer import Encoder, sinusoidal_position_encoding

POOLS = ("cls", "mean")
POS_EMBEDS = ("learned", "sincos2d", "none")
STEMS = ("patch", "conv")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images (B, C, H, W) into flattened patches (B, N, P*P*C), row by row.

    Each patch is flattened pixel by pixel with the channels last: (row, column, channel).
    A linear layer on these vectors is the same map as ``PatchEmbedding`` (a strided
    convolution), with the weight ``conv.weight.permute(0, 2, 3, 1).reshape(D, P*P*C)``.
    """
    batch, channels, height, width = _check_image_batch(images, patch_size)
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)  # (B, C, rows, P, cols, P)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, P, P, C)
    return patches.reshape(batch, rows * cols, patch_size * patch_size * channels)  # (B, N, P*P*C)


def _check_patch_size(patch_size) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer (pixels per patch side), got {patch_size!r}")


def _check_model_input(images, weight: torch.Tensor) -> None:
    """Images for a model: a floating-point tensor of the model's dtype (autocast may mix them)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}; "
                        f"use torch.as_tensor(images)")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}; convert uint8 pixels with "
                        f"minivit.data.augment.to_float(images) (and normalize them as in training)")
    if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
        raise TypeError(f"images have dtype {images.dtype} but the model's weights are {weight.dtype}; "
                        f"use images.to({weight.dtype}) (or model.to({images.dtype}))")


def _check_image_batch(images: torch.Tensor, patch_size: int, in_channels: int | None = None) -> tuple[int, ...]:
    _check_patch_size(patch_size)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if in_channels is not None and channels != in_channels:
        raise ValueError(
            f"expected images with {in_channels} channels, got {channels} (shape {tuple(images.shape)}); "
            f"convert them (e.g. grayscale -> RGB) or build the model with in_channels={channels}"
        )
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"resize or crop the images to a multiple of {patch_size}"
        )
    return batch, channels, height, width


class PatchEmbedding(nn.Module):
    """Patches to tokens with one strided convolution (kernel = stride = P): (B, C, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        _check_patch_size(patch_size)
        self.patch_size, self.in_channels, self.dim = patch_size, in_channels, dim
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_image_batch(images, self.patch_size, self.in_channels)
        _check_model_input(images, self.proj.weight)
        tokens = self.proj(images)  # (B, D, H/P, W/P)
        return tokens.flatten(2).transpose(1, 2)  # (B, N, D), patches row by row


class ConvStem(nn.Module):
    """Tokens from a small conv stack instead of one patch convolution (Xiao et al. 2021, "Early
    convolutions help transformers see better"): (B, C, H, W) -> (B, N, D) on the same P x P grid.

    log2(P) blocks of 3x3 convolution with stride 2, BatchNorm and ReLU (widths doubling up to D/2),
    then a 1x1 convolution to D (``proj``, the counterpart of ``PatchEmbedding.proj``). Each token
    then sees an overlapping window of the image, with the inductive bias of a CNN in front.
    """

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        _check_patch_size(patch_size)
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"a conv stem needs a patch_size that is a power of 2 >= 2 (one stride-2 conv per "
                             f"halving), got {patch_size}; use stem='patch' for other sizes")
        self.patch_size, self.in_channels, self.dim = patch_size, in_channels, dim
        halvings = patch_size.bit_length() - 1
        widths = [max(dim // 2 ** (halvings - i), 8) for i in range(halvings)]  # e.g. D/4, D/2 for P = 4
        layers, channels = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_image_batch(images, self.patch_size, self.in_channels)
        _check_model_input(images, self.proj.weight)
        tokens = self.proj(self.convs(images))  # (B, D, H/P, W/P)
        return tokens.flatten(2).transpose(1, 2)  # (B, N, D), row by row


def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings (grid_h * grid_w, dim), patches row by row.

    The first half of the channels encodes the row with chapter 2's 1D sinusoidal encoding,
    the second half the column (as in MoCo v3 and MAE).
    """
    if dim % 4 != 0:
        raise ValueError(
            f"dim must be divisible by 4 for 2D sin-cos embeddings (sin/cos for rows and columns), got {dim}"
        )
    rows = sinusoidal_position_encoding(grid_h, dim // 2, base)  # (grid_h, D/2)
    cols = sinusoidal_position_encoding(grid_w, dim // 2, base)  # (grid_w, D/2)
    grid = torch.cat(
        [rows[:, None, :].expand(grid_h, grid_w, dim // 2), cols[None, :, :].expand(grid_h, grid_w, dim // 2)], dim=-1
    )  # (grid_h, grid_w, D)
    return grid.reshape(grid_h * grid_w, dim)


@dataclass(frozen=True)
class PatchTransformerConfig(Config):
    """The fields every patch-based transformer classifier shares (ViT, chapter 8's WindowViT), and their rules."""

    image_size: int = positive(32, "side of the (square) input images, pixels", sane_max=4096)
    patch_size: int = positive(4, "side of a patch, pixels; image_size must be a multiple", sane_max=1024)
    in_channels: int = positive(3, "channels of the input images", sane_max=64)
    num_classes: int = positive(10, "outputs of the classification head", sane_max=100_000)
    dim: int = positive(192, "width D of every token", sane_max=16_384)
    depth: int = positive(6, "transformer blocks", sane_max=256)
    num_heads: int = positive(3, "attention heads per block; must divide dim", sane_max=256)
    mlp_dim: int = positive(384, "hidden width of each block's MLP", sane_max=65_536)

    def check_fields(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError("patch_size", f"image_size={self.image_size} is not divisible by "
                                            f"patch_size={self.patch_size}")
        if self.dim % self.num_heads:
            raise ConfigError("num_heads", f"dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                                           f"each head gets dim / num_heads channels")


@dataclass(frozen=True)
class ViTConfig(PatchTransformerConfig):
    """Everything that defines a ViT's architecture (the weights aside); see ``minivit.models.MODEL_CONFIGS``."""

    dropout: float = probability(0.0, "dropout after the embeddings and in the MLPs")
    attn_dropout: float = probability(0.0, "dropout on the attention weights")
    pool: str = setting("cls", "logits from the class token (cls) or the mean of all tokens", Choice(POOLS))
    pos_embed: str = setting("learned", "position embeddings: learned, fixed 2D sin-cos, or none",
                             Choice(POS_EMBEDS))
    norm_eps: float = setting(1e-6, "LayerNorm epsilon", Range(0, 1, low_open=True))
    dynamic_size: bool = setting(False, "accept other image sizes (multiples of patch_size), resampling "
                                        "the position embeddings", FLAG)
    stem: str = setting("patch", "tokens from one strided patch convolution (patch) or a small conv stack (conv)",
                        Choice(STEMS))
    drop_path: float = probability(0.0, "stochastic depth: the rate of the last block (rising from 0 in the first)")
    distill_token: bool = setting(False, "add DeiT's distillation token and its head (the logits average both)",
                                  FLAG)

    def check_fields(self) -> None:
        super().check_fields()
        if self.pos_embed == "sincos2d" and self.dim % 4:
            raise ConfigError("dim", f"dim must be divisible by 4 for 2D sin-cos embeddings, got {self.dim}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError("stem", f"stem='conv' needs a patch_size that is a power of 2 >= 2, got "
                                      f"{self.patch_size}; use stem='patch'")
        if self.distill_token and self.pool != "cls":
            raise ConfigError("distill_token", "a distillation token sits beside the class token: use pool='cls'")


class ViT(nn.Module):
    """Vision Transformer: patch embedding, class token, position embeddings, pre-norm encoder, head.

    ``ViT(config)`` with a :class:`ViTConfig`, or ``ViT(dim=128, depth=4, ...)`` (the fields of
    ``ViTConfig``, the others at their defaults). ``model.config`` is the ``ViTConfig``.
    """

    def __init__(self, config: ViTConfig | None = None, **overrides):
        super().__init__()
        self.config = config = ViTConfig.resolve(config, overrides)
        image_size, patch_size, pool, dim = config.image_size, config.patch_size, config.pool, config.dim
        self.dynamic_size = config.dynamic_size  # accept other image sizes (multiples of P), resampling positions
        self.image_size, self.patch_size, self.pool = image_size, patch_size, pool
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.num_extra = (1 if pool == "cls" else 0) + (1 if config.distill_token else 0)  # class (+ distillation)
        self.num_tokens = self.num_patches + self.num_extra  # T

        stem = PatchEmbedding if config.stem == "patch" else ConvStem
        self.patch_embed = stem(patch_size, config.in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.empty(1, self.num_tokens, dim))
        elif config.pos_embed == "sincos2d":  # fixed, rebuilt from the config: not saved in checkpoints
            table = sincos_2d_position_embedding(self.grid_size, self.grid_size, dim)  # (N, D)
            if self.num_extra:
                table = torch.cat([torch.zeros(self.num_extra, dim), table])  # class/distillation: no position
            self.register_buffer("pos_embed", table[None], persistent=False)  # (1, T, D)
        else:
            self.pos_embed = None
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(dim, config.depth, config.num_heads, config.mlp_dim, config.dropout, config.attn_dropout,
                               config.norm_eps, config.drop_path)
        self.head = nn.Linear(dim, config.num_classes)
        if config.distill_token:  # DeiT: a second learned token, read out by its own head
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.head_dist = nn.Linear(dim, config.num_classes)
        else:
            self.dist_token = self.head_dist = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialization as in torchvision's ViT (itself from the original JAX code)."""
        proj = self.patch_embed.proj
        fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]  # C * P * P for the patch stem
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.encoder.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)  # as nn.MultiheadAttention
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.proj.bias)
            for linear in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.head_dist is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
            nn.init.zeros_(self.head_dist.weight)
            nn.init.zeros_(self.head_dist.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens of the encoder (B, T, D)."""
        _check_image_batch(images, self.patch_size, self.patch_embed.in_channels)
        _check_model_input(images, self.patch_embed.proj.weight)
        height, width = images.shape[-2:]
        if (height, width) != (self.image_size, self.image_size) and not self.dynamic_size:
            raise ValueError(
                f"this ViT expects {self.image_size}x{self.image_size} images (its position embeddings have "
                f"{self.num_patches} patches), got {height}x{width}; resize the images, or build the ViT with "
                f"dynamic_size=True to resample its position embeddings to other sizes"
            )
        tokens = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            extra = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
            tokens = torch.cat([t.expand(tokens.shape[0], -1, -1) for t in extra] + [tokens], dim=1)  # (B, T, D)
        if self.pos_embed is not None:
            tokens = tokens + self.position_embedding(height // self.patch_size, width // self.patch_size)
        return self.dropout(tokens)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings (1, T, D) for a grid of rows x cols patches.

        The model's own grid returns ``pos_embed`` itself; another grid (``dynamic_size=True``,
        e.g. smaller images early in a progressive-resizing run) gets the patch part of the
        table resampled bicubically, as a function on the image plane (as timm and DeiT III do).
        """
        if (rows, cols) == (self.grid_size, self.grid_size):
            return self.pos_embed
        extra = self.num_extra
        cls_pos, grid = self.pos_embed[:, :extra], self.pos_embed[:, extra:]  # (1, extra, D), (1, N, D)
        dim = grid.shape[-1]
        grid = grid.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = nn.functional.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False,
                                         antialias=rows < self.grid_size or cols < self.grid_size)
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)  # (1, rows*cols, D)
        return torch.cat([cls_pos, grid], dim=1)  # (1, T, D)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's output tokens after the final norm: (B, T, D)."""
        return self.encoder(self.embed(images))

    def pool_and_classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes), from the class token or the mean of all tokens.

        With a distillation token: the mean of the class head's and the distillation head's logits (DeiT).
        """
        if self.head_dist is not None:
            return sum(self.both_heads(tokens)) / 2
        pooled = tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1)  # (B, D)
        return self.head(pooled)

    def both_heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeiT's two outputs from the tokens (B, T, D): class-token logits and distillation-token logits."""
        if self.head_dist is None:
            raise ValueError("this ViT has no distillation token; build it with distill_token=True")
        return self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])  # (B, classes) each

    def forward(self, images: torch.Tensor, both_heads: bool = False):
        """Logits (B, classes); ``both_heads=True`` (distillation token only): the pair (class, distillation)."""
        tokens = self.forward_features(images)
        return self.both_heads(tokens) if both_heads else self.pool_and_classify(tokens)

    def forward_with_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and every layer's attention weights (depth, B, H, T, T)."""
        tokens, attn_weights = self.encoder.forward_with_attention(self.embed(images))
        return self.pool_and_classify(tokens), attn_weights


def build_vit(name: str, **overrides) -> ViT:
    """A ViT of a named configuration of ``minivit.models.MODEL_CONFIGS``, with any field overridden."""
    from minivit.models import MODEL_CONFIGS, build_model

    if not isinstance(MODEL_CONFIGS.get(name), ViTConfig):
        raise ValueError(f"unknown ViT configuration {name!r}; choose one of {', '.join(_vit_configs())}")
    return build_model(name, **overrides)


def _vit_configs() -> dict[str, ViTConfig]:
    from minivit.models import MODEL_CONFIGS

    return {name: config for name, config in MODEL_CONFIGS.items() if isinstance(config, ViTConfig)}


def __getattr__(name: str):
    if name == "CONFIGS":  # the ViT entries of minivit.models.MODEL_CONFIGS (a view: the registry imports this module)
        return _vit_configs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# torchvision key (with {i} for the layer) -> minivit key
_TORCHVISION_KEYS = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "encoder.norm.weight",
    "encoder.ln.bias": "encoder.norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}
_TORCHVISION_LAYER_KEYS = {
    "ln_1": "norm1",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    "mlp.linear_1": "mlp.fc1",  # names of torchvision < 0.13
    "mlp.linear_2": "mlp.fc2",
}
_LAYER_KEY = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")


def _torchvision_key_to_minivit(key: str) -> str | None:
    if key in _TORCHVISION_KEYS:
        return _TORCHVISION_KEYS[key]
    match = _LAYER_KEY.fullmatch(key)
    if match is None:
        return None
    layer, rest = match.groups()
    for old, new in _TORCHVISION_LAYER_KEYS.items():
        if rest == old or rest.startswith(old + "."):
            return f"encoder.blocks.{layer}.{new}{rest[len(old):]}"
    return None


def convert_torchvision_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ``VisionTransformer`` state dict to minivit's keys (shapes unchanged).

    Keys that have no counterpart (e.g. ``heads.pre_logits``, or a ResNet's) keep their names
    prefixed with ``unmapped:`` so that :func:`load_torchvision_weights` can name them.
    """
    converted = {}
    for key, value in state_dict.items():
        new_key = _torchvision_key_to_minivit(key)
        converted[new_key if new_key is not None else f"unmapped:{key}"] = value
    return converted


def _shape(tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def load_torchvision_weights(model: ViT, state_dict: Mapping[str, torch.Tensor]) -> ViT:
    """Load a torchvision ``VisionTransformer`` state dict into ``model`` (in place); returns the model.

    Raises ``ValueError`` naming every missing, unexpected and wrongly shaped key when the
    state dict belongs to another configuration (e.g. ``vit_b_32``) or another architecture.
    """
    if model.config.stem != "patch" or model.config.distill_token:
        raise ValueError("torchvision's VisionTransformer has a patch stem and no distillation token; build the "
                         "ViT with stem='patch', distill_token=False")
    if model.pool != "cls" or not isinstance(model.pos_embed, nn.Parameter):
        raise ValueError(
            "torchvision's VisionTransformer uses a class token and learned position embeddings; "
            f"build the ViT with pool='cls', pos_embed='learned' (got pool={model.pool!r}, "
            f"pos_embed={model.config.pos_embed!r})"
        )
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        raise ValueError("pass a state dict (tv_model.state_dict()) or use vit_from_torchvision(tv_model)")
    converted = convert_torchvision_state_dict(state_dict)
    target = model.state_dict()
    if not any(key in target for key in converted):
        first_keys = ", ".join(list(state_dict)[:5])
        raise ValueError(
            f"this is not a torchvision VisionTransformer state dict: none of its {len(state_dict)} keys "
            f"({first_keys}, ...) has a counterpart in minivit's ViT (expected keys such as class_token, "
            "conv_proj.weight, encoder.pos_embedding, encoder.layers.encoder_layer_0.ln_1.weight)"
        )
    missing = [key for key in target if key not in converted]
    unexpected = [key.removeprefix("unmapped:") for key in converted if key not in target]
    mismatched = [
        f"{key}: checkpoint {_shape(converted[key])} vs model {_shape(target[key])}"
        for key in target
        if key in converted and _shape(converted[key]) != _shape(target[key])
    ]
    if missing or unexpected or mismatched:
        def listing(items, limit=8):
            shown = ", ".join(items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {listing(mismatched)}")
        if missing:
            problems.append(f"{len(missing)} missing key(s) (minivit names): {listing(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) (torchvision names): {listing(unexpected)}")
        summary = ", ".join(f"{key}={getattr(model.config, key)}"
                            for key in ("image_size", "patch_size", "dim", "depth", "num_classes"))
        raise ValueError(
            "state dict does not fit this ViT: " + "; ".join(problems)
            + f". The ViT has {summary}; is the state dict a torchvision VisionTransformer of that configuration? "
            "(vit_from_torchvision(tv_model) builds the matching ViT.)"
        )
    check_finite_weights(state_dict, "the torchvision state dict",
                         "these weights would make every output NaN; download them again")
    model.load_state_dict(converted)
    return model


def vit_from_torchvision(tv_model: nn.Module) -> ViT:
    """A minivit ViT with the configuration and weights of a torchvision ``VisionTransformer``."""
    from torchvision.models import VisionTransformer

    if not isinstance(tv_model, VisionTransformer):
        raise ValueError(f"expected a torchvision VisionTransformer, got {type(tv_model).__name__}")
    if tv_model.representation_size is not None:
        raise ValueError(
            f"torchvision ViTs with a pre-logits layer (representation_size={tv_model.representation_size}) "
            "are not supported: minivit's head is a single Linear layer"
        )
    first_layer = tv_model.encoder.layers[0]
    model = ViT(
        image_size=tv_model.image_size,
        patch_size=tv_model.patch_size,
        in_channels=tv_model.conv_proj.in_channels,
        num_classes=tv_model.num_classes,
        dim=tv_model.hidden_dim,
        depth=len(tv_model.encoder.layers),
        num_heads=first_layer.num_heads,
        mlp_dim=tv_model.mlp_dim,
        dropout=tv_model.dropout,
        attn_dropout=tv_model.attention_dropout,
        norm_eps=tv_model.encoder.ln.eps,
    )
    return load_torchvision_weights(model, tv_model.state_dict())


# ----------------------------------------------------------------------------- torchvision's ImageNet weights


def download_vit_b16_imagenet(timeout_s: float = 10.0) -> dict | None:
    """torchvision's ImageNet ViT-B/16 state dict (``ViT_B_16_Weights.IMAGENET1K_V1``, 81.1% top-1), or ``None``.

    Downloaded once (about 330 MB) with :func:`minivit.downloads.download_state_dict`, the same
    path as the official DETR-R50; offline it prints one sentence and returns ``None``.
    """
    from torchvision.models import ViT_B_16_Weights

    from minivit.downloads import download_state_dict

    weights = ViT_B_16_Weights.IMAGENET1K_V1
    size = f"about {weights.meta['_file_size']:.0f} MB" if "_file_size" in weights.meta else None
    return download_state_dict(weights.url, "torchvision's ImageNet ViT-B/16 weights", size, timeout_s)


def load_pretrained_vit_b16(timeout_s: float = 10.0) -> ViT | None:
    """minivit's ViT-B/16 with torchvision's ImageNet weights, in eval mode; ``None`` (and one printed line) offline.

    Its input is :func:`minivit.photos.imagenet_preprocess` (resize 256, centre crop 224, ImageNet
    mean and std); its 1000 outputs are named by :func:`minivit.photos.imagenet_classes`.
    """
    state_dict = download_vit_b16_imagenet(timeout_s)
    if state_dict is None:
        return None
    return load_torchvision_weights(build_vit("vit_b_16"), state_dict).eval()
