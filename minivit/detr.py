"""Chapter 5: DETR, the DEtection TRansformer (Carion et al., 2020), forward pass.

The pieces, in the order an image meets them::

    images (B, 3, H, W), padding mask (B, H, W)
      -> Backbone (ResNet-50, frozen batch norm)       features (B, 2048, H/32, W/32), mask (B, h, w)
      -> input_proj (1x1 conv)                         (B, D, h, w)
      -> PositionEmbeddingSine (from the mask)         (B, D, h, w)
      -> DETRTransformer: post-norm encoder over the h*w tokens, decoder with Q object queries;
         positions are added to queries and keys in *every* attention layer (``position_placement``
         "all", the official code; "decoder", "input" and "none" are the paper's Table 3 variants)
                                                       hs (layers, B, Q, D), one per decoder layer
      -> class_embed (Linear) / bbox_embed (3-layer MLP, sigmoid)
                                                       logits (B, Q, classes + 1), boxes (B, Q, 4) cxcywh in [0, 1]

The architecture and the parameter names follow the official implementation
(facebookresearch/detr, models/detr.py, transformer.py, backbone.py,
position_encoding.py), so the public checkpoint ``detr-r50-e632da11.pth`` loads through a
short, documented key map (:data:`OFFICIAL_KEY_MAP`, :func:`load_official_detr_state_dict`).
:class:`MinimalDETR` is the paper's ~40-line demo model, for the shapes walk-through.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from minivit.attention import MultiHeadAttention
from minivit.boxes import box_cxcywh_to_xyxy, denormalize_boxes
from minivit.checks import check_finite_weights
from minivit.configs import FLAG, Choice, Config, ConfigError, Sizes, positive, probability, setting
from minivit.downloads import download_state_dict

# ----------------------------------------------------------------------------- backbones


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters: ``x * scale + shift`` per channel.

    All four tensors are buffers (not parameters), so nothing trains and the batch size
    does not matter (DETR trains with 2-4 images per GPU). Equal to
    ``torchvision.ops.FrozenBatchNorm2d``; ``num_batches_tracked`` in a loaded state dict
    (it comes with ordinary BatchNorm2d weights) is dropped.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]  # (B, C, H, W)


def resnet50(pretrained: bool = False, norm_layer=None) -> nn.Module:
    """torchvision's ResNet-50; with ``pretrained=True`` try the ImageNet weights and fall back
    to random weights (with a warning that says so) when they cannot be downloaded."""
    kwargs = {} if norm_layer is None else {"norm_layer": norm_layer}
    if pretrained:
        try:
            return torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1, **kwargs)
        except Exception as error:  # no network, blocked download, corrupt cache
            warnings.warn(
                f"could not load the ImageNet weights of ResNet-50 ({type(error).__name__}: {error}); "
                "the backbone starts from RANDOM weights",
                stacklevel=2,
            )
    return torchvision.models.resnet50(weights=None, **kwargs)


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Padding mask (B, H, W) -> (B, h, w) by nearest-neighbour sampling, as in DETR."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


class Backbone(nn.Module):
    """ResNet-50 without avgpool and fc, with frozen batch norm: (B, 3, H, W) -> (B, 2048, H/32, W/32).

    ``body`` holds conv1, bn1, relu, maxpool, layer1..layer4 (the official names). As in
    DETR, the stem and layer1 never train; ``train_backbone=False`` freezes all of it.
    """

    num_channels = 2048
    stride = 32

    def __init__(self, pretrained: bool = False, train_backbone: bool = True):
        super().__init__()
        resnet = resnet50(pretrained, norm_layer=FrozenBatchNorm2d)
        self.body = nn.Sequential(OrderedDict((name, m) for name, m in resnet.named_children()
                                              if name not in ("avgpool", "fc")))
        for name, parameter in self.body.named_parameters():
            if not train_backbone or not name.startswith(("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)  # (B, 2048, H/32, W/32)
        return features, downsample_mask(mask, features.shape[-2:])


class SmallConvBackbone(nn.Module):
    """A tiny CNN backbone for small images (chapter 6): stages of [3x3 conv stride 2, 3x3 conv],
    each followed by batch norm and ReLU. Four stages: stride 16, (B, 3, H, W) -> (B, C, H/16, W/16).

    Padded pixels are set to zero after every conv, so for images whose sizes are multiples
    of the stride an image padded inside a batch gets exactly the features it gets alone.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128), in_channels: int = 3):
        super().__init__()
        if len(widths) == 0 or min(widths) <= 0:
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {widths}")
        layers, channels = [], in_channels
        for width in widths:
            for stride in (2, 1):
                layers.append(nn.Sequential(
                    nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ))
                channels = width
        self.layers = nn.ModuleList(layers)
        self.num_channels = channels
        self.stride = 2 ** len(widths)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.masked_fill(mask[:, None], 0.0)
        for layer in self.layers:
            x = layer(x)
            mask = downsample_mask(mask, x.shape[-2:])
            x = x.masked_fill(mask[:, None], 0.0)  # padding stays zero, like the convs' own zero padding
        return x, mask  # (B, C, H/stride, W/stride), (B, H/stride, W/stride)


