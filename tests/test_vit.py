import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vit_b_16, vit_b_32

from minivit.transformer import Encoder
from minivit.vit import (
    CONFIGS,
    PatchEmbedding,
    ViT,
    build_vit,
    load_torchvision_weights,
    patchify,
    sincos_2d_position_embedding,
    vit_from_torchvision,
)


def tiny_vit(**overrides) -> ViT:
    config = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, num_heads=4, mlp_dim=64)
    model = ViT(**{**config, **overrides})
    nn.init.normal_(model.head.weight, std=0.1)  # the head starts at zero: make the logits informative
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_b16() -> nn.Module:
    torch.manual_seed(0)
    model = vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    nn.init.normal_(model.heads.head.bias, std=0.02)
    return model


def test_patchify_shape_and_content():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    patches = patchify(images, 4)  # 2 x 3 grid
    assert patches.shape == (2, 6, 4 * 4 * 3)
    # patch 4 = row 1, column 1; its pixels flattened as (row, column, channel)
    expected = images[1, :, 4:8, 4:8].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[1, 4], expected)


def test_patchify_plus_linear_equals_patch_embedding_conv():
    torch.manual_seed(0)
    embed = PatchEmbedding(patch_size=4, in_channels=3, dim=16)
    linear = nn.Linear(4 * 4 * 3, 16)
    with torch.no_grad():
        linear.weight.copy_(embed.proj.weight.permute(0, 2, 3, 1).reshape(16, -1))  # (D, P, P, C) order
        linear.bias.copy_(embed.proj.bias)
    images = torch.randn(2, 3, 16, 12)
    torch.testing.assert_close(linear(patchify(images, 4)), embed(images))


def test_sincos_2d_position_embedding():
    table = sincos_2d_position_embedding(3, 5, 8)
    assert table.shape == (15, 8)
    # first half depends on the row only, second half on the column only
    grid = table.reshape(3, 5, 8)
    torch.testing.assert_close(grid[:, 0, :4], grid[:, 4, :4])
    torch.testing.assert_close(grid[0, :, 4:], grid[2, :, 4:])
    assert len({tuple(row.tolist()) for row in table}) == 15  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 6)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos_embed", ["learned", "sincos2d", "none"])
def test_vit_shapes_and_attributes(pool, pos_embed):
    model = tiny_vit(pool=pool, pos_embed=pos_embed)
    tokens = 16 + (pool == "cls")
    images = torch.randn(3, 3, 16, 16)
    assert model(images).shape == (3, 5)
    assert model.forward_features(images).shape == (3, tokens, 32)
    assert isinstance(model.encoder, Encoder)
    assert (model.cls_token is not None) == (pool == "cls")
    if pos_embed == "none":
        assert model.pos_embed is None
    else:
        assert model.pos_embed.shape == (1, tokens, 32)
    assert ViT(**model.config).config == model.config  # the config rebuilds the model


def test_fast_and_weight_returning_paths_agree():
    torch.manual_seed(0)
    model = tiny_vit(depth=3)
    images = torch.randn(2, 3, 16, 16)
    logits, attn_weights = model.forward_with_attention(images)
    torch.testing.assert_close(logits, model(images))
    assert attn_weights.shape == (3, 2, 4, 17, 17)  # (depth, B, H, T, T)
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(3, 2, 4, 17))


def test_without_position_embeddings_patch_order_does_not_matter():
    torch.manual_seed(0)
    model = tiny_vit(pool="mean", pos_embed="none")
    images = torch.randn(2, 3, 16, 16)
    # permute the 4x4 grid of patches (a fixed shuffle), as pixels
    grid = images.reshape(2, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, 4, 4)
    permutation = torch.randperm(16)
    shuffled = grid[:, :, permutation].reshape(2, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, 16)
    assert not torch.equal(shuffled, images)
    torch.testing.assert_close(model(shuffled), model(images))
    # ... while learned position embeddings make the order matter
    positional = tiny_vit(pool="mean", pos_embed="learned")
    assert not torch.allclose(positional(shuffled), positional(images), atol=1e-4)


def test_vit_b_16_parameter_count_equals_torchvision(torchvision_b16):
    with torch.device("meta"):  # counting needs shapes only
        model = build_vit("vit_b_16")
    count = sum(p.numel() for p in model.parameters())
    assert count == 86_567_656 == sum(p.numel() for p in torchvision_b16.parameters())


def test_torchvision_vit_b_16_weights_give_equal_outputs(torchvision_b16):
    model = load_torchvision_weights(build_vit("vit_b_16"), torchvision_b16.state_dict()).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = torchvision_b16(images)
        logits = model(images)
    assert expected.abs().max() > 0.1  # the comparison is not between zeros
    assert (logits - expected).abs().max() <= 1e-5


