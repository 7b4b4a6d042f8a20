"""Chapter 2: scaled dot-product attention and multi-head attention.

Shapes: B batch, H heads, N query tokens, M key tokens, D model width, d = D / H.
Masks follow the references they are tested against:

* ``attn_mask`` as in ``F.scaled_dot_product_attention``: boolean, ``True`` = may attend,
  or a float tensor added to the scores; broadcastable to (B, H, N, M);
* ``key_padding_mask`` as in ``nn.MultiheadAttention``: (B, M) boolean, ``True`` = padding, ignore.
"""
from __future__ import annotations

import math
import statistics
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minivit.devices import cpu_threads, synchronize, timed


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q K^T / sqrt(d) + mask) V``, written out; returns ``(output, attn_weights)``.

    query (..., N, d), key (..., M, d), value (..., M, d_v) -> output (..., N, d_v),
    attn_weights (..., N, M). Equal to ``F.scaled_dot_product_attention``, which is faster
    but does not return the weights.
    """
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same last dimension, got {query.shape[-1]} and {key.shape[-1]}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same number of tokens, got {key.shape[-2]} and {value.shape[-2]}"
        )
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (..., N, M)
    if attn_mask is not None:
        check_mask_dtype(attn_mask, "attn_mask")
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
        # A query that may attend to no key at all gets zero weights and a zero output, exactly as the
        # fused kernel F.scaled_dot_product_attention returns (softmax over only -inf would be NaN).
        # The row's scores are set to 0 first, so no NaN reaches the gradient either.
        fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., N, 1)
        scores = scores.masked_fill(fully_masked, 0.0)
        attn_weights = scores.softmax(dim=-1).masked_fill(fully_masked, 0.0)
    else:
        attn_weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        attn_weights = F.dropout(attn_weights, p=dropout_p)
    return attn_weights @ value, attn_weights  # (..., N, d_v), (..., N, M)


def check_mask_dtype(mask: torch.Tensor, name: str) -> None:
    """Refuse masks that are neither boolean nor floating point (an integer 0/1 mask is ambiguous)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        if name == "key_padding_mask":
            hint = "pass a boolean mask, True = padding (e.g. mask.bool() for a 0/1 mask with 1 = padding)"
        else:
            hint = ("pass a boolean mask, True = may attend (e.g. mask.bool() for a 0/1 mask with 1 = may attend), "
                    "or a float mask added to the scores (0 = keep, -inf = block)")
        raise TypeError(f"{name} has dtype {mask.dtype}; integer masks are refused because a 0/1 mask would be "
                        f"added to the scores as numbers and block nothing; {hint}")


