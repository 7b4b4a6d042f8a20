"""Tests for the helpers that the chapter 1-2 notebooks use: measuring the cost of attention."""
import pytest
import torch

from minivit.attention import AttentionCost, _LiveTensorBytes, measure_attention_cost


def test_live_tensor_bytes_counts_new_storages_once_and_ignores_inputs():
    inputs = torch.ones(1000)  # created outside: never counted
    with torch.no_grad(), _LiveTensorBytes() as tracker:
        first = inputs * 2  # 4000 bytes
        view = first.view(10, 100)  # a view: shares the storage, no new bytes
        second = first + view.flatten()  # another 4000 bytes
        del first, view
        third = second * 3  # the first storage is freed by now: peak stays at 8000
        del second, third
    assert tracker.peak == 8000
    assert tracker.current == 0


def test_written_out_attention_materializes_the_score_matrix():
    seq_len, heads = 256, 2
    cost = measure_attention_cost(seq_len, head_dim=16, num_heads=heads, fused=False, repeats=1)
    score_bytes = heads * seq_len * seq_len * 4  # one float32 (H, N, N) matrix
    assert isinstance(cost, AttentionCost) and cost.seconds > 0
    assert score_bytes <= cost.peak_bytes <= 3 * score_bytes + 4 * heads * seq_len * 16


def test_written_out_attention_memory_grows_quadratically():
    small = measure_attention_cost(128, head_dim=8, fused=False, repeats=1).peak_bytes
    large = measure_attention_cost(512, head_dim=8, fused=False, repeats=1).peak_bytes
    assert 12 < large / small < 17  # 4x the tokens: ~16x the memory


def test_fused_attention_on_cpu_allocates_far_less_than_the_score_matrix():
    seq_len = 512
    cost = measure_attention_cost(seq_len, head_dim=16, fused=True, repeats=1)
    assert 0 < cost.peak_bytes < seq_len * seq_len * 4 / 8


def test_attention_time_is_the_median_of_the_repeats():
    cost = measure_attention_cost(64, head_dim=8, fused=True, repeats=5)
    assert len(cost.times) == 5 and all(t > 0 for t in cost.times)
    assert cost.seconds == sorted(cost.times)[2]  # the middle one of 5


@pytest.mark.parametrize("bad", [dict(seq_len=0), dict(seq_len=8, head_dim=0), dict(seq_len=8, repeats=0)])
def test_measure_attention_cost_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        measure_attention_cost(**bad)