def test_vit_from_torchvision_small_config():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    reference = VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=7
    ).eval()
    nn.init.normal_(reference.heads.head.weight, std=0.1)
    model = vit_from_torchvision(reference).eval()
    assert model.config["dim"] == 64 and model.config["depth"] == 2 and model.config["num_classes"] == 7
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=1e-5, rtol=1e-5)


def test_other_architectures_give_clear_errors(torchvision_b16):
    with torch.device("meta"):  # shapes only: the checks fail before any weight is copied
        target, target_10, target_mean = build_vit("vit_b_16"), build_vit("vit_b_16", num_classes=10), build_vit(
            "vit_b_16", pool="mean"
        )
        b32, resnet = vit_b_32().state_dict(), resnet18().state_dict()
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: checkpoint \(768, 3, 32, 32\)"):
        load_torchvision_weights(target, b32)
    with pytest.raises(ValueError,
                       match=r"not a torchvision VisionTransformer state dict: none of its 122 keys \(conv1\.weight"):
        load_torchvision_weights(target, resnet)
    with pytest.raises(ValueError, match=r"head\.weight: checkpoint \(1000, 768\) vs model \(10, 768\)"):
        load_torchvision_weights(target_10, torchvision_b16.state_dict())
    partial = {k: v for k, v in torchvision_b16.state_dict().items() if "encoder_layer_11" not in k}
    with pytest.raises(ValueError, match=r"12 missing key\(s\) \(minivit names\): encoder\.blocks\.11\.norm1\.weight"):
        load_torchvision_weights(target, partial)
    with pytest.raises(ValueError, match="pool='cls'"):
        load_torchvision_weights(target_mean, torchvision_b16.state_dict())
    with pytest.raises(ValueError, match="VisionTransformer"):
        vit_from_torchvision(nn.Linear(2, 2))


def test_dynamic_size_resamples_the_position_embeddings():
    torch.manual_seed(0)
    model = tiny_vit(dynamic_size=True)  # 16x16 images: a 4x4 grid of patches
    images = torch.randn(2, 3, 16, 16)
    assert model.position_embedding(4, 4) is model.pos_embed  # its own size: the table itself
    fixed = tiny_vit()
    fixed.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(images), fixed(images))  # at its own size nothing changes
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5) and model(torch.randn(2, 3, 24, 12)).shape == (2, 5)
    assert model.position_embedding(2, 2).shape == (1, 1 + 4, 32)
    assert model.position_embedding(6, 3).shape == (1, 1 + 18, 32)
    torch.testing.assert_close(model.position_embedding(2, 2)[:, 0], model.pos_embed[:, 0])  # class token as is
    with torch.no_grad():  # a table whose value is the patch column, 0..3, read as a function on the image
        model.pos_embed[:, 1:] = torch.arange(4.0).repeat(4)[None, :, None].expand(1, 16, 32)  # (1, N, D)
    for rows, cols in [(2, 2), (6, 6), (3, 5)]:
        table = model.position_embedding(rows, cols)[0, 1:, 0].reshape(rows, cols)
        assert torch.allclose(table, table[:1].expand(rows, cols))  # the same in every row
        assert (table[0].diff() > 0).all()  # still increasing with the column
        torch.testing.assert_close(table[0] + table[0].flip(0), torch.full((cols,), 3.0))  # centred as before
    mean_sincos = tiny_vit(dynamic_size=True, pool="mean", pos_embed="sincos2d")
    assert mean_sincos.position_embedding(2, 2).shape == (1, 4, 32)
    assert mean_sincos(torch.randn(1, 3, 8, 8)).shape == (1, 5)
    assert tiny_vit(pos_embed="none", dynamic_size=True)(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_bad_images_give_clear_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match="expected images with 3 channels, got 1"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="expects 16x16 images.*dynamic_size=True"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        patchify(torch.randn(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="unknown ViT configuration"):
        build_vit("vit_huge_1")
    with pytest.raises(ValueError, match="pool"):
        ViT(pool="max")


def test_named_configs_build():
    model = build_vit("vit_cifar_small")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, CONFIGS["vit_cifar_small"]["num_classes"])


@pytest.mark.parametrize("patch_size", [0, -2])
def test_patch_size_zero_or_negative_is_a_clear_value_error(patch_size):
    """Issue 13: patch_size=0 raised ZeroDivisionError from deep inside."""
    from minivit.vit import PatchEmbedding, patchify

    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        patchify(torch.zeros(1, 3, 8, 8), patch_size)
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        PatchEmbedding(patch_size, 3, 8)
