"""The config dataclasses and the model registry (minivit.models)."""
import pytest
import torch

from minivit.configs import ConfigError
from minivit.conv import SmallCNN, SmallCNNConfig
from minivit.detection import TINY_DETR_CONFIG
from minivit.detr import DETR, DETRConfig, build_detr_r50, build_tiny_detr
from minivit.models import ARCHITECTURES, MODEL_CONFIGS, architecture_of, build_model, config_from_dict
from minivit.vit import CONFIGS, ViT, ViTConfig, build_vit

EXPECTED = {"vit_cifar_small": ("vit", ViT, 546_186), "vit_cifar_lite": ("vit", ViT, None),
            "vit_b_16": ("vit", ViT, 86_567_656), "small_cnn": ("small_cnn", SmallCNN, None),
            "tiny_detr": ("detr", DETR, None), "detr_r50": ("detr", DETR, 41_524_768)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_named_model_builds_from_its_config(name):
    architecture, model_class, parameters = EXPECTED[name]
    config = MODEL_CONFIGS[name]
    assert architecture_of(config) == architecture
    with torch.device("meta"):  # shapes only
        model = build_model(name)
    assert type(model) is model_class and model.config == config
    if parameters is not None:
        assert sum(p.numel() for p in model.parameters()) == parameters
    assert config_from_dict(architecture, config.to_dict()) == config  # the round trip of a checkpoint


def test_overrides_and_unknown_names():
    model = build_model("vit_cifar_small", dropout=0.1, depth=2)
    assert model.config == MODEL_CONFIGS["vit_cifar_small"].replace(dropout=0.1, depth=2)
    assert len(model.encoder.blocks) == 2
    with pytest.raises(ValueError, match="unknown model 'vit_huge'.*vit_cifar_small"):
        build_model("vit_huge")
    with pytest.raises(ConfigError, match="ViTConfig has no field.*width"):
        build_model("vit_cifar_small", width=3)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*vit, small_cnn, detr"):
        config_from_dict("resnet", {})
    with pytest.raises(ConfigError, match="SmallCNNConfig has no field.*depth"):
        config_from_dict("small_cnn", {"depth": 3})
    assert set(ARCHITECTURES) == {"vit", "small_cnn", "detr", "window_vit"}


def test_the_old_views_read_the_registry():
    assert CONFIGS == {name: c for name, c in MODEL_CONFIGS.items() if isinstance(c, ViTConfig)}
    assert build_vit("vit_cifar_small").config == MODEL_CONFIGS["vit_cifar_small"]
    with pytest.raises(ValueError, match="unknown ViT configuration 'small_cnn'"):
        build_vit("small_cnn")
    assert TINY_DETR_CONFIG is MODEL_CONFIGS["tiny_detr"]


def test_one_tiny_detr_configuration():
    assert build_tiny_detr().config == TINY_DETR_CONFIG
    assert build_tiny_detr(**TINY_DETR_CONFIG).config == TINY_DETR_CONFIG  # the chapter-6 call still works
    assert TINY_DETR_CONFIG["num_queries"] == TINY_DETR_CONFIG.num_queries == 10
    assert build_tiny_detr(num_classes=5).config == TINY_DETR_CONFIG.replace(num_classes=5)
    assert build_tiny_detr().backbone.stride == 8
    with torch.device("meta"):
        assert build_detr_r50(num_classes=20).config == DETRConfig(num_classes=20)


def test_model_config_reads_like_the_dict_it_replaced():
    model = ViT(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)
    assert model.config["depth"] == model.config.depth == 2
    assert dict(model.config) == model.config.to_dict()
    assert list(model.config.keys())[:2] == ["image_size", "patch_size"]
    assert ViT(**model.config).config == ViT(model.config).config == model.config
    with pytest.raises(KeyError):
        model.config["width"]
    with pytest.raises(AttributeError):
        model.config.depth = 3  # frozen: model.config.replace(depth=3) is a new config
    assert SmallCNN(width=8).config == SmallCNN(SmallCNNConfig(width=8)).config == SmallCNNConfig(width=8)


@pytest.mark.parametrize("config_class, values, message", [
    (ViTConfig, dict(dim=30, num_heads=4), "dim=30 is not divisible by num_heads=4"),
    (ViTConfig, dict(image_size=30), "image_size=30 is not divisible by patch_size=4"),
    (ViTConfig, dict(depth=0), r"ViTConfig\.depth must be an integer >= 1, got 0"),
    (ViTConfig, dict(dropout=1.0), r"ViTConfig\.dropout must be a finite number in \[0, 1\), got 1.0"),
    (ViTConfig, dict(dynamic_size="yes"), r"ViTConfig\.dynamic_size must be one of False, True"),
    (SmallCNNConfig, dict(width=-1), r"SmallCNNConfig\.width must be an integer >= 1"),
    (DETRConfig, dict(backbone="small_conv"), "backbone_widths must list the stages"),
    (DETRConfig, dict(backbone_widths=(8, 16)), "be empty for resnet50"),
    (DETRConfig, dict(hidden_dim=250), "divisible by num_heads"),
])
def test_model_configs_name_the_bad_field(config_class, values, message):
    with pytest.raises(ConfigError, match=message):
        config_class(**values)
