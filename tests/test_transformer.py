import math

import pytest
import torch
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionEncoderBlock

from minivit.transformer import Encoder, EncoderBlock, sinusoidal_position_encoding


def test_sinusoidal_encoding_values():
    encoding = sinusoidal_position_encoding(50, 16)
    assert encoding.shape == (50, 16)
    position, i = 7, 3
    angle = position / 10000 ** (2 * i / 16)
    torch.testing.assert_close(encoding[position, 2 * i], torch.tensor(math.sin(angle)))
    torch.testing.assert_close(encoding[position, 2 * i + 1], torch.tensor(math.cos(angle)))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_position_encoding(4, 7)


def test_sinusoidal_similarity_depends_only_on_offset():
    encoding = sinusoidal_position_encoding(64, 32)
    similarity = encoding @ encoding.T
    torch.testing.assert_close(similarity[3, 8], similarity[20, 25])
    torch.testing.assert_close(similarity[10, 10], torch.tensor(16.0))


def test_encoder_block_equals_torchvision_block():
    torch.manual_seed(0)
    block = EncoderBlock(dim=32, num_heads=4, mlp_dim=64).eval()
    reference = TorchvisionEncoderBlock(4, 32, 64, 0.0, 0.0,
                                        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    with torch.no_grad():
        reference.ln_1.load_state_dict(block.norm1.state_dict())
        reference.ln_2.load_state_dict(block.norm2.state_dict())
        reference.self_attention.in_proj_weight.copy_(block.attn.qkv.weight)
        reference.self_attention.in_proj_bias.copy_(block.attn.qkv.bias)
        reference.self_attention.out_proj.load_state_dict(block.attn.proj.state_dict())
        reference.mlp[0].load_state_dict(block.mlp.fc1.state_dict())
        reference.mlp[3].load_state_dict(block.mlp.fc2.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(block(x), reference(x), atol=1e-5, rtol=1e-5)


def test_block_is_pre_norm_with_a_clean_residual_stream():
    block = EncoderBlock(dim=8, num_heads=2, mlp_dim=16).eval()
    with torch.no_grad():  # zero both branches: a pre-norm block is then the identity
        for linear in (block.attn.proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    x = 100 * torch.randn(2, 5, 8)
    torch.testing.assert_close(block(x), x)


def test_encoder_returns_every_layers_attention():
    encoder = Encoder(dim=16, depth=3, num_heads=4, mlp_dim=32).eval()
    x = torch.randn(2, 6, 16)
    out, weights = encoder.forward_with_attention(x)
    assert weights.shape == (3, 2, 4, 6, 6)
    torch.testing.assert_close(out, encoder(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 4, 6))


def test_drop_path_is_identity_in_eval_and_without_rate():
    from minivit.transformer import DropPath, drop_path

    x = torch.randn(8, 5, 4)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    assert torch.equal(drop_path(x, 0.0, training=True), x)
    module = DropPath(0.3).eval()
    assert torch.equal(module(x), x)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        DropPath(1.0)


def test_drop_path_drops_whole_samples_at_the_expected_rate():
    from minivit.transformer import drop_path

    torch.manual_seed(0)
    x = torch.ones(20_000, 3, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.reshape(20_000, -1)
    # each sample is all zeros or all 1 / (1 - rate): whole branches are dropped, not single values
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    keep_rate = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(keep_rate - 0.75) < 0.015  # 3 sigma of a binomial with n = 20,000
    assert abs(out.mean().item() - 1.0) < 0.03  # the expectation is unchanged


def test_encoder_drop_path_rates_rise_linearly_and_change_nothing_at_zero():
    from minivit.transformer import DropPath, drop_path_rates

    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    encoder = Encoder(dim=8, depth=4, num_heads=2, mlp_dim=16, drop_path=0.3)
    rates = [block.drop_path.rate if isinstance(block.drop_path, DropPath) else 0.0 for block in encoder.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    torch.manual_seed(0)
    plain = Encoder(dim=8, depth=2, num_heads=2, mlp_dim=16)
    torch.manual_seed(0)
    dropped = Encoder(dim=8, depth=2, num_heads=2, mlp_dim=16, drop_path=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # no new parameters
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(plain.eval()(x), dropped.eval()(x), rtol=0, atol=0)
    dropped.train()
    assert not torch.allclose(dropped(x.repeat(64, 1, 1)), plain(x.repeat(64, 1, 1)))
