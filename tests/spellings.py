"""Attention as people write it, one function per spelling, for tests.

`make(name, causal, scale)` returns `fn(q, k, v)` with q [B,H,N,D], k/v [B,Hkv,N,D].
Every spelling computes softmax(scale·QKᵀ + causal mask) V, in its own way.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from hypothesis import strategies as st


def _matmul_masked_fill(q, k, v, causal, scale):
    s = (q @ k.transpose(-2, -1)) / (1.0 / scale)
    if causal:
        n, m = q.shape[-2], k.shape[-2]
        keep = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(keep.logical_not(), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def _matmul_scale_q_additive(q, k, v, causal, scale):
    s = torch.matmul(q * scale, k.transpose(-1, -2))
    if causal:
        n = q.shape[-2]
        s = s + torch.triu(torch.full((n, n), float("-inf"), device=q.device), 1)
    return torch.matmul(F.softmax(s, dim=-1, dtype=torch.float32).type_as(q), v)


def _einsum_where(q, k, v, causal, scale):
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if causal:
        i = torch.arange(q.shape[-2], device=q.device)
        j = torch.arange(k.shape[-2], device=q.device)
        s = torch.where(i[:, None] >= j[None, :], s, torch.finfo(s.dtype).min)
    p = F.dropout(s.softmax(-1), p=0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def _bmm_eq_zero(q, k, v, causal, scale):
    b, h, n, d = q.shape
    s = torch.bmm(q.reshape(b * h, n, d), k.reshape(b * h, -1, d).transpose(1, 2)) * scale
    if causal:
        mask = torch.tril(torch.ones(n, k.shape[-2], device=q.device))
        s = s.masked_fill(mask == 0, float("-inf"))
    p = F.dropout(torch.softmax(s, -1), p=0.1, training=False)
    return torch.bmm(p, v.reshape(b * h, -1, v.shape[-1])).view(b, h, n, -1)


def _sdpa(q, k, v, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def _sdpa_gqa(q, k, v, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                          enable_gqa=True)


SPELLINGS = {
    "matmul_masked_fill": _matmul_masked_fill,
    "matmul_scale_q_additive": _matmul_scale_q_additive,
    "einsum_where": _einsum_where,
    "bmm_eq_zero": _bmm_eq_zero,
    "sdpa": _sdpa,
    "sdpa_gqa": _sdpa_gqa,
}
# Spellings whose causal mask is built for Nq == Nk only.
SQUARE_ONLY = {"matmul_scale_q_additive"}


def make(name: str, causal: bool, scale: float):
    body = SPELLINGS[name]

    def attention(q, k, v):
        return body(q, k, v, causal, scale)

    attention.__name__ = f"attention_{name}"
    return attention


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


class Problem(NamedTuple):
    name: str
    causal: bool
    b: int
    h: int
    hkv: int
    nq: int
    nk: int
    d: int
    dtype: torch.dtype
    scale: float


@st.composite
def problems(draw, *, batch: int, kv_heads: int, groups: int, min_n: int, max_n: int,
             head_dims: list[int], scales: list[float | None]) -> Problem:
    """A spelling and a problem for it: sizes up to the bounds given, GQA groups only for
    the spelling that supports them, Nk = Nq where the spelling's mask needs it; a scale
    of None means 1/sqrt(d)."""
    name = draw(st.sampled_from(sorted(SPELLINGS)))
    causal = draw(st.booleans())
    b = draw(st.integers(1, batch))
    hkv = draw(st.integers(1, kv_heads))
    h = hkv * (draw(st.integers(1, groups)) if name == "sdpa_gqa" else 1)
    nq = draw(st.integers(min_n, max_n))
    nk = nq if name in SQUARE_ONLY else draw(st.sampled_from([nq, draw(st.integers(min_n, max_n))]))
    d = draw(st.sampled_from(head_dims))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    scale = draw(st.sampled_from(scales))
    return Problem(name, causal, b, h, hkv, nq, nk, d, dtype, scale or default_scale(d))