# ----------------------------------------------------------------------------- position encodings


class PositionEmbeddingSine(nn.Module):
    """DETR's 2D sine encoding: half the channels encode y, half encode x, each with sin/cos pairs.

    Positions count only the real (unpadded) pixels and, with ``normalize=True``, are scaled
    to (0, 2*pi] by the image's own height and width, so an image padded in a batch gets the
    same encoding as alone. mask (B, h, w) -> (B, 2 * num_pos_feats, h, w), y channels first.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, h, w): 1, 2, ... down each column
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, h, w): 1, 2, ... along each row
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        frequencies = self.temperature ** (2 * (index // 2) / self.num_pos_feats)  # (F,), pairs share one
        pos_x = x_embed[..., None] / frequencies  # (B, h, w, F)
        pos_y = y_embed[..., None] / frequencies
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)  # interleave sin, cos
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, h, w)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute 2D positions: a column embedding and a row embedding, concatenated.

    mask (B, h, w) -> (B, 2 * num_pos_feats, h, w), x (column) channels first; at most
    ``max_size`` rows and columns.
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        batch, height, width = mask.shape
        if height > self.max_size or width > self.max_size:
            raise ValueError(
                f"feature map {height}x{width} is larger than max_size={self.max_size}; "
                "use smaller images or a larger max_size"
            )
        x_emb = self.col_embed(torch.arange(width, device=mask.device))  # (w, F)
        y_emb = self.row_embed(torch.arange(height, device=mask.device))  # (h, F)
        # (h, w, 2F)
        pos = torch.cat([x_emb[None].expand(height, -1, -1), y_emb[:, None].expand(-1, width, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)  # (B, 2F, h, w)


# ----------------------------------------------------------------------------- transformer


class DETREncoderLayer(nn.Module):
    """Post-norm encoder layer; the positions are added to queries and keys, never to values."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, attn_dropout=dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src, pos, key_padding_mask=None, need_weights=False):
        """src, pos (B, N, D), key_padding_mask (B, N) -> (B, N, D), weights (B, H, N, N) or None."""
        query_key = src + pos
        attended, weights = self.self_attn(query_key, query_key, src, key_padding_mask=key_padding_mask,
                                           need_weights=need_weights)
        src = self.norm1(src + self.dropout1(attended))
        src = self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))
        return src, weights


class DETRDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention among the queries, cross-attention to the image, MLP.

    The object queries are the *positions* of the decoder (``query_pos``): they are added to
    the queries and keys of self-attention and to the queries of cross-attention.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, attn_dropout=dropout)
        self.cross_attn = MultiHeadAttention(dim, num_heads, attn_dropout=dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos, memory_key_padding_mask=None, need_weights=False):
        """tgt, query_pos (B, Q, D); memory, pos (B, N, D) -> (B, Q, D), self weights (B, H, Q, Q),
        cross weights (B, H, Q, N)."""
        query_key = tgt + query_pos
        attended, self_weights = self.self_attn(query_key, query_key, tgt, need_weights=need_weights)
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended, cross_weights = self.cross_attn(
            tgt + query_pos, memory + pos, memory, key_padding_mask=memory_key_padding_mask, need_weights=need_weights
        )
        tgt = self.norm2(tgt + self.dropout2(attended))
        tgt = self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))
        return tgt, self_weights, cross_weights


