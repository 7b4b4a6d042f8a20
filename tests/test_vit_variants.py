"""Chapter 8's ViT options: the conv stem, stochastic depth and DeiT's distillation token."""
import pytest
import torch

from minivit.configs import ConfigError
from minivit.train.checkpoint import load_checkpoint, save_checkpoint
from minivit.transformer import DropPath
from minivit.vit import ConvStem, PatchEmbedding, ViT, ViTConfig

SMALL = dict(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)


def test_default_vit_has_no_new_parameters_or_modules():
    model = ViT(**SMALL)
    assert isinstance(model.patch_embed, PatchEmbedding)
    assert model.dist_token is None and model.head_dist is None
    assert not any(isinstance(module, DropPath) for module in model.modules())
    assert not any("dist" in key or "convs" in key for key in model.state_dict())


@pytest.mark.parametrize("patch_size, halvings", [(2, 1), (4, 2), (8, 3)])
def test_conv_stem_gives_the_same_token_grid(patch_size, halvings):
    stem = ConvStem(patch_size, 3, 32)
    strided = [m for m in stem.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(strided) == halvings and all(conv.stride == (2, 2) for conv in strided)
    images = torch.randn(2, 3, 32, 32)
    assert stem(images).shape == PatchEmbedding(patch_size, 3, 32)(images).shape == (2, (32 // patch_size) ** 2, 32)


def test_conv_stem_tokens_see_overlapping_windows():
    """A patch token depends on its own P x P pixels only; a conv-stem token also on its neighbours'."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 16, 16)
    changed = images.clone()
    changed[..., 3, 3] += 1.0  # a pixel of patch (0, 0), at its corner with patch (1, 1)
    for stem, expect_change in ((PatchEmbedding(4, 3, 8), False), (ConvStem(4, 3, 8).eval(), True)):
        before, after = stem(images)[0, 5], stem(changed)[0, 5]  # token (1, 1) of the 4 x 4 grid
        assert (not torch.allclose(before, after)) == expect_change


def test_conv_stem_vit_trains_and_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ViT(**SMALL, stem="conv")
    logits = model(torch.randn(4, 3, 16, 16))
    assert logits.shape == (4, 10)
    model.train()
    model(torch.randn(4, 3, 16, 16))  # one training-mode pass: BatchNorm's running statistics move
    path = save_checkpoint(tmp_path / "conv.pt", model.eval())
    loaded, _ = load_checkpoint(path)
    assert loaded.config.stem == "conv" and isinstance(loaded.patch_embed, ConvStem)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(images), model(images), rtol=0, atol=0)  # BatchNorm statistics too


def test_conv_stem_config_errors():
    with pytest.raises(ConfigError, match="power of 2") as error:
        ViTConfig(image_size=30, patch_size=6, stem="conv")
    assert error.value.field == "stem"
    with pytest.raises(ConfigError) as error:
        ViTConfig(stem="resnet")
    assert error.value.field == "stem"


def test_drop_path_field_reaches_the_blocks():
    model = ViT(**SMALL, drop_path=0.2)
    assert isinstance(model.encoder.blocks[-1].drop_path, DropPath)
    assert model.encoder.blocks[-1].drop_path.rate == pytest.approx(0.2)
    images = torch.randn(3, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)  # eval: deterministic


def test_distillation_token_adds_a_token_a_head_and_averages_them():
    torch.manual_seed(0)
    model = ViT(**SMALL, distill_token=True).eval()
    assert model.num_tokens == 16 + 2 and model.pos_embed.shape == (1, 18, 32)
    with torch.no_grad():  # the heads start at zero: give them weights so that they differ
        model.head.weight.normal_()
        model.head_dist.weight.normal_()
    images = torch.randn(2, 3, 16, 16)
    cls_logits, dist_logits = model(images, both_heads=True)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(model(images), (cls_logits + dist_logits) / 2)
    tokens = model.forward_features(images)
    torch.testing.assert_close(dist_logits, model.head_dist(tokens[:, 1]))  # token 1 is the distillation token
    with pytest.raises(ValueError, match="distill_token=True"):
        ViT(**SMALL)(images, both_heads=True)


def test_distillation_token_with_fixed_positions_and_other_sizes():
    model = ViT(**SMALL, distill_token=True, pos_embed="sincos2d")
    assert model.pos_embed.shape == (1, 18, 32) and model.pos_embed[0, :2].abs().sum() == 0
    resizing = ViT(**SMALL, distill_token=True, dynamic_size=True)
    assert resizing(torch.randn(1, 3, 24, 24)).shape == (1, 10)
    assert resizing.position_embedding(6, 6).shape == (1, 2 + 36, 32)
    with pytest.raises(ConfigError) as error:
        ViTConfig(distill_token=True, pool="mean")
    assert error.value.field == "distill_token"


def test_new_fields_keep_old_config_dicts_loading():
    stored = ViTConfig(**SMALL).to_dict()
    for key in ("stem", "drop_path", "distill_token"):
        stored.pop(key)
    assert ViTConfig.from_dict(stored) == ViTConfig(**SMALL)
