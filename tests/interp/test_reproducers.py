"""Issue 14's kernel reproducers: each ran wrong or crashed before its fix.

1. a 16-bit load times a constant (a bf16 padding mask, a learned bias before the scale)
2. block maps from data-dependent predicates (masks from q or from k), fwd and bwd
3. an in-place edit of the attention output before backward
4. rows with no visible key: gradients as eager's for every spelling of the mask
"""

from __future__ import annotations

import pytest
import torch
from eager_compare import compare

import ioaware

INF = float("-inf")


def _qkv(dtype, n=8, d=16, heads=2, grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, d, generator=gen).to(dtype).requires_grad_(grad)
            for _ in range(3)]


def _rewritten(fn, *args):
    expl = ioaware.explain(fn, *args)
    assert [r.kind for r in expl.rewrites] == ["attention"], expl
    torch._dynamo.reset()
    return expl


def padding_mask_times_min(q, k, v, pad):
    s = q @ k.transpose(-2, -1) / 4.0
    s = s + (1.0 - pad[:, None, None, :].to(s.dtype)) * torch.finfo(s.dtype).min
    return torch.softmax(s, -1) @ v


def bias_before_scale(q, k, v, bias):
    s = (q @ k.transpose(-2, -1) + bias) * 0.25
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_padding_mask_times_constant(interpret, dtype):
    q, k, v = _qkv(dtype, n=4, grad=False)
    pad = torch.tensor([[False, False, True, True]])
    _rewritten(padding_mask_times_min, q, k, v, pad)
    assert compare(padding_mask_times_min, (q, k, v, pad), dtype) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_learned_bias_before_scale(interpret, dtype):
    q, k, v = _qkv(dtype)
    bias = (torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
            ).to(dtype).requires_grad_()
    _rewritten(bias_before_scale, q, k, v, bias)
    assert compare(bias_before_scale, (q, k, v, bias), dtype) == []


def mask_from_q(q, k, v):
    s = (q @ k.transpose(-2, -1)) * 0.25
    return torch.softmax(s.masked_fill(q.sum(-1, keepdim=True) > 2.0, INF), -1) @ v


def mask_from_k(q, k, v):
    s = (q @ k.transpose(-2, -1)) * 0.25
    return torch.softmax(s.masked_fill(k.sum(-1)[:, :, None, :] > 2.0, INF), -1) @ v


@pytest.mark.parametrize("fn", [mask_from_q, mask_from_k], ids=lambda f: f.__name__)
def test_data_dependent_mask_forward_and_backward(interpret, fn):
    q, k, v = _qkv(torch.float32, n=24)
    expl = _rewritten(fn, q, k, v)
    assert expl.rewrites[0].detail["mask"] == "data"
    assert compare(fn, (q, k, v), torch.float32) == []


def edit_output_in_place(q, k, v):
    return (torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v).mul_(0.5)


def edit_view_of_output_in_place(q, k, v):
    out = torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v
    out[:, :, :2].zero_()
    return out + 1.0


@pytest.mark.parametrize("fn", [edit_output_in_place, edit_view_of_output_in_place],
                         ids=lambda f: f.__name__)
def test_in_place_edit_of_the_output(interpret, fn):
    q, k, v = _qkv(torch.float32)
    _rewritten(fn, q, k, v)
    assert compare(fn, (q, k, v), torch.float32) == []


# Rows 0 and 1 see no key (causal, and keys 0-1 padded): each spelling of the mask
# gives its own gradients in eager, which ioaware must reproduce.
PAD = torch.tensor([[False, False, True, True, True, True, True, True]])


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def masked_fill_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    s = s.masked_fill(~_causal(q.shape[-2]), INF).masked_fill(~pad[:, None, None, :], INF)
    return torch.softmax(s, -1) @ v


def where_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    s = torch.where(_causal(q.shape[-2]) & pad[:, None, None, :], s, INF)
    return torch.softmax(s, -1) @ v


def additive_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    allowed = _causal(q.shape[-2]) & pad[:, None, None, :]
    return torch.softmax(s + torch.where(allowed, 0.0, INF), -1) @ v


def additive_finfo_min(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    allowed = _causal(q.shape[-2]) & pad[:, None, None, :]
    return torch.softmax(s + torch.where(allowed, 0.0, torch.finfo(s.dtype).min), -1) @ v


def sdpa_bool_mask(q, k, v, pad):
    allowed = _causal(q.shape[-2]) & pad[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("fn", [masked_fill_neg_inf, where_neg_inf, additive_neg_inf,
                                additive_finfo_min, sdpa_bool_mask], ids=lambda f: f.__name__)
def test_rows_with_no_visible_key(interpret, fn):
    q, k, v = _qkv(torch.float32)
    _rewritten(fn, q, k, v, PAD)
    assert compare(fn, (q, k, v, PAD), torch.float32) == []


# Found by the generated programs: in fp16, s + finfo.min rounds in steps of 32 (or to
# -inf), which decides a row that sees no key; ioaware rounds as eager's 16-bit add.
def window_times_min(q, k, v):
    i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
    s = (q @ k.transpose(-2, -1)) / 4.0
    s = s + (1.0 - ((i - j).abs() < 2).to(s.dtype)) * torch.finfo(s.dtype).min
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def window_where_min(q, k, v):
    i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
    s = (q @ k.transpose(-2, -1)) / 4.0
    s = s + torch.where((i - j).abs() < 2, 0.0, torch.finfo(s.dtype).min)
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [window_times_min, window_where_min], ids=lambda f: f.__name__)
def test_16bit_min_mask_rows_with_no_visible_key(interpret, fn, dtype):
    gen = torch.Generator().manual_seed(0)
    q, k = ((torch.randn(1, 2, 16, 12, generator=gen) * 3).to(dtype).requires_grad_()
            for _ in range(2))
    k = k.detach()[:, :, :8].requires_grad_()
    v = torch.randn(1, 2, 8, 12, generator=gen).to(dtype).requires_grad_()
    _rewritten(fn, q, k, v)
    assert compare(fn, (q, k, v), dtype) == []
