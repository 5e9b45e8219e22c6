"""FP8 attention in small models, through ioaware.compile and torch.compile(backend=
"ioaware"): the output equals eager's (ioaware.verify.TOLERANCE of the output dtype) and
explain shows the FP8 rewrite. The kernels run under the interpreter.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ioaware
from ioaware.config import config
from ioaware.verify import TOLERANCE, relative_error

E4M3 = torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def fp8_attention(monkeypatch):
    """FP8 operands taken: config.fp8_attention is off by default (measured slower)."""
    monkeypatch.setattr(config, "fp8_attention", True)


class Fp8KVCacheAttention(nn.Module):
    """One attention layer over a quantized KV cache: k, v kept in float8_e4m3fn with one
    fp32 scale each (as an FP8 KV cache stores them), dequantized to the query's dtype
    right before a causal-by-position SDPA over the cache."""

    def __init__(self, dim: int, heads: int, kv_heads: int, cache_len: int,
                 dtype: torch.dtype, gen: torch.Generator):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(dim, dim, bias=False, dtype=dtype)
        shape = (1, kv_heads, cache_len, self.head_dim)
        self.register_buffer("k_cache", torch.randn(shape, generator=gen).to(E4M3))
        self.register_buffer("v_cache", torch.randn(shape, generator=gen).to(E4M3))
        self.register_buffer("k_scale", 0.5 + 1.5 * torch.rand((), generator=gen))
        self.register_buffer("v_scale", 0.5 + 1.5 * torch.rand((), generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        dtype = q.dtype
        k = self.k_cache.to(dtype) * self.k_scale
        v = self.v_cache.to(dtype) * self.v_scale
        group = self.heads // self.kv_heads
        k = k.expand(b, -1, -1, -1).repeat_interleave(group, dim=1)
        v = v.expand(b, -1, -1, -1).repeat_interleave(group, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, dim))


class Fp8QKVAttention(nn.Module):
    """Attention on FP8 q, k, v with per-tensor scales, written out as matmul + softmax
    with a causal mask, dequantized by a division (q) and multiplications (k, v)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, q8, k8, v8, q_scale, k_scale, v_scale):
        q = q8.to(self.dtype) / q_scale
        k = k8.float().to(self.dtype) * k_scale
        v = v_scale * v8.to(self.dtype)
        n = q.shape[-2]
        s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~causal, float("-inf"))
        return torch.softmax(s.float(), dim=-1).to(self.dtype) @ v


def _scales(gen, n):
    return [0.5 + 1.5 * torch.rand((), generator=gen) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("how", ["ioaware.compile", "torch.compile"])
def test_fp8_kv_cache_model_matches_eager(interpret, dtype, how):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(21)
    model = Fp8KVCacheAttention(64, heads=4, kv_heads=2, cache_len=45, dtype=dtype, gen=gen)
    x = torch.randn(2, 13, 64, generator=gen).to(dtype)
    fast = (ioaware.compile(model) if how == "ioaware.compile"
            else torch.compile(model, backend="ioaware"))
    with torch.no_grad():  # inference: the FP8 forward has no backward
        want = model(x)
        got = fast(x)
        expl = ioaware.explain(model, x)
    assert relative_error(got, want) <= TOLERANCE[dtype]
    [rewrite] = [r for r in expl.rewrites if r.kind == "attention"]
    assert rewrite.detail["fp8"] == "fp8 k,v (per-tensor scales)"
    assert rewrite.detail["gqa_groups"] == 2
    assert "fp8=fp8 k,v (per-tensor scales)" in str(expl)


@pytest.mark.parametrize("how", ["ioaware.compile", "torch.compile"])
def test_fp8_qkv_model_matches_eager(interpret, how):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(22)
    model = Fp8QKVAttention(torch.bfloat16)
    q8, k8, v8 = (torch.randn(2, 3, 37, 32, generator=gen).to(E4M3) for _ in range(3))
    args = (q8, k8, v8, *_scales(gen, 3))
    fast = (ioaware.compile(model) if how == "ioaware.compile"
            else torch.compile(model, backend="ioaware"))
    got = fast(*args)
    want = model(*args)
    assert relative_error(got, want) <= TOLERANCE[torch.bfloat16]
    expl = ioaware.explain(model, *args)
    [rewrite] = expl.rewrites
    assert rewrite.detail["fp8"] == "fp8 q,k,v (per-tensor scales)"
    assert rewrite.detail["mask"] == "causal"


def test_a_learned_scale_under_grad_stays_16_bit_and_differentiable(interpret):
    """A scale that is an nn.Parameter, with grad on: the region runs in 16 bits (its
    backward exists) and the scale's gradient equals eager's."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(23)
    model = Fp8QKVAttention(torch.bfloat16)
    q8, k8, v8 = (torch.randn(1, 2, 20, 16, generator=gen).to(E4M3) for _ in range(3))
    scale = torch.tensor(1.3, requires_grad=True)
    fast = ioaware.compile(model)
    got = fast(q8, k8, v8, 0.8, 1.1, scale)
    want = model(q8, k8, v8, 0.8, 1.1, scale)
    assert relative_error(got, want) <= TOLERANCE[torch.bfloat16]
    g_got, = torch.autograd.grad(got.float().sum(), scale)
    g_want, = torch.autograd.grad(want.float().sum(), scale)
    assert relative_error(g_got, g_want) <= TOLERANCE[torch.bfloat16]
    expl = ioaware.explain(model, q8, k8, v8, 0.8, 1.1, scale)
    assert "requires grad" in expl.rewrites[0].detail["fp8"]