class DETREncoder(nn.Module):
    """A stack of encoder layers (no final norm: post-norm layers end normalized already)."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DETREncoderLayer(dim, num_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))

    def forward(self, src, pos, key_padding_mask=None, need_weights=False):
        """src, pos (B, N, D), key_padding_mask (B, N) -> memory (B, N, D), weights (L, B, H, N, N) or None."""
        memory, all_weights = src, []
        for layer in self.layers:
            memory, weights = layer(memory, pos, key_padding_mask, need_weights)
            all_weights.append(weights)
        return memory, torch.stack(all_weights) if need_weights else None


class DETRDecoder(nn.Module):
    """A stack of decoder layers and one shared final LayerNorm, applied to every layer's output."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DETRDecoderLayer(dim, num_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, memory, pos, query_pos, memory_key_padding_mask=None, need_weights=False):
        """tgt, query_pos (B, Q, D); memory, pos (B, N, D) -> every layer's normalized output (L, B, Q, D),
        self weights (L, B, H, Q, Q) and cross weights (L, B, H, Q, N), or None, None."""
        intermediate, self_weights, cross_weights = [], [], []
        for layer in self.layers:
            tgt, weights_self, weights_cross = layer(tgt, memory, pos, query_pos, memory_key_padding_mask, need_weights)
            intermediate.append(self.norm(tgt))  # the shared final norm, on every layer's output (aux losses)
            self_weights.append(weights_self)
            cross_weights.append(weights_cross)
        if not need_weights:
            return torch.stack(intermediate), None, None
        return torch.stack(intermediate), torch.stack(self_weights), torch.stack(cross_weights)


#: Where the spatial positional encoding goes (the DETR paper's Table 3); the object queries
#: (the decoder's learned output positions) go into every decoder attention in all of them.
POSITION_PLACEMENTS = {
    "all": "added to the queries and keys of every encoder self-attention and to the keys of every "
           "decoder cross-attention (the official code; Table 3: 40.6 AP)",
    "decoder": "only to the keys of every decoder cross-attention (Table 3: 39.3 AP)",
    "input": "added once to the encoder's input tokens, in no attention (Table 3: 39.2 AP)",
    "none": "nowhere: the transformer sees no spatial position (Table 3: 32.8 AP)",
}


