import pytest
import torch

from minivit.attention import MultiHeadAttention
from minivit.configs import ConfigError
from minivit.swin import (
    RelativePositionBias,
    SwinBlock,
    WindowViT,
    WindowViTConfig,
    measure_window_attention_cost,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from minivit.transformer import EncoderBlock


def test_window_partition_round_trip_and_window_contents():
    grid = torch.randn(2, 8, 12, 5)
    windows = window_partition(grid, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    torch.testing.assert_close(window_reverse(windows, 4, 8, 12), grid, rtol=0, atol=0)
    # window 4 of image 1 is the second row of windows, second column: rows 4..7, columns 4..7, row by row
    torch.testing.assert_close(windows[6 + 4], grid[1, 4:8, 4:8].reshape(16, 5), rtol=0, atol=0)


def test_window_partition_refuses_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by window=3"):
        window_partition(torch.randn(1, 8, 8, 2), 3)
    with pytest.raises(ValueError, match=r"\(B, h, w, D\)"):
        window_partition(torch.randn(8, 8, 2), 4)
    with pytest.raises(ValueError, match="windows must be"):
        window_reverse(torch.randn(3, 16, 2), 4, 8, 8)


def test_relative_position_index_against_direct_computation():
    window = 3
    index = relative_position_index(window)
    assert index.shape == (9, 9)
    for i in range(9):
        for j in range(9):
            dy = i // window - j // window
            dx = i % window - j % window
            assert index[i, j] == (dy + window - 1) * (2 * window - 1) + (dx + window - 1)
    assert index.min() == 0 and index.max() == (2 * window - 1) ** 2 - 1
    assert len(index.unique()) == (2 * window - 1) ** 2  # every offset occurs


def test_relative_bias_depends_only_on_the_offset():
    bias = RelativePositionBias(window=4, num_heads=3)()
    assert bias.shape == (3, 16, 16)
    # token (0, 0) -> (1, 2) and token (2, 1) -> (3, 3): the same offset, the same bias in every head
    torch.testing.assert_close(bias[:, 0 * 4 + 0, 1 * 4 + 2], bias[:, 2 * 4 + 1, 3 * 4 + 3])
    assert not torch.equal(bias[:, 0, 1], bias[:, 0, 4])  # different offsets, different (random) biases


@pytest.mark.parametrize("size, window, shift", [(8, 4, 2), (12, 4, 1), (12, 6, 3), (8, 2, 1)])
def test_shift_mask_only_joins_tokens_that_were_neighbours(size, window, shift):
    """After rolling by -shift, two tokens of a window may attend iff they were within one window of each
    other in the original grid (not brought together by the wrap-around)."""
    mask = shifted_window_mask(size, size, window, shift)
    assert mask.shape == ((size // window) ** 2, window ** 2, window ** 2)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    original = torch.stack([rows, cols], dim=-1)  # (h, w, 2): where each token was
    rolled = torch.roll(original, shifts=(-shift, -shift), dims=(0, 1))[None]  # what the rolled grid holds
    where = window_partition(rolled, window)  # (nW, M*M, 2)
    distance = (where[:, :, None, :] - where[:, None, :, :]).abs()  # (nW, M*M, M*M, 2)
    expected = (distance < window).all(dim=-1)
    assert torch.equal(mask, expected)
    assert mask.diagonal(dim1=1, dim2=2).all()  # every token attends to itself at least
    assert not mask[-1].all()  # the corner window mixes regions


def test_no_shift_no_mask():
    assert shifted_window_mask(8, 8, 4, 0).all()
    with pytest.raises(ValueError, match="shift must be in"):
        shifted_window_mask(8, 8, 4, 4)


def _block_pair(dim=16, heads=2, mlp=32, grid=4, window=4, shift=0):
    torch.manual_seed(0)
    swin = SwinBlock(dim, heads, mlp, grid, window, shift).eval()
    plain = EncoderBlock(dim, heads, mlp).eval()
    missing, unexpected = swin.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["rel_bias.table"] and unexpected == []
    return swin, plain


def test_one_window_over_the_whole_grid_is_full_attention_with_the_bias():
    swin, plain = _block_pair(grid=4, window=4)
    x = torch.randn(3, 16, 16)
    torch.testing.assert_close(swin(x), plain(x, attn_mask=swin.rel_bias()[None]), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        swin.rel_bias.table.zero_()  # no bias: exactly chapter 2's block
    torch.testing.assert_close(swin(x), plain(x), atol=1e-5, rtol=1e-5)


def test_windows_attend_independently():
    """Without shift, each window's output is full attention over that window's tokens alone."""
    swin, _ = _block_pair(grid=8, window=4)
    x = torch.randn(2, 64, 16)
    out = swin.attend(x)
    bias = swin.rel_bias()[None]
    grid = x.reshape(2, 8, 8, 16)
    for image in range(2):
        for top, left in ((0, 0), (0, 4), (4, 0), (4, 4)):
            tokens = grid[image:image + 1, top:top + 4, left:left + 4].reshape(1, 16, 16)
            expected, _ = swin.attn(tokens, attn_mask=bias)
            got = out.reshape(2, 8, 8, 16)[image, top:top + 4, left:left + 4].reshape(1, 16, 16)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_shifted_block_equals_masked_attention_on_the_rolled_grid():
    """A shifted block on x equals: roll, per-window attention with bias and region mask, roll back."""
    swin, _ = _block_pair(grid=8, window=4, shift=2)
    x = torch.randn(1, 64, 16)
    out = swin.attend(x).reshape(8, 8, 16)
    rolled = torch.roll(x.reshape(8, 8, 16), (-2, -2), (0, 1))
    mask = shifted_window_mask(8, 8, 4, 2)
    bias = swin.rel_bias()
    expected = torch.empty(8, 8, 16)
    for w, (top, left) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
        tokens = rolled[top:top + 4, left:left + 4].reshape(1, 16, 16)
        scores_mask = bias.masked_fill(~mask[w], float("-inf"))[None]
        expected[top:top + 4, left:left + 4] = swin.attn(tokens, attn_mask=scores_mask)[0].reshape(4, 4, 16)
    expected = torch.roll(expected, (2, 2), (0, 1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # and the token at (0, 0) never sees the token at (7, 7), though the roll puts them in one window
    x2 = x.clone()
    x2[0, 63] += 10.0
    assert torch.allclose(swin.attend(x2)[0, 0], swin.attend(x)[0, 0], atol=1e-6)


def test_block_refuses_wrong_token_counts_and_masks():
    swin, _ = _block_pair(grid=4, window=2, shift=1)
    with pytest.raises(ValueError, match="expected 4x4 = 16 tokens"):
        swin(torch.randn(1, 15, 16))
    with pytest.raises(ValueError, match="attn_mask=None"):
        swin(torch.randn(1, 16, 16), attn_mask=torch.ones(16, 16, dtype=torch.bool))


def test_window_vit_shapes_shifts_and_gradients():
    model = WindowViT(image_size=16, patch_size=2, dim=32, depth=4, num_heads=2, mlp_dim=64, window=4)
    assert [block.shift for block in model.blocks] == [0, 2, 0, 2]
    images = torch.randn(2, 3, 16, 16)
    logits = model(images)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    one_window = WindowViT(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64, window=4)
    assert [block.shift for block in one_window.blocks] == [0, 0]
    with pytest.raises(ValueError, match="expects 16x16"):
        model(torch.randn(1, 3, 8, 8))


def test_window_vit_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="window=3") as error:
        WindowViTConfig(window=3)
    assert error.value.field == "window"
    with pytest.raises(ConfigError) as error:
        WindowViTConfig(window=1, shift=True)
    assert error.value.field == "shift"


def test_window_cost_grows_slower_than_global():
    small = measure_window_attention_cost(8, 4, head_dim=8, num_heads=1, repeats=1)
    large = measure_window_attention_cost(32, 4, head_dim=8, num_heads=1, repeats=1)
    assert small.tokens == 64 and large.tokens == 1024
    # 16x the tokens: the global weights grow ~256x, the windowed ones ~16x
    global_growth = large.global_cost.peak_bytes / small.global_cost.peak_bytes
    window_growth = large.window_cost.peak_bytes / small.window_cost.peak_bytes
    assert global_growth > 100 and window_growth < 30
    assert large.window_cost.peak_bytes < large.global_cost.peak_bytes / 10


def test_window_attention_uses_multihead_attention_layout():
    swin, _ = _block_pair()
    assert isinstance(swin.attn, MultiHeadAttention)


def test_window_vit_checkpoint_round_trip(tmp_path):
    from minivit.models import build_from_config
    from minivit.train.checkpoint import load_checkpoint, save_checkpoint

    config = WindowViTConfig(image_size=16, patch_size=2, dim=16, depth=2, num_heads=2, mlp_dim=32, window=4)
    model = build_from_config(config).eval()
    path = save_checkpoint(tmp_path / "window.pt", model)
    loaded, _ = load_checkpoint(path)
    assert loaded.config == config
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(images), model(images), rtol=0, atol=0)
