"""Every named model of the course in one place, and how to build one.

Four architectures, each a config dataclass and a module that builds from it:

=============  ==========================  =========================================
architecture   config                      model
=============  ==========================  =========================================
``vit``        :class:`~minivit.vit.ViTConfig`        :class:`~minivit.vit.ViT`
``small_cnn``  :class:`~minivit.conv.SmallCNNConfig`  :class:`~minivit.conv.SmallCNN`
``detr``       :class:`~minivit.detr.DETRConfig`      :class:`~minivit.detr.DETR`
``window_vit`` :class:`~minivit.swin.WindowViTConfig` :class:`~minivit.swin.WindowViT`
=============  ==========================  =========================================

``MODEL_CONFIGS`` names the configurations the chapters use; ``build_model("vit_cifar_small",
dropout=0.1)`` builds one with fields overridden. Checkpoints store the architecture name and
``config.to_dict()``; :func:`config_from_dict` reads them back.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from minivit.configs import Config
from minivit.conv import SmallCNN, SmallCNNConfig
from minivit.detr import DETR, DETRConfig
from minivit.swin import WindowViT, WindowViTConfig
from minivit.vit import ViT, ViTConfig


@dataclass(frozen=True)
class Architecture:
    """A family of models: its config class and the function that builds a model from a config."""

    name: str
    config_class: type[Config]
    build: Callable[[Config], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture("vit", ViTConfig, ViT),
    "small_cnn": Architecture("small_cnn", SmallCNNConfig, SmallCNN),
    "detr": Architecture("detr", DETRConfig, DETR.from_config),
    "window_vit": Architecture("window_vit", WindowViTConfig, WindowViT),
}

MODEL_CONFIGS: dict[str, Config] = {
    # chapter 3: torchvision's ImageNet ViTs, same parameter names and counts (86.6 M for B/16)
    "vit_b_16": ViTConfig(image_size=224, patch_size=16, num_classes=1000, dim=768, depth=12, num_heads=12,
                          mlp_dim=3072),
    "vit_b_32": ViTConfig(image_size=224, patch_size=32, num_classes=1000, dim=768, depth=12, num_heads=12,
                          mlp_dim=3072),
    "vit_l_16": ViTConfig(image_size=224, patch_size=16, num_classes=1000, dim=1024, depth=24, num_heads=16,
                          mlp_dim=4096),
    # chapter 4: the plain ViT of chapters 3 to 9 (0.55 M parameters) and the gpu recipe's (3.7 M)
    "vit_cifar_small": ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=128, depth=4, num_heads=4,
                                 mlp_dim=256, dynamic_size=True),
    # chapter 4: the cpu recipe's model, vit_cifar_small with three choices of later papers (chapter 3 builds each):
    # tokens from a conv stem (Xiao et al. 2021), mean pooling and fixed 2D sin-cos positions (Beyer et al. 2022)
    "vit_cifar_conv": ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=128, depth=4, num_heads=4,
                                mlp_dim=256, dynamic_size=True, stem="conv", pool="mean", pos_embed="sincos2d"),
    "vit_cifar_lite": ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=256, depth=7, num_heads=4,
                                mlp_dim=512, dynamic_size=True),
    # chapters 1 and 4: the CNN baseline (0.29 M parameters at width 32)
    "small_cnn": SmallCNNConfig(),
    # chapter 6: the tiny DETR trained on the synthetic shapes and shipped (minivit/checkpoints/tiny_detr_shapes.pt):
    # 10 queries, a 3-stage CNN (stride 8: 8 x 8 tokens for 64-px images), 2 + 2 layers of width 64
    "tiny_detr": DETRConfig(num_classes=3, num_queries=10, hidden_dim=64, num_heads=4, num_encoder_layers=2,
                            num_decoder_layers=2, dim_feedforward=128, dropout=0.0, backbone="small_conv",
                            backbone_widths=(16, 32, 64)),
    # chapter 5: DETR-R50 of the paper (41 M parameters), COCO's 91 class ids
    "detr_r50": DETRConfig(),
}


def build_model(name: str, **overrides) -> nn.Module:
    """The model of ``MODEL_CONFIGS[name]`` with some fields overridden, e.g. ``build_model("small_cnn", width=44)``."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    return build_from_config(MODEL_CONFIGS[name].replace(**overrides))


def build_from_config(config: Config) -> nn.Module:
    """The model of a config (its architecture follows from the config's class)."""
    return ARCHITECTURES[architecture_of(config)].build(config)


def architecture_of(config: Config) -> str:
    """The architecture name of a config: ``vit``, ``small_cnn`` or ``detr``."""
    for name, architecture in ARCHITECTURES.items():
        if type(config) is architecture.config_class:
            return name
    raise ValueError(f"{type(config).__name__} is not the config of a registered architecture "
                     f"({', '.join(ARCHITECTURES)})")


def config_from_dict(architecture: str, values: dict) -> Config:
    """The config of ``architecture`` from a stored dict (e.g. a checkpoint's), checked field by field."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; minivit knows {', '.join(ARCHITECTURES)}")
    if not isinstance(values, dict):
        raise ValueError(f"a {architecture} config must be a dict, got {type(values).__name__}")
    return ARCHITECTURES[architecture].config_class.from_dict(values)


def describe_model(model: nn.Module) -> tuple[str | None, Config | None]:
    """``(architecture, config)`` of a model built from a config; ``(None, None)`` for any other module."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DistributedDataParallel
    config = getattr(model, "config", None)
    if not isinstance(config, Config):
        return None, None
    return architecture_of(config), config
