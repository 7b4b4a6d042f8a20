import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minivit.attention import MultiHeadAttention, scaled_dot_product_attention


def random_qkv(batch=2, heads=3, queries=5, keys=7, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, queries, dim, generator=generator),
        torch.randn(batch, heads, keys, dim, generator=generator),
        torch.randn(batch, heads, keys, dim, generator=generator),
    )


def test_attention_equals_torch_sdpa():
    q, k, v = random_qkv()
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_attention_with_boolean_and_float_masks_equals_torch():
    q, k, v = random_qkv(queries=6, keys=6)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out, weights = scaled_dot_product_attention(q, k, v, causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.all(weights.masked_select(~causal) == 0)
    additive = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, additive)[0], F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    )


def copy_into_torch(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    reference = nn.MultiheadAttention(mha.dim, mha.num_heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(mha.qkv.weight)
        reference.in_proj_bias.copy_(mha.qkv.bias)
        reference.out_proj.weight.copy_(mha.proj.weight)
        reference.out_proj.bias.copy_(mha.proj.bias)
    return reference.eval()


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_equals_torch_self_attention(need_weights):
    torch.manual_seed(0)
    mha = MultiHeadAttention(dim=16, num_heads=4).eval()
    reference = copy_into_torch(mha)
    x = torch.randn(3, 10, 16)
    padding = torch.zeros(3, 10, dtype=torch.bool)
    padding[1, 7:] = True
    out, weights = mha(x, key_padding_mask=padding, need_weights=need_weights)
    expected, expected_weights = reference(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    else:
        assert weights is None


def test_mha_equals_torch_cross_attention_with_mask():
    torch.manual_seed(1)
    mha = MultiHeadAttention(dim=12, num_heads=3).eval()
    reference = copy_into_torch(mha)
    query, memory = torch.randn(2, 4, 12), torch.randn(2, 9, 12)
    allowed = torch.rand(4, 9) > 0.3
    allowed[:, 0] = True  # every query may attend somewhere
    out, _ = mha(query, memory, memory, attn_mask=allowed)
    expected, _ = reference(query, memory, memory, attn_mask=~allowed)  # torch's boolean mask marks what is blocked
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_fast_and_weight_returning_paths_agree_in_training_mode_without_dropout():
    torch.manual_seed(2)
    mha = MultiHeadAttention(dim=32, num_heads=8).train()
    x = torch.randn(2, 17, 32, requires_grad=True)
    fast, _ = mha(x)
    slow, weights = mha(x, need_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    assert weights.shape == (2, 8, 17, 17)
    grad_fast = torch.autograd.grad(fast.sum(), x)[0]
    grad_slow = torch.autograd.grad(slow.sum(), x)[0]
    torch.testing.assert_close(grad_fast, grad_slow, atol=1e-5, rtol=1e-4)


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(3)
    mha = MultiHeadAttention(dim=16, num_heads=2).eval()
    x = torch.randn(1, 12, 16)
    permutation = torch.randperm(12)
    torch.testing.assert_close(mha(x[:, permutation])[0], mha(x)[0][:, permutation], atol=1e-6, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHeadAttention(dim=10, num_heads=3)
    with pytest.raises(ValueError, match="same last dimension"):
        scaled_dot_product_attention(torch.zeros(1, 2, 4), torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="same number of tokens"):
        scaled_dot_product_attention(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4), torch.zeros(1, 4, 4))
    mha = MultiHeadAttention(dim=8, num_heads=2)
    with pytest.raises(ValueError, match=r"query must be \(B, tokens, 8\)"):
        mha(torch.zeros(1, 3, 6))
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        mha(torch.zeros(1, 3, 8), key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))


def test_fully_masked_rows_give_zeros_on_both_paths_like_the_fused_kernel():
    """Issue 13, findings 7 and 13: a query that may attend to nothing gets a zero output and zero weights
    (what F.scaled_dot_product_attention returns), not NaN, on the weight-returning path too."""
    q, k, v = random_qkv(queries=4, keys=5)
    allowed = torch.ones(4, 5, dtype=torch.bool)
    allowed[2] = False  # query 2 may attend to no key
    additive = torch.zeros(4, 5).masked_fill(~allowed, float("-inf"))
    for mask in (allowed, additive):
        fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()
        torch.testing.assert_close(out, fused)
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
        assert torch.equal(weights[:, :, 2], torch.zeros_like(weights[:, :, 2]))
        torch.testing.assert_close(weights[:, :, [0, 1, 3]].sum(-1), torch.ones(2, 3, 3))
    q.requires_grad_(True)
    scaled_dot_product_attention(q, k, v, allowed)[0].sum().backward()
    assert torch.isfinite(q.grad).all()

    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 3, 8)
    padding = torch.tensor([[True, True, True], [False, True, False]])  # image 0: every key is padding
    out_weights, weights = mha(x, key_padding_mask=padding, need_weights=True)
    out_fused, _ = mha(x, key_padding_mask=padding, need_weights=False)
    assert torch.isfinite(out_weights).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(out_weights, out_fused)
    assert torch.equal(weights[0], torch.zeros_like(weights[0]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_masks_are_refused_with_a_message(dtype):
    """Issue 13: an integer 0/1 mask used to be added to the scores (masked keys kept weight)."""
    q, k, v = random_qkv(queries=3, keys=3)
    mask = torch.ones(3, 3, dtype=dtype).tril()
    with pytest.raises(TypeError, match=r"attn_mask.*mask\.bool\(\)"):
        scaled_dot_product_attention(q, k, v, mask)
    mha = MultiHeadAttention(8, 2)
    for need_weights in (False, True):
        with pytest.raises(TypeError, match=r"attn_mask.*mask\.bool\(\)"):
            mha(torch.zeros(1, 3, 8), attn_mask=mask, need_weights=need_weights)
        with pytest.raises(TypeError, match=r"key_padding_mask.*mask\.bool\(\)"):
            mha(torch.zeros(1, 3, 8), key_padding_mask=torch.zeros(1, 3, dtype=dtype), need_weights=need_weights)