class DETRTransformer(nn.Module):
    """DETR's encoder-decoder (the official ``Transformer`` with ``normalize_before=False``,
    ``return_intermediate_dec=True``): no final encoder norm; the decoder returns the
    normalized output of every layer, for the auxiliary losses. ``position_placement``: where the
    spatial positions go, one of :data:`POSITION_PLACEMENTS` ("all" is the official code)."""

    def __init__(self, dim=256, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, position_placement: str = "all"):
        super().__init__()
        if position_placement not in POSITION_PLACEMENTS:
            raise ValueError(f"position_placement must be one of {', '.join(map(repr, POSITION_PLACEMENTS))}, "
                             f"got {position_placement!r}")
        self.position_placement = position_placement
        self.encoder = DETREncoder(num_encoder_layers, dim, num_heads, dim_feedforward, dropout)
        self.decoder = DETRDecoder(num_decoder_layers, dim, num_heads, dim_feedforward, dropout)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, src, mask, query_embed, pos, need_weights=False):
        """src, pos (B, D, h, w), mask (B, h, w), query_embed (Q, D) ->
        hs (decoder layers, B, Q, D), memory (B, h*w, D), attention {name: stacked weights}
        (empty unless need_weights)."""
        batch = src.shape[0]
        src = src.flatten(2).transpose(1, 2)  # (B, N, D), N = h*w
        pos = pos.flatten(2).transpose(1, 2)  # (B, N, D)
        key_padding_mask = mask.flatten(1)  # (B, N)
        query_pos = query_embed[None].expand(batch, -1, -1)  # (B, Q, D)

        encoder_pos = decoder_pos = pos
        if self.position_placement != "all":  # zeros: adding them changes nothing, so the layers stay the same
            encoder_pos = torch.zeros_like(pos)
            decoder_pos = pos if self.position_placement == "decoder" else encoder_pos
            if self.position_placement == "input":
                src = src + pos  # once, before the first encoder layer: the values carry the positions too

        memory, encoder_weights = self.encoder(src, encoder_pos, key_padding_mask, need_weights)  # (B, N, D)
        tgt = torch.zeros_like(query_pos)  # the decoder starts from zeros
        hs, self_weights, cross_weights = self.decoder(tgt, memory, decoder_pos, query_pos, key_padding_mask,
                                                       need_weights)
        attention = {}
        if need_weights:
            attention = {
                "encoder": encoder_weights,  # (L_enc, B, H, N, N)
                "decoder_self": self_weights,  # (L_dec, B, H, Q, Q)
                "decoder_cross": cross_weights,  # (L_dec, B, H, Q, N)
            }
        return hs, memory, attention  # (L_dec, B, Q, D)


# ----------------------------------------------------------------------------- DETR


