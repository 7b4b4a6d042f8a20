"""Chapter 2 exercises: scaled dot-product attention, masks, multi-head parameters, sinusoidal positions."""
from __future__ import annotations

import math

import torch

from minivit.attention import scaled_dot_product_attention
from minivit.exercises.base import Exercise, Wrong, call, compare, compare_number, letter_checker
from minivit.transformer import sinusoidal_position_encoding

NOTEBOOK = "02_attention_from_scratch.ipynb"


def _naive(query, key, value, scale, dim=-1, mask=None):
    scores = query @ key.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=dim) @ value


def _check_attention(fn) -> None:
    gen = torch.Generator().manual_seed(3)
    for lead, n, m, d, dv in [((2,), 5, 7, 16, 3), ((2, 3), 4, 6, 64, 5), ((), 1, 3, 4, 2)]:
        q, k, v = (torch.randn(*lead, t, c, generator=gen) * 2 for t, c in ((n, d), (m, d), (m, dv)))
        on = f"query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}"
        got = call(fn, q.clone(), k.clone(), v.clone(), on=on)
        if isinstance(got, tuple):
            raise Wrong(f"got a tuple on {on}: return only the output (..., N, d_v)")
        expected, weights = scaled_dot_product_attention(q, k, v)
        compare(got, expected, on=on, wrong={
            "missing the 1/sqrt(d) scale on the scores": lambda: _naive(q, k, v, 1.0),
            "divided by d instead of sqrt(d)": lambda: _naive(q, k, v, 1.0 / d),
            "the softmax runs over the query axis: each query's weights over the keys must sum to 1 (dim=-1)":
                lambda: _naive(q, k, v, 1.0 / math.sqrt(d), dim=-2),
            "you returned the attention weights (..., N, M); return weights @ value": weights,
        })


ex1 = Exercise(
    name="ex1", title="scaled dot-product attention", kind="implement",
    prompt="""
    Write `my_attention(query, key, value)` = softmax(Q K^T / sqrt(d)) V for inputs (..., N, d), (..., M, d),
    (..., M, d_v); return only the output (..., N, d_v). The checker compares it with
    `minivit.attention.scaled_dot_product_attention`, with N != M and d_v != d so that swapped axes show.
    """,
    starter="""
    from minivit.exercises.ch2 import ex1


    def my_attention(query, key, value):
        raise NotImplementedError  # your code here


    ex1.check(my_attention)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_attention",
    solution_code="""
import math


def my_attention(query, key, value):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (..., N, M)
    return scores.softmax(dim=-1) @ value  # (..., N, d_v)
""",
    hints=("Scores are (..., N, M): one row per query. Which axis must sum to one after the softmax?",
           "scores = query @ key.transpose(-2, -1) / sqrt(d); softmax over dim=-1 (the keys); then @ value."),
    checker=_check_attention, anchor="## 3. Masks",
    recognised=("missing 1/sqrt(d)", "divided by d", "softmax over the query axis", "returned the weights"),
)


def _check_causal(fn) -> None:
    for n in (5, 8, 2, 1):
        on = f"n = {n}"
        got = call(fn, n, on=on)
        expected = torch.ones(n, n, dtype=torch.bool).tril()
        got_t = torch.as_tensor(got)
        if got_t.dtype != torch.bool:
            raise Wrong(f"a {got_t.dtype} mask on {on}: return a boolean mask, True where a query may attend "
                        "(the course's convention, as in F.scaled_dot_product_attention)")
        compare(got_t, expected, on=on, wrong={
            "the mask lets each token see the future and not the past: it is transposed (use the lower triangle)":
                expected.T.clone(),
            "a token cannot attend to itself: keep the diagonal": expected & ~torch.eye(n, dtype=torch.bool),
            "True and False are swapped: True means 'may attend'": ~expected,
        })


ex2 = Exercise(
    name="ex2", title="a causal mask", kind="implement",
    prompt="""
    Write `my_causal_mask(n)`: a boolean (n, n) mask for `scaled_dot_product_attention(..., attn_mask=mask)`,
    True where query i may attend to key j, so that every token sees itself and the tokens before it.
    """,
    starter="""
    from minivit.exercises.ch2 import ex2


    def my_causal_mask(n):
        raise NotImplementedError  # your code here


    ex2.check(my_causal_mask)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_causal_mask",
    solution_code="""
import torch


def my_causal_mask(n):
    return torch.ones(n, n, dtype=torch.bool).tril()  # row i (the query) allows columns j <= i
""",
    hints=("Rows are queries, columns are keys: query i may look at keys j with j <= i.",
           "That is the lower triangle, diagonal included: torch.ones(n, n, dtype=torch.bool).tril()."),
    checker=_check_causal, anchor="## 4. Multi-head",
    recognised=("transposed (upper triangle)", "diagonal excluded", "True/False swapped", "not boolean"),
)