def merge_masks(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, num_keys: int
) -> torch.Tensor | None:
    """One boolean 'may attend' mask from an ``attn_mask`` and a ``key_padding_mask`` (either may be None)."""
    if attn_mask is not None:
        check_mask_dtype(attn_mask, "attn_mask")
    if key_padding_mask is None:
        return attn_mask
    check_mask_dtype(key_padding_mask, "key_padding_mask")
    if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != num_keys:
        raise ValueError(f"key_padding_mask must be (B, {num_keys}), got {tuple(key_padding_mask.shape)}")
    keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, M)
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask.masked_fill(~keep, float("-inf"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused input projection, batch first: (B, N, D).

    The parameters are laid out as in ``nn.MultiheadAttention`` (``qkv.weight`` is its
    ``in_proj_weight``, ``proj`` its ``out_proj``), so weights copy over one to one.
    ``need_weights=False`` runs the fused kernel ``F.scaled_dot_product_attention``;
    ``need_weights=True`` runs the written-out path and also returns the weights
    (B, H, N, M), which chapter 7 draws. Both give the same output.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}; choose num_heads that divides dim "
                f"(each head gets dim / num_heads channels)"
            )
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _project(self, query, key, value) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if key is query and value is query:  # self-attention: one matrix product
            return self.qkv(query).chunk(3, dim=-1)
        weights = self.qkv.weight.chunk(3)
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query`` (B, N, D) to ``key``/``value`` (B, M, D); both default to ``query``.

        Returns ``(output (B, N, D), attn_weights (B, H, N, M) or None)``.
        """
        key = query if key is None else key
        value = key if value is None else value
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if tensor.dim() != 3 or tensor.shape[-1] != self.dim:
                raise ValueError(f"{name} must be (B, tokens, {self.dim}), got shape {tuple(tensor.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"batch/token sizes disagree: query {tuple(query.shape)}, key {tuple(key.shape)}, "
                f"value {tuple(value.shape)}"
            )
        batch, num_queries, _ = query.shape
        q, k, v = self._project(query, key, value)  # each (B, tokens, D)
        # (B, H, tokens, d)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        mask = merge_masks(attn_mask, key_padding_mask, k.shape[2])
        dropout_p = self.attn_dropout if self.training else 0.0
        if need_weights:
            out, attn_weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)
        else:
            out, attn_weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None
        out = out.transpose(1, 2).reshape(batch, num_queries, self.dim)  # (B, N, H, d) -> (B, N, D)
        return self.proj(out), attn_weights


@dataclass
class AttentionCost:
    """What one attention call cost: the median wall time of the repeats (s), every timed call (s), and
    the peak memory it allocated (bytes)."""

    seconds: float
    peak_bytes: int
    times: tuple[float, ...] = ()


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created under it that are still alive, and their peak.

    Every aten op's outputs are seen here; a storage counts once (views share it), storages
    that existed before (the inputs) count not at all, and a storage stops counting when its
    last tensor is freed. Buffers a fused kernel allocates and frees inside itself are invisible.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._owners: dict[int, int] = {}  # storage pointer -> number of live tensors using it
        self._external: set[int] = set()

    def _release(self, pointer: int, nbytes: int) -> None:
        self._owners[pointer] -= 1
        if self._owners[pointer] == 0:
            del self._owners[pointer]
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in tree_leaves((args, kwargs)):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self._owners:
                self._external.add(tensor.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
            if pointer in self._external or nbytes == 0:
                continue
            if pointer not in self._owners:
                self._owners[pointer] = 0
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            self._owners[pointer] += 1
            weakref.finalize(tensor, self._release, pointer, nbytes)
        return out


def measure_attention_cost(
    seq_len: int,
    head_dim: int = 64,
    num_heads: int = 1,
    batch_size: int = 1,
    fused: bool = True,
    repeats: int = 3,
    device: torch.device | str | None = None,
    max_bytes: float = 4e9,
    threads: int | None = None,
) -> AttentionCost:
    """Time and peak memory of self-attention over ``seq_len`` tokens on random (B, H, N, d) inputs.

    ``fused=True`` times ``F.scaled_dot_product_attention``, ``fused=False`` the written-out
    :func:`scaled_dot_product_attention` (which materializes the (B, H, N, N) weights). Time is
    the median of ``repeats`` calls after one warm-up call (one slow call, from other load on a
    shared machine, does not move it; ``times`` keeps every call). Peak memory is the memory the
    call allocated on top of its inputs: ``torch.cuda.max_memory_allocated`` on CUDA; elsewhere the
    peak of live tensors created op by op (scratch memory inside one fused kernel is not seen).
    The written-out path holds about three (B, H, N, N) fp32 tensors at once: a run that would need
    more than ``max_bytes`` for them is refused before anything is allocated. ``threads``: CPU
    threads to time with (None: torch's setting; 1 gives steadier timings on a busy machine).
    """
    if seq_len < 1 or head_dim < 1 or num_heads < 1 or batch_size < 1 or repeats < 1:
        raise ValueError(
            f"seq_len, head_dim, num_heads, batch_size and repeats must be >= 1, got {seq_len}, {head_dim}, "
            f"{num_heads}, {batch_size}, {repeats}"
        )
    weights_bytes = 3 * batch_size * num_heads * seq_len ** 2 * 4  # scores, softmax, its copy: (B, H, N, N) fp32
    if not fused and weights_bytes > max_bytes:
        raise ValueError(f"fused=False over seq_len={seq_len} tokens would hold about {weights_bytes / 1e9:.1f} GB of "
                         f"(B, H, N, N) attention weights, over max_bytes={max_bytes / 1e9:.1f} GB; use fused=True, "
                         f"a smaller seq_len (memory grows as seq_len**2), or raise max_bytes if you have the memory")
    device = torch.device(device) if device is not None else torch.device("cpu")
    q, k, v = torch.randn(3, batch_size, num_heads, seq_len, head_dim, device=device).unbind(0)  # (B, H, N, d) each

    def attend() -> torch.Tensor:
        if fused:
            return F.scaled_dot_product_attention(q, k, v)
        return scaled_dot_product_attention(q, k, v)[0]

    with torch.no_grad(), cpu_threads(threads if device.type == "cpu" else None):
        attend()  # warm-up
        synchronize(device)
        times = []
        for _ in range(repeats):
            with timed(device) as clock:
                attend()
            times.append(clock.seconds)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
            attend()
            synchronize(device)
            peak_bytes = torch.cuda.max_memory_allocated(device) - baseline
        else:
            with _LiveTensorBytes() as tracker:
                attend()
            peak_bytes = tracker.peak
    return AttentionCost(seconds=statistics.median(times), peak_bytes=int(peak_bytes), times=tuple(times))