class MLPHead(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR's box head: 3 layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


BACKBONES = ("resnet50", "small_conv")
POSITION_EMBEDDINGS = ("sine", "learned")


@dataclass(frozen=True)
class DETRConfig(Config):
    """Everything that defines a DETR's architecture. The defaults are DETR-R50 of the paper;
    ``minivit.models.MODEL_CONFIGS["tiny_detr"]`` is chapter 6's CPU-sized one."""

    num_classes: int = positive(91, "object classes (a 'no object' class is added); 91: COCO's ids", 100_000)
    num_queries: int = positive(100, "object queries: the most objects one image can have", 10_000)
    hidden_dim: int = positive(256, "width D of the transformer; even", 16_384)
    num_heads: int = positive(8, "attention heads; must divide hidden_dim", 256)
    num_encoder_layers: int = positive(6, "transformer encoder layers", 256)
    num_decoder_layers: int = positive(6, "transformer decoder layers", 256)
    dim_feedforward: int = positive(2048, "hidden width of each layer's MLP", 65_536)
    dropout: float = probability(0.1, "dropout in the transformer")
    aux_loss: bool = setting(True, "also output the boxes of every earlier decoder layer", FLAG)
    position_embedding: str = setting("sine", "sine (fixed, from the mask) or learned", Choice(POSITION_EMBEDDINGS))
    position_placement: str = setting("all", "where the spatial positions go: all attentions (official), decoder "
                                      "cross-attention keys only, input (once, added to the encoder input) or none",
                                      Choice(tuple(POSITION_PLACEMENTS)))
    backbone: str = setting("resnet50", "resnet50 (stride 32, frozen batch norm) or small_conv (stride 2^stages)",
                            Choice(BACKBONES))
    backbone_widths: tuple[int, ...] = setting((), "channels of each small_conv stage (empty for resnet50)",
                                               Sizes(allow_empty=True), sane_max=4096)

    def check_fields(self) -> None:
        if self.hidden_dim % 2 or self.hidden_dim % self.num_heads:
            raise ConfigError("hidden_dim", f"hidden_dim must be even and divisible by num_heads, got "
                                            f"hidden_dim={self.hidden_dim}, num_heads={self.num_heads}")
        if (self.backbone == "small_conv") != bool(self.backbone_widths):
            raise ConfigError("backbone_widths", f"backbone_widths must list the stages of a small_conv backbone "
                                                 f"and be empty for resnet50, got backbone={self.backbone!r}, "
                                                 f"backbone_widths={self.backbone_widths}")


class DETR(nn.Module):
    """DETR: backbone -> 1x1 projection -> transformer with object queries -> class and box heads.

    ``forward(images (B, 3, H, W), mask (B, H, W) bool, True = padding, or None)`` returns
    ``{"pred_logits": (B, Q, num_classes + 1), "pred_boxes": (B, Q, 4) cxcywh in [0, 1],
    "aux_outputs": [the same two for each earlier decoder layer]}`` (no ``aux_outputs``
    with ``aux_loss=False``). The last class is "no object". Boxes are relative to each
    image's own (unpadded) size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_queries: int = 100,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        aux_loss: bool = True,
        position_embedding: str = "sine",
        position_placement: str = "all",
    ):
        super().__init__()
        if num_classes < 1 or num_queries < 1:
            raise ValueError(f"num_classes and num_queries must be >= 1, got {num_classes} and {num_queries}")
        if hidden_dim % 2 != 0 or num_encoder_layers < 1 or num_decoder_layers < 1:
            raise ValueError(
                f"hidden_dim must be even and there must be at least one encoder and one decoder layer, got "
                f"hidden_dim={hidden_dim}, num_encoder_layers={num_encoder_layers}, "
                f"num_decoder_layers={num_decoder_layers}"
            )
        if position_embedding not in ("sine", "learned"):
            raise ValueError(f"position_embedding must be 'sine' or 'learned', got {position_embedding!r}")
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.config: DETRConfig | None = None  # set by from_config: a DETR built from parts has none
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        if position_embedding == "sine":
            self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        else:
            self.position_embedding = PositionEmbeddingLearned(hidden_dim // 2)
        self.transformer = DETRTransformer(hidden_dim, num_heads, num_encoder_layers, num_decoder_layers,
                                           dim_feedforward, dropout, position_placement)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLPHead(hidden_dim, hidden_dim, 4, 3)

    @classmethod
    def from_config(cls, config: DETRConfig, pretrained_backbone: bool = False) -> "DETR":
        """The DETR of a :class:`DETRConfig`, its backbone included; ``model.config`` is the config."""
        if config.backbone == "resnet50":
            backbone = Backbone(pretrained=pretrained_backbone)
        else:
            backbone = SmallConvBackbone(config.backbone_widths)
        model = cls(backbone, config.num_classes, config.num_queries, config.hidden_dim, config.num_heads,
                    config.num_encoder_layers, config.num_decoder_layers, config.dim_feedforward, config.dropout,
                    config.aux_loss, config.position_embedding, config.position_placement)
        model.config = config
        return model

    def _check_inputs(self, images, mask):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"images must be a float tensor (B, 3, H, W), got {shape}; "
                "batch images of different sizes with pad_images()"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalized), got dtype {images.dtype}")
        weight = next(self.parameters())
        if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(f"images have dtype {images.dtype} but the model's weights are {weight.dtype}; "
                            f"use images.to({weight.dtype})")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (0, 3, H, W); pass at least one image")
        stride = getattr(self.backbone, "stride", 1)
        if min(images.shape[-2:]) < stride:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} are smaller than the backbone's stride {stride}"
            )
        if mask is None:
            return images, torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        expected = (images.shape[0], *images.shape[-2:])
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != expected:
            raise ValueError(
                f"mask must be a bool tensor (B, H, W) = {(images.shape[0], *images.shape[-2:])} with True = padding, "
                f"got {getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}"
            )
        if bool(mask.flatten(1).all(dim=1).any()):
            raise ValueError("an image in the batch is all padding (its mask is True everywhere)")
        return images, mask

    def _forward(self, images, mask, need_weights):
        images, mask = self._check_inputs(images, mask)
        features, feature_mask = self.backbone(images, mask)  # (B, C, h, w), (B, h, w)
        pos = self.position_embedding(feature_mask).to(features.dtype)  # (B, D, h, w)
        hs, _, attention = self.transformer(self.input_proj(features), feature_mask, self.query_embed.weight, pos,
                                            need_weights)
        logits = self.class_embed(hs)  # (L, B, Q, classes + 1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L, B, Q, 4)
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        attention["feature_size"] = tuple(features.shape[-2:])
        return outputs, attention

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        return self._forward(images, mask, need_weights=False)[0]

    def forward_with_attention(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[dict, dict]:
        """The outputs and the attention weights: ``{"encoder": (L, B, heads, N, N), "decoder_self":
        (L, B, heads, Q, Q), "decoder_cross": (L, B, heads, Q, N), "feature_size": (h, w)}``, N = h * w."""
        return self._forward(images, mask, need_weights=True)


def build_detr_r50(num_classes: int = 91, pretrained_backbone: bool = False, **overrides) -> DETR:
    """DETR-R50 as in the paper (41 M parameters); ``num_classes=91`` is COCO's label space.
    ``overrides``: other fields of :class:`DETRConfig`."""
    from minivit.models import MODEL_CONFIGS

    config = MODEL_CONFIGS["detr_r50"].replace(num_classes=num_classes, **overrides)
    return DETR.from_config(config, pretrained_backbone)


def build_tiny_detr(config: DETRConfig | None = None, **overrides) -> DETR:
    """Chapter 6's DETR, small enough to train on a CPU: ``MODEL_CONFIGS["tiny_detr"]`` (a 3-stage
    :class:`SmallConvBackbone`, stride 8, and a 2+2-layer transformer of width 64), or ``config``,
    with any field overridden, e.g. ``build_tiny_detr(num_classes=5)``."""
    from minivit.models import MODEL_CONFIGS

    return DETR.from_config(DETRConfig.resolve(config or MODEL_CONFIGS["tiny_detr"], overrides))


def pad_images(images: list[torch.Tensor], size_divisibility: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch images of different sizes: zero-pad each at the bottom and right to the largest
    size (rounded up to a multiple of ``size_divisibility``).

    images: list of (3, H_i, W_i) -> batch (B, 3, H, W), mask (B, H, W) bool, True = padding.
    """
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(
                f"images[{i}] must be a tensor (C, H, W), got {getattr(image, 'shape', type(image).__name__)}"
            )
        if image.shape[0] != images[0].shape[0]:
            raise ValueError(f"images[{i}] has {image.shape[0]} channels, images[0] has {images[0].shape[0]}")
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    height = math.ceil(height / size_divisibility) * size_divisibility
    width = math.ceil(width / size_divisibility) * size_divisibility
    batch = images[0].new_zeros(len(images), images[0].shape[0], height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=images[0].device)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = False
    return batch, mask