def _check_padded(fn) -> None:
    gen = torch.Generator().manual_seed(4)
    batch, n, d = 3, 6, 8
    q, k, v = (torch.randn(batch, n, d, generator=gen) for _ in range(3))
    lengths = torch.tensor([6, 4, 2])
    padding = torch.arange(n)[None, :] >= lengths[:, None]  # (B, M) True = padding
    on = f"query/key/value {tuple(q.shape)} and key_padding {tuple(padding.shape)} with valid lengths [6, 4, 2]"
    got = call(fn, q.clone(), k.clone(), v.clone(), padding.clone(), on=on)
    if isinstance(got, tuple):
        raise Wrong(f"got a tuple on {on}: return only the output (B, N, d)")
    expected, _ = scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, :])
    scale = 1.0 / math.sqrt(d)
    compare(got, expected, on=on, wrong={
        "the mask is applied on the query axis: padding marks keys, so it must broadcast as (B, 1, M)":
            lambda: _naive(q, k, v, scale, mask=~padding[:, :, None]),
        "the mask is applied on the query axis (padding marks keys: broadcast it as (B, 1, M))":
            lambda: scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, :, None])[0],
        "the queries attend only to the padding: True in key_padding means 'ignore this key'":
            lambda: scaled_dot_product_attention(q, k, v, attn_mask=padding[:, None, :])[0],
        "the padding is not masked at all": lambda: scaled_dot_product_attention(q, k, v)[0],
    })


ex3 = Exercise(
    name="ex3", title="a key-padding mask", kind="implement",
    prompt="""
    A batch of sequences of different lengths is padded to the same length. Write
    `my_padded_attention(query, key, value, key_padding)` with inputs (B, N, d) and `key_padding` (B, M), True
    at padding positions, so that no query attends to a padded key. Use
    `minivit.attention.scaled_dot_product_attention(q, k, v, attn_mask=...)` (True = may attend) and return
    its output only.
    """,
    starter="""
    from minivit.attention import scaled_dot_product_attention  # noqa: F401, F811
    from minivit.exercises.ch2 import ex3


    def my_padded_attention(query, key, value, key_padding):
        raise NotImplementedError  # your code here


    ex3.check(my_padded_attention)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_padded_attention",
    solution_code="""
from minivit.attention import scaled_dot_product_attention


def my_padded_attention(query, key, value, key_padding):
    allowed = ~key_padding[:, None, :]  # (B, 1, M): the same keys for every query
    return scaled_dot_product_attention(query, key, value, attn_mask=allowed)[0]
""",
    hints=("The scores are (B, N, M); the mask must block columns (keys), the same for every row (query).",
           "Invert key_padding (True must mean 'may attend') and insert the query axis: ~key_padding[:, None, :]."),
    checker=_check_padded, anchor="## 4. Multi-head",
    recognised=("mask on the query axis", "mask inverted", "mask not applied"),
)


def _check_mha_params(answer) -> None:
    dim, heads = 96, 4
    compare_number(answer, 4 * dim * dim + 4 * dim, what="your count", wrong={
        "you counted the weights but not the biases (each Linear has a bias)": 4 * dim * dim,
        "you counted the Q, K, V projections but not the output projection": 3 * dim * dim + 3 * dim,
        "the heads split the projections, they do not multiply them: the count does not depend on the "
        "number of heads": heads * (4 * dim * dim + 4 * dim),
        "each head's projections are dim x (dim / heads), and there are heads of them: together dim x dim":
            4 * dim * (dim // heads) + 4 * dim,
    })


ex4 = Exercise(
    name="ex4", title="parameters of multi-head attention", kind="predict",
    prompt="""
    Without running any code: how many parameters does `minivit.attention.MultiHeadAttention(dim=96,
    num_heads=4)` have (its Q, K, V projections, output projection, all with biases)? Then check with
    `sum(p.numel() for p in mha.parameters())`.
    """,
    starter="""
    from minivit.exercises.ch2 import ex4

    answer = ...  # a number
    ex4.check(answer)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="answer",
    solution_code="answer = 4 * 96 * 96 + 4 * 96  # Q, K, V and output projections: 37,248\n",
    hints=("Four linear maps of dim -> dim, each with a bias. Does the number of heads change their size?",
           "Each projection has 96 * 96 weights and 96 biases; heads only split the 96 outputs into 4 groups."),
    checker=_check_mha_params, anchor="## 5. Attention does not know",
    recognised=("no biases", "no output projection", "multiplied by heads", "divided by heads"),
)

