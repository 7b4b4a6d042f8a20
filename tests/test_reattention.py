"""Chapter 9: DeepViT's re-attention."""
import pytest
import torch

from minivit.attention import MultiHeadAttention
from minivit.reattention import ReAttention, reattention_vit, report_maps, use_reattention
from minivit.vit import ViT
from minivit.viz import capture_attention, cross_layer_similarity


def pair(norm="none", heads=4):
    torch.manual_seed(0)
    plain = MultiHeadAttention(32, heads).eval()
    re = ReAttention(32, heads, norm=norm).eval()
    re.load_state_dict(plain.state_dict(), strict=False)
    return plain, re


def test_identity_theta_without_norm_is_plain_attention():
    plain, re = pair("none")
    x = torch.randn(2, 7, 32)
    expected, expected_maps = plain(x, need_weights=True)
    out, maps = re(x, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(maps, expected_maps)
    assert re(x)[1] is None and maps.shape == (2, 4, 7, 7)


def test_identity_theta_and_a_fresh_batchnorm_in_eval_is_plain_attention():
    plain, re = pair("batch")  # running mean 0, variance 1, weight 1, bias 0: x / sqrt(1 + eps)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(re(x)[0], plain(x)[0], atol=1e-4, rtol=1e-4)


def test_masks_agree_with_plain_attention():
    plain, re = pair("none")
    x = torch.randn(2, 6, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    torch.testing.assert_close(re(x, attn_mask=causal)[0], plain(x, attn_mask=causal)[0])
    torch.testing.assert_close(re(x, key_padding_mask=padding)[0], plain(x, key_padding_mask=padding)[0])


def test_theta_mixes_the_heads():
    _, re = pair("none", heads=2)
    x = torch.randn(1, 5, 32)
    maps = re(x, need_weights=True)[1]
    with torch.no_grad():
        re.theta.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swap the two heads' maps
    swapped = re(x, need_weights=True)[1]
    torch.testing.assert_close(swapped, maps.flip(1))
    with torch.no_grad():
        re.theta.fill_(0.5)  # both new maps: the mean of the two
    torch.testing.assert_close(re(x, need_weights=True)[1], maps.mean(1, keepdim=True).expand(-1, 2, -1, -1))


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norms_normalize_over_the_heads(norm):
    _, re = pair(norm)
    re.train()
    maps = re.mix(torch.rand(3, 4, 5, 5).softmax(-1))
    if norm == "batch":  # each head's map: mean 0, variance 1 over (B, T, T)
        torch.testing.assert_close(maps.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    else:  # at each (b, i, j): mean 0 across the heads
        torch.testing.assert_close(maps.mean(dim=1), torch.zeros(3, 5, 5), atol=1e-5, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm must be one of"):
        ReAttention(32, 4, norm="group")
    _, re = pair()
    x = torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match="self-attention only"):
        re(x, torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="query must be"):
        re(torch.randn(3, 32))
    with pytest.raises(TypeError, match="minivit ViT"):
        use_reattention(torch.nn.Linear(2, 2))


def test_reattention_vit_shapes_and_weights_kept():
    torch.manual_seed(0)
    plain = ViT(image_size=16, patch_size=4, dim=32, depth=3, num_heads=4, mlp_dim=64)
    images = torch.randn(2, 3, 16, 16)
    expected = plain.eval()(images)
    model = use_reattention(plain, norm="none")
    assert all(isinstance(block.attn, ReAttention) for block in model.encoder.blocks)
    torch.testing.assert_close(model(images), expected)  # theta = identity, no norm: the same function
    logits, attention = capture_attention(reattention_vit(image_size=16, patch_size=4, dim=32, depth=3, num_heads=4,
                                                          mlp_dim=64), images)
    assert logits.shape == (2, 10) and attention.shape == (3, 2, 4, 17, 17)
    assert cross_layer_similarity(attention).shape == (3, 3)
    model.train()
    model(images).sum().backward()
    assert model.encoder.blocks[0].attn.theta.grad is not None


def test_report_maps_switches_between_mixed_and_softmax_maps():
    plain, re = pair("none", heads=2)
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        re.theta.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    softmax_maps = plain(x, need_weights=True)[1]
    torch.testing.assert_close(re(x, need_weights=True)[1], softmax_maps.flip(1))
    report_maps(torch.nn.Sequential(re), "softmax")
    out, maps = re(x, need_weights=True)
    torch.testing.assert_close(maps, softmax_maps)
    torch.testing.assert_close(out, re(x)[0])  # the output does not depend on what is reported
    with pytest.raises(ValueError, match="which must be"):
        report_maps(re, "raw")


def test_reattention_vit_trains_through_fit_on_an_accelerator():
    from minivit.reattention import reattention_vit
    from minivit.testing import fake_accelerator
    from minivit.train import TrainConfig, fit
    from minivit.transfer import shapes_classification

    data = shapes_classification(32, image_size=16, seed=0)
    model = reattention_vit(image_size=16, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=3)
    with fake_accelerator():
        history = fit(model, data, data, TrainConfig(epochs=1, batch_size=16), progress=False)
    assert history.epochs == 1