@torch.no_grad()
def postprocess(outputs: dict, image_sizes, threshold: float = 0.7) -> list[dict]:
    """Predictions -> detections per image: softmax over classes, drop "no object", keep the
    queries whose best class has probability > ``threshold``, boxes to xyxy pixels.

    image_sizes: (B, 2) tensor or list of (height, width), each image's own unpadded size.
    Returns one ``{"scores": (K,), "labels": (K,), "boxes": (K, 4) xyxy pixels}`` per image.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # (B, Q, C+1), (B, Q, 4)
    if len(image_sizes) != logits.shape[0]:
        raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {logits.shape[0]} predictions")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    probabilities = logits.softmax(-1)[..., :-1]  # (B, Q, C): without "no object"
    scores, labels = probabilities.max(-1)  # (B, Q)
    boxes_xyxy = box_cxcywh_to_xyxy(boxes)  # (B, Q, 4), still in [0, 1]
    detections = []
    for image_scores, image_labels, image_boxes, size in zip(scores, labels, boxes_xyxy, image_sizes):
        keep = image_scores > threshold
        detections.append({
            "scores": image_scores[keep],
            "labels": image_labels[keep],
            "boxes": denormalize_boxes(image_boxes[keep], size),  # (K, 4) pixels
        })
    return detections


def plot_detections(ax, image: torch.Tensor, detections: dict, class_names=None, title: str | None = None):
    """Draw an image (3, H, W) in [0, 1] with its detections (boxes xyxy pixels, labels, scores)."""
    import matplotlib.patches as patches

    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    colors = [f"C{i}" for i in range(10)]
    for box, label, score in zip(detections["boxes"].tolist(), detections["labels"].tolist(),
                                 detections["scores"].tolist()):
        x1, y1, x2, y2 = box
        color = colors[label % len(colors)]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))
        name = class_names[label] if class_names is not None else str(label)
        ax.text(x1, y1, f"{name} {score:.2f}", color="white", fontsize=8, va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1})
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    if title:
        ax.set_title(title)


# ----------------------------------------------------------------------------- the paper's demo


class MinimalDETR(nn.Module):
    """The ~40-line DETR of the paper's appendix: ResNet-50 minus its last two layers, a 1x1
    conv to 256 channels, learned row/column position embeddings, ``nn.Transformer``
    (sequence first), 100 learned queries, a 92-way class head and a 4-d box head with sigmoid.

    It differs from the real DETR: positions only at the input, no aux outputs, ordinary
    batch norm, no padding mask, at most 50x50 feature maps.
    """

    def __init__(self, num_classes: int = 91, hidden_dim: int = 256, num_heads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, pretrained_backbone: bool = False):
        super().__init__()
        resnet = resnet50(pretrained_backbone)
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])  # drop avgpool and fc
        self.conv = nn.Conv2d(2048, hidden_dim, 1)
        with warnings.catch_warnings():  # nn.Transformer warns that sequence-first inputs skip its fast path
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(hidden_dim, num_heads, num_encoder_layers, num_decoder_layers)
        self.linear_class = nn.Linear(hidden_dim, num_classes + 1)
        self.linear_bbox = nn.Linear(hidden_dim, 4)
        self.query_pos = nn.Parameter(torch.rand(100, hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))

    def forward_intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate tensor of the forward pass, in the paper's (sequence-first) layout."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        features = self.backbone(images)  # (B, 2048, H/32, W/32)
        projected = self.conv(features)  # (B, 256, h, w)
        batch, _, height, width = projected.shape
        if height > 50 or width > 50:
            raise ValueError(
                f"feature map {height}x{width} exceeds the 50x50 learned positions; use images up to 1600x1600"
            )
        pos = torch.cat([
            self.col_embed[:width][None].expand(height, -1, -1),  # (h, w, 128): x part
            self.row_embed[:height][:, None].expand(-1, width, -1),  # (h, w, 128): y part
        ], dim=-1).flatten(0, 1)[:, None]  # (h*w, 1, 256)
        tokens = pos + projected.flatten(2).permute(2, 0, 1)  # (h*w, B, 256)
        queries = self.query_pos[:, None].expand(-1, batch, -1)  # (100, B, 256)
        decoded = self.transformer(tokens, queries)  # (100, B, 256)
        return {
            "backbone features": features,
            "projected features": projected,
            "position embedding": pos,
            "decoder output": decoded,
            "class logits": self.linear_class(decoded),  # (100, B, 92)
            "boxes": self.linear_bbox(decoded).sigmoid(),  # (100, B, 4)
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"pred_logits": (B, 100, 92), "pred_boxes": (B, 100, 4)}`` (batch first, like DETR)."""
        steps = self.forward_intermediates(images)
        return {"pred_logits": steps["class logits"].transpose(0, 1), "pred_boxes": steps["boxes"].transpose(0, 1)}


