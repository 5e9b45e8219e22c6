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


# ---------------------------------------------------------------------------------------
# Masks and score modifications as people write them (issue 3).
#
# A mask is a tree over atoms (causal, sliding window, key prefix, padding [B, Nk],
# document ids [B, N]) combined with &, |, ~; `allowed(tree, ...)` builds it from aranges
# and the data tensors the way transformers does under torch.compile. A spelling then
# applies it to the scaled scores: masked_fill, where, an additive where(m, 0, fill), or
# SDPA's attn_mask (bool or additive). Score modifications: bias tensors of several
# broadcast shapes, ALiBi with slopes built in the graph, a T5-style bucketed relative
# bias table, soft-capping.

MASK_ATOMS = ("causal", "window", "prefix", "padding", "document")
# (spelling, what a masked element becomes): the fill decides fully-masked rows.
MASK_SPELLINGS = ("masked_fill", "where", "additive_min", "additive_inf", "sdpa_bool",
                  "sdpa_additive", "baddbmm")
SCORE_MODS = ("none", "bias_hqk", "bias_bk", "bias_hk", "alibi", "relative", "softcap")


def mask_trees(max_leaves: int = 3):
    """Hypothesis strategy for mask trees: ("atom", name, param) | ("and"|"or", l, r) |
    ("not", t)."""
    atom = st.tuples(st.just("atom"), st.sampled_from(MASK_ATOMS), st.integers(1, 6))
    return st.recursive(
        atom,
        lambda sub: st.one_of(st.tuples(st.sampled_from(["and", "or"]), sub, sub),
                              st.tuples(st.just("not"), sub)),
        max_leaves=max_leaves,
    )


