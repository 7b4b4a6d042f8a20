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