# ----------------------------------------------------------------------------- official weights

OFFICIAL_DETR_R50_URL = "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"
OFFICIAL_DETR_R50_SIZE = "about 159 MB"  # detr-r50-e632da11.pth: 166,618,694 bytes


#: How the official DETR parameter names (facebookresearch/detr) become minivit's. Each pair
#: is a substring replacement, applied in order; every other part of a name is the same:
#:
#: * ``backbone.0.body.*``  -> ``backbone.body.*``    (the official Joiner's item 0 is the
#:   backbone, item 1 the position encoding; torchvision's ResNet names are kept)
#: * ``backbone.1.*``       -> ``position_embedding.*`` (only the learned encoding has weights)
#: * ``multihead_attn.``    -> ``cross_attn.``        (decoder cross-attention)
#: * ``.in_proj_weight/bias`` -> ``.qkv.weight/bias``  (nn.MultiheadAttention's fused q, k, v
#:   projection; minivit's MultiHeadAttention has the same (3D, D) layout)
#: * ``.out_proj.``         -> ``.proj.``
#:
#: Unchanged: ``transformer.encoder.layers.{i}.{linear1,linear2,norm1,norm2}``,
#: ``transformer.decoder.layers.{i}.{linear1,linear2,norm1,norm2,norm3}``,
#: ``transformer.decoder.norm``, ``input_proj``, ``query_embed``, ``class_embed``,
#: ``bbox_embed.layers.{0,1,2}``.
OFFICIAL_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.0.body.", "backbone.body."),
    ("backbone.1.", "position_embedding."),
    ("multihead_attn.", "cross_attn."),
    (".in_proj_weight", ".qkv.weight"),
    (".in_proj_bias", ".qkv.bias"),
    (".out_proj.", ".proj."),
)