def allowed(tree, nq: int, nk: int, pad: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """The tree as a bool tensor broadcastable to [B, 1, Nq, Nk], built from aranges and
    gathers as transformers builds masks (pad: [B, Nk] of 0/1, doc: [B, Nk] ids)."""
    kind = tree[0]
    if kind == "and":
        return allowed(tree[1], nq, nk, pad, doc) & allowed(tree[2], nq, nk, pad, doc)
    if kind == "or":
        return allowed(tree[1], nq, nk, pad, doc) | allowed(tree[2], nq, nk, pad, doc)
    if kind == "not":
        return ~allowed(tree[1], nq, nk, pad, doc)
    _, name, w = tree
    q = torch.arange(nq, device=pad.device)[None, None, :, None]
    kv = torch.arange(nk, device=pad.device)[None, None, None, :]
    b = torch.arange(pad.shape[0], device=pad.device)[:, None, None, None]
    if name == "causal":
        return kv <= q
    if name == "window":
        return kv > q - w
    if name == "prefix":
        return kv < w
    if name == "padding":
        return pad.bool()[b, kv]
    return doc[b, q] == doc[b, kv]  # document: same id (Nq <= Nk)


def masked_scores(s: torch.Tensor, keep: torch.Tensor, spelling: str) -> torch.Tensor:
    """Apply `keep` to scaled scores `s` [B, H, Nq, Nk] in one of the matmul spellings."""
    if spelling == "masked_fill":
        return s.masked_fill(~keep, float("-inf"))
    if spelling == "where":
        return torch.where(keep, s, float("-inf"))
    if spelling == "additive_min":
        return s + torch.where(keep, torch.tensor(0.0), torch.finfo(s.dtype).min).to(s.dtype)
    if spelling == "additive_inf":
        return s + torch.zeros(keep.shape, dtype=s.dtype).masked_fill(~keep, float("-inf"))
    raise ValueError(f"spelling={spelling!r} is not a matmul mask spelling")


def score_bias(mod: str, s: torch.Tensor, extra: dict) -> torch.Tensor:
    """s [B, H, Nq, Nk] after the modification `mod` (bias, ALiBi, relative, softcap)."""
    _, h, nq, nk = s.shape
    q = torch.arange(nq)[:, None]
    kv = torch.arange(nk)[None, :]
    if mod == "bias_hqk":
        return s + extra["bias_hqk"]  # [H, Nq, Nk], learned
    if mod == "bias_bk":
        return s + extra["bias_bk"][:, None, None, :]  # [B, Nk]
    if mod == "bias_hk":
        return s + extra["bias_hk"].view(1, h, 1, nk)  # per head and key, learned
    if mod == "alibi":
        slopes = 2.0 ** (-8.0 * torch.arange(1, h + 1, dtype=s.dtype) / h)
        return s + slopes[:, None, None] * (kv - q)
    if mod == "relative":
        # T5-style: bucket of the clamped distance, bias from a learned [buckets, H] table
        rel = (kv - q).clamp(-4, 4) + 4
        return s + extra["table"][rel].permute(2, 0, 1)
    if mod == "softcap":
        return torch.tanh(s / 3.0) * 3.0
    return s


def mask_extras(b: int, h: int, nq: int, nk: int, gen: torch.Generator,
                dtype: torch.dtype = torch.float32) -> dict:
    """Data tensors the grammar reads: padding, document ids, biases, a relative table."""
    pad = (torch.rand(b, nk, generator=gen) > 0.3).long()
    doc = torch.sort(torch.randint(0, 3, (b, nk), generator=gen), dim=-1).values
    return {
        "pad": pad, "doc": doc,
        "bias_hqk": torch.randn(h, nq, nk, generator=gen).to(dtype).requires_grad_(),
        "bias_bk": torch.randn(b, nk, generator=gen).to(dtype),
        "bias_hk": torch.randn(h, nk, generator=gen).to(dtype).requires_grad_(),
        "table": torch.randn(9, h, generator=gen).to(dtype).requires_grad_(),
    }


def make_modded(tree, spelling: str, mod: str, scale: float):
    """fn(q, k, v, extra) = attention with mask `tree` in `spelling` and score mod `mod`."""

    def attention(q, k, v, extra):
        nq, nk = q.shape[-2], k.shape[-2]
        keep = None if tree is None else allowed(tree, nq, nk, extra["pad"], extra["doc"])
        if spelling.startswith("sdpa"):
            bias = score_bias(mod, torch.zeros(q.shape[0], q.shape[1], nq, nk, dtype=q.dtype),
                              extra)
            if keep is not None:
                keep = keep.expand(q.shape[0], -1, nq, nk)
                if spelling == "sdpa_bool" and mod == "none":
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
                bias = bias.masked_fill(~keep, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        if spelling == "baddbmm":
            # BLOOM's form: the bias (zeros when there is none) fused with the scale into
            # a [B·H] batched matmul, viewed as [B, H, Nq, Nk] to be masked.
            b, h, _, d = q.shape
            zeros = torch.zeros(b, h, nq, nk, dtype=q.dtype)
            bias = zeros if mod == "softcap" else score_bias(mod, zeros, extra)
            s = torch.baddbmm(bias.reshape(b * h, nq, nk), q.reshape(b * h, nq, d),
                              k.reshape(b * h, nk, d).transpose(1, 2), alpha=scale)
            s = score_bias(mod, s.view(b, h, nq, nk), extra) if mod == "softcap" else \
                s.view(b, h, nq, nk)
            if keep is not None:
                s = masked_scores(s, keep, "masked_fill")
            return (torch.softmax(s, dim=-1).reshape(b * h, nq, nk)
                    @ v.reshape(b * h, nk, -1)).view(b, h, nq, -1)
        s = (q @ k.transpose(-2, -1)) * scale
        s = score_bias(mod, s, extra)
        if keep is not None:
            s = masked_scores(s, keep, spelling)
        return torch.softmax(s, dim=-1) @ v

    attention.__name__ = f"attention_{spelling}_{mod}"
    return attention