ex5 = Exercise(
    name="ex5", title="attention's memory grows with the square of the sequence", kind="experiment",
    prompt="""
    Run the cell: it measures the peak memory of the written-out attention (which holds the (N, N)
    weights) for N and 2N tokens. Doubling the sequence multiplies the memory by about:

    - **A** 2 (linear in N)
    - **B** 4 (quadratic in N)
    - **C** 8 (cubic in N)
    - **D** 1 (it does not change)
    """,
    starter="""
    import minivit
    import minivit.attention
    from minivit.exercises.ch2 import ex5


    def measure_attention_memory():
        n = minivit.by_profile(smoke=256, cpu=512, gpu=1024)
        small, large = (minivit.attention.measure_attention_cost(t, head_dim=16, fused=False, repeats=1)
                        for t in (n, 2 * n))
        print(f"N = {n}: {small.peak_bytes / 1e6:.1f} MB; N = {2 * n}: {large.peak_bytes / 1e6:.1f} MB; "
              f"ratio {large.peak_bytes / small.peak_bytes:.2f}")


    measure_attention_memory()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex5.check(answer)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'B'  # the (N, N) weights dominate: twice the tokens, four times the memory\n",
    hints=("Look at the printed ratio, and at which tensor is the largest: Q, K, V are (N, d), the weights (N, N).",
           "N x N entries: doubling N doubles both the rows and the columns."),
    checker=letter_checker("B", {
        "A": "linear would be true for Q, K and V, but the (N, N) weights dominate: look at the printed ratio",
        "C": "the weights are (N, N), two factors of N, not three",
        "D": "the printed ratio is far from 1: the weights grow with the sequence",
    }),
    anchor="## 7. Sinusoidal",
    recognised=("A: linear", "C: cubic", "D: constant"),
)


def _check_sinusoidal(fn) -> None:
    for positions, dim in [(10, 16), (50, 64), (1, 2), (7, 6)]:
        on = f"num_positions {positions}, dim {dim}"
        got = call(fn, positions, dim, on=on)
        expected = sinusoidal_position_encoding(positions, dim)
        pos = torch.arange(positions, dtype=torch.float32)[:, None]
        freq_i = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / dim)
        angles = pos * torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        swapped = torch.empty(positions, dim)
        swapped[:, 0::2], swapped[:, 1::2] = angles.cos(), angles.sin()
        slow = torch.empty(positions, dim)
        slow[:, 0::2], slow[:, 1::2] = (pos * freq_i).sin(), (pos * freq_i).cos()
        compare(got, expected, on=on, atol=1e-4, wrong={
            "sin and cos are swapped: sin goes to the even channels 2i, cos to the odd ones 2i+1": swapped,
            "the sines and cosines are concatenated [sin | cos]; they are interleaved (channels 0::2 and 1::2)":
                torch.cat([angles.sin(), angles.cos()], dim=1),
            "the frequencies fall too slowly: the exponent is 2i/dim, with i counting the pairs": slow,
        })


ex6 = Exercise(
    name="ex6", title="the sinusoidal position encoding", kind="implement",
    prompt="""
    Write `my_sinusoidal(num_positions, dim)`, the (num_positions, dim) encoding of "Attention Is All You
    Need": `PE[p, 2i] = sin(p / 10000^(2i/dim))`, `PE[p, 2i+1] = cos(p / 10000^(2i/dim))`.
    """,
    starter="""
    from minivit.exercises.ch2 import ex6


    def my_sinusoidal(num_positions, dim):
        raise NotImplementedError  # your code here


    ex6.check(my_sinusoidal)
    # ex6.hint()
    # ex6.solution()
    """,
    answer_name="my_sinusoidal",
    solution_code="""
import torch


def my_sinusoidal(num_positions, dim):
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    frequencies = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    encoding = torch.empty(num_positions, dim)
    encoding[:, 0::2] = (positions * frequencies).sin()
    encoding[:, 1::2] = (positions * frequencies).cos()
    return encoding
""",
    hints=("One frequency per pair of channels (dim / 2 of them); each pair holds a sine and a cosine of the "
           "same angle.",
           "frequencies = 10000 ** (-torch.arange(0, dim, 2) / dim); write sin into encoding[:, 0::2] and cos "
           "into encoding[:, 1::2]."),
    checker=_check_sinusoidal, anchor="## 8. The pre-norm",
    recognised=("sin/cos swapped", "concatenated instead of interleaved", "exponent i/dim instead of 2i/dim"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5, ex6]