def official_to_minivit_key(key: str) -> str:
    for official, ours in OFFICIAL_KEY_MAP:
        key = key.replace(official, ours)
    return key


def minivit_to_official_key(key: str) -> str:
    for official, ours in OFFICIAL_KEY_MAP:
        key = key.replace(ours, official)
    return key


def to_official_state_dict(model: DETR) -> dict[str, torch.Tensor]:
    """minivit's DETR state dict under the official names (what the public checkpoint holds)."""
    return {minivit_to_official_key(key): value for key, value in model.state_dict().items()}


def load_official_detr_state_dict(model: DETR, state_dict: dict) -> None:
    """Load an official DETR state dict (or a checkpoint with a ``"model"`` entry) into ``model``.

    Every key must map onto a parameter or buffer of the same shape and every parameter
    must be covered; otherwise a ``ValueError`` lists the missing, unexpected and
    mismatched names (official spelling).
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    converted = {official_to_minivit_key(key): value for key, value in state_dict.items()}
    expected = model.state_dict()
    missing = [minivit_to_official_key(k) for k in expected if k not in converted]
    unexpected = [k for k in state_dict if official_to_minivit_key(k) not in expected]
    mismatched = [
        f"{minivit_to_official_key(k)}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in converted.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        def listing(names):
            return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")

        problems = [f"{what}: {listing(names)}" for what, names in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
        raise ValueError(
            "the state dict does not fit this DETR (is it detr-r50 with the same num_classes, "
            "num_queries and layer counts?); " + "; ".join(problems)
        )
    check_finite_weights(state_dict, "the official DETR state dict",
                         "these weights would make every output NaN; download them again")
    model.load_state_dict(converted, strict=True)


def load_official_detr_r50(url: str = OFFICIAL_DETR_R50_URL, timeout_s: float = 10.0) -> DETR | None:
    """The official DETR-R50 (COCO, 42.0 AP) as a minivit ``DETR`` in eval mode, or ``None`` offline.

    Downloads the checkpoint once with ``torch.hub`` into its hub directory (``~/.cache/torch/hub``
    or ``$TORCH_HOME``), checks its SHA-256 prefix (the ``e632da11`` in the file name), builds
    ``build_detr_r50()`` and loads the weights with ``load_official_detr_state_dict``. The first
    time it says what it downloads and where to, with a progress bar; later calls are quiet.
    When the download fails for any reason it prints one sentence and returns ``None``; what to
    use instead is the caller's choice.
    """
    size = OFFICIAL_DETR_R50_SIZE if url == OFFICIAL_DETR_R50_URL else None
    checkpoint = download_state_dict(url, "the official DETR-R50 weights", size, timeout_s)
    if checkpoint is None:
        return None
    model = build_detr_r50()
    load_official_detr_state_dict(model, checkpoint)
    return model.eval()
