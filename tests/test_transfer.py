"""Chapter 9: position-embedding resampling against torchvision, heads, probe vs full fine-tune."""
import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from minivit.data.shapes import SHAPE_CLASSES, make_shapes
from minivit.train import TrainConfig
from minivit.transfer import (
    replace_head,
    resample_position_embedding,
    resize_vit,
    set_trainable,
    shapes_classification,
    transfer,
)
from minivit.vit import ViT, vit_from_torchvision


def small_tv_vit(image_size=32):
    torch.manual_seed(0)
    model = VisionTransformer(image_size=image_size, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=5)
    with torch.no_grad():
        model.encoder.pos_embedding.normal_()  # torchvision initializes it small; make the test see it
        model.heads.head.weight.normal_(std=0.1)
    return model.eval()


@pytest.mark.parametrize("new_size", [48, 24, 36])
def test_resample_equals_torchvision_interpolate_embeddings(new_size):
    tv = small_tv_vit()
    state = interpolate_embeddings(new_size, 4, tv.state_dict())
    ours = resample_position_embedding(tv.state_dict()["encoder.pos_embedding"], new_size // 4, 1,
                                       align_corners=True, antialias=False)
    expected = state["encoder.pos_embedding"]
    assert ours.shape == expected.shape == (1, 1 + (new_size // 4) ** 2, 32)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours[:, 0], tv.encoder.pos_embedding[:, 0])  # the class token's entry is kept


def test_resize_vit_matches_torchvision_model_at_new_size():
    tv = small_tv_vit()
    tv_big = VisionTransformer(image_size=48, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                               num_classes=5).eval()
    tv_big.load_state_dict(interpolate_embeddings(48, 4, tv.state_dict()))
    ours = resize_vit(vit_from_torchvision(tv), 48, align_corners=True).eval()
    assert ours.config.image_size == 48 and ours.pos_embed.shape == (1, 1 + 144, 32)
    images = torch.randn(3, 3, 48, 48)
    torch.testing.assert_close(ours(images), tv_big(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows, cols", [(12, 12), (6, 6), (8, 10)])
def test_default_resampling_is_what_a_dynamic_size_vit_does(rows, cols):
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=4, dim=32, depth=1, num_heads=2, mlp_dim=64, dynamic_size=True)
    with torch.no_grad():
        expected = model.position_embedding(rows, cols)
    torch.testing.assert_close(resample_position_embedding(model.pos_embed.detach(), (rows, cols)), expected)


def test_resample_same_grid_and_no_prefix():
    table = torch.randn(1, 16, 8)
    assert resample_position_embedding(table, 4, num_prefix_tokens=0) is table
    out = resample_position_embedding(table, (2, 3), num_prefix_tokens=0)
    assert out.shape == (1, 6, 8)


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="new_grid"):
        resample_position_embedding(torch.randn(1, 17, 8), 0)
    with pytest.raises(ValueError, match="old_grid"):
        resample_position_embedding(torch.randn(1, 13, 8), 4)  # 12 patches: not square
    with pytest.raises(ValueError, match="pos_embed"):
        resample_position_embedding(torch.randn(17, 8), 4)


def test_resize_vit_rejects_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        resize_vit(ViT(image_size=32, patch_size=4, dim=32, depth=1, num_heads=2, mlp_dim=64), 30)


def test_resize_vit_keeps_every_other_weight():
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)
    resized = resize_vit(model, 16)
    for key, value in model.state_dict().items():
        if key != "pos_embed":
            torch.testing.assert_close(resized.state_dict()[key], value)
    assert resized(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_replace_head_and_set_trainable():
    model = ViT(image_size=16, patch_size=4, dim=32, depth=1, num_heads=2, mlp_dim=64)
    replace_head(model, 3)
    assert model.head.out_features == 3 and model.config.num_classes == 3
    assert torch.count_nonzero(model.head.weight) == 0
    head_params = sum(p.numel() for p in model.head.parameters())
    assert set_trainable(model, "probe") == head_params == 32 * 3 + 3
    assert not model.patch_embed.proj.weight.requires_grad
    assert set_trainable(model, "full") == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="mode must be one of"):
        set_trainable(model, "linear")
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(model, 0)


def test_probe_changes_only_the_head_and_full_changes_everything():
    torch.set_num_threads(1)
    train, test = shapes_classification(64, image_size=16, seed=1), shapes_classification(32, image_size=16, seed=2)
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, warmup=0.0)
    for mode in ("probe", "full"):
        torch.manual_seed(0)
        model = replace_head(ViT(image_size=16, patch_size=4, dim=32, depth=1, num_heads=2, mlp_dim=64), 3)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        history = transfer(model, train, test, config, mode=mode, progress=False, device="cpu")
        assert history.epochs == 1
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        if mode == "probe":
            assert changed == {"head.weight", "head.bias"}
        else:
            assert {"head.weight", "patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight"} <= changed


def test_transfer_refuses_a_head_of_the_wrong_size():
    data = shapes_classification(8, image_size=16)
    model = ViT(image_size=16, patch_size=4, dim=32, depth=1, num_heads=2, mlp_dim=64)
    with pytest.raises(ValueError, match="replace_head"):
        transfer(model, data, data, TrainConfig(epochs=1, batch_size=4))


def test_shapes_classification_labels_the_largest_shape():
    data = shapes_classification(40, image_size=32, seed=3)
    raw = make_shapes(40, image_size=32, seed=3, min_objects=1, max_objects=3, dtype="uint8")
    assert data.images.dtype == torch.uint8 and data.images.shape == (40, 3, 32, 32)
    assert torch.equal(data.images, raw.images) and data.classes == SHAPE_CLASSES
    for label, target in zip(data.labels.tolist(), raw.targets):
        widths, heights = target["boxes"][:, 2], target["boxes"][:, 3]
        largest = max(range(len(widths)), key=lambda i: float(widths[i] * heights[i]))
        assert label == int(target["labels"][largest])
    assert len(set(data.labels.tolist())) == 3
