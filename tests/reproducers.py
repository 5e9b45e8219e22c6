"""Issue 14's reproducers as programs with their inputs, on any device: the CPU tier
(tests/interp/test_reproducers.py, kernels under the interpreter) and the GPU tier
(tests/gpu/test_reliability_gpu.py) run the same list.

1. a 16-bit load times a constant (a bf16 padding mask, a learned bias before the scale)
2. block maps from data-dependent predicates (masks from q or from k), fwd and bwd
3. an in-place edit of the attention output before backward
4. rows with no visible key: gradients as eager's for every spelling of the mask
and what the generated programs found: fp16 logits plus finfo.min (rounded as eager).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

INF = float("-inf")


def qkv(dtype, device="cpu", n=8, d=16, heads=2, seed=0, nk=None, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, heads, n, d), (1, heads, nk or n, d), (1, heads, nk or n, d)]
    return [(torch.randn(s, generator=gen) * (scale if i < 2 else 1.0)).to(dtype)
            .to(device).requires_grad_() for i, s in enumerate(shapes)]


def padding_mask_times_min(q, k, v, pad):
    s = q @ k.transpose(-2, -1) / 4.0
    s = s + (1.0 - pad[:, None, None, :].to(s.dtype)) * torch.finfo(s.dtype).min
    return torch.softmax(s, -1) @ v


def bias_before_scale(q, k, v, bias):
    s = (q @ k.transpose(-2, -1) + bias) * 0.25
    return torch.softmax(s, -1) @ v


def mask_from_q(q, k, v):
    s = (q @ k.transpose(-2, -1)) * 0.25
    return torch.softmax(s.masked_fill(q.sum(-1, keepdim=True) > 2.0, INF), -1) @ v


def mask_from_k(q, k, v):
    s = (q @ k.transpose(-2, -1)) * 0.25
    return torch.softmax(s.masked_fill(k.sum(-1)[:, :, None, :] > 2.0, INF), -1) @ v


def edit_output_in_place(q, k, v):
    return (torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v).mul_(0.5)


def edit_view_of_output_in_place(q, k, v):
    out = torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v
    out[:, :, :2].zero_()
    return out + 1.0


def _causal(q, k):
    return torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()


def masked_fill_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    s = s.masked_fill(~_causal(q, k), INF).masked_fill(~pad[:, None, None, :], INF)
    return torch.softmax(s, -1) @ v


def where_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    s = torch.where(_causal(q, k) & pad[:, None, None, :], s, INF)
    return torch.softmax(s, -1) @ v


def additive_neg_inf(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    allowed = _causal(q, k) & pad[:, None, None, :]
    return torch.softmax(s + torch.where(allowed, 0.0, INF), -1) @ v


def additive_finfo_min(q, k, v, pad):
    s = q @ k.transpose(-2, -1) * 0.25
    allowed = _causal(q, k) & pad[:, None, None, :]
    return torch.softmax(s + torch.where(allowed, 0.0, torch.finfo(s.dtype).min), -1) @ v


def sdpa_bool_mask(q, k, v, pad):
    allowed = _causal(q, k) & pad[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _window(q, k):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return (i - j).abs() < 2


def window_times_min(q, k, v):
    s = (q @ k.transpose(-2, -1)) / 4.0
    s = s + (1.0 - _window(q, k).to(s.dtype)) * torch.finfo(s.dtype).min
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def window_where_min(q, k, v):
    s = (q @ k.transpose(-2, -1)) / 4.0
    s = s + torch.where(_window(q, k), 0.0, torch.finfo(s.dtype).min)
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


# rows 0 and 1 see no key: causal, and keys 0-1 padded
def _pad(device):
    return torch.tensor([[False, False] + [True] * 6], device=device)


def _padding_args(dtype, device):
    q, k, v = (t.detach() for t in qkv(dtype, device, n=4))
    return q, k, v, torch.tensor([[False, False, True, True]], device=device)


def _bias_args(dtype, device):
    gen = torch.Generator().manual_seed(1)
    bias = (torch.randn(1, 1, 8, 8, generator=gen) * 3).to(dtype).to(device).requires_grad_()
    return (*qkv(dtype, device), bias)


def _window_args(dtype, device):
    return tuple(qkv(dtype, device, n=16, nk=8, d=12, scale=3.0))


# name -> (program, inputs(dtype, device), dtypes)
HALF = (torch.bfloat16, torch.float16)
F32 = (torch.float32,)
CASES: dict[str, tuple[Callable, Callable, tuple]] = {
    "padding_mask_times_min": (padding_mask_times_min, _padding_args, HALF),
    "bias_before_scale": (bias_before_scale, _bias_args, HALF),
    "mask_from_q": (mask_from_q, lambda dt, dev: tuple(qkv(dt, dev, n=24)), F32),
    "mask_from_k": (mask_from_k, lambda dt, dev: tuple(qkv(dt, dev, n=24)), F32),
    "edit_output_in_place": (edit_output_in_place, lambda dt, dev: tuple(qkv(dt, dev)), F32),
    "edit_view_of_output_in_place": (edit_view_of_output_in_place,
                                     lambda dt, dev: tuple(qkv(dt, dev)), F32),
    **{fn.__name__: (fn, lambda dt, dev: (*qkv(dt, dev), _pad(dev)), F32)
       for fn in (masked_fill_neg_inf, where_neg_inf, additive_neg_inf, additive_finfo_min,
                  sdpa_bool_mask)},
    "window_times_min": (window_times_min, _window_args, HALF),
    "window_where_min": (window_where_min, _window_args, HALF),
}


def params() -> list[tuple[str, torch.dtype]]:
    """(name, dtype) for every case: what the tiers parametrize over."""
    return [(name, dt) for name, (_, _, dtypes) in CASES.items() for dt in dtypes]
