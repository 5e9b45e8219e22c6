"""The FP8 (e4m3) attention forward, compiled for a CUDA GPU of sm_89 or later, against
float64 math on the same FP8 values (tests/interp/test_attention_fp8.py at real sizes),
and through the compiler on a dequantize-then-SDPA spelling. bf16 output, its tolerance.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ioaware
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.config import config
from ioaware.verify import TOLERANCE, relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                       reason="FP8 tensor cores need sm_89 or later"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_attention_fp8 import exact_attention, fp8_scale
from test_attention_kernel import TOLERANCE as KERNEL_TOLERANCE

E4M3 = torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def fp8_attention(monkeypatch):
    """FP8 operands taken: config.fp8_attention is off by default (measured slower)."""
    monkeypatch.setattr(config, "fp8_attention", True)


def _operands(gen, b, h_q, h_kv, n_q, n_k, d, fp8):
    raw, scales, exact = {}, [], {}
    for name, (h, n) in {"q": (h_q, n_q), "k": (h_kv, n_k), "v": (h_kv, n_k)}.items():
        x = torch.randn(b, h, n, d, generator=gen)
        if name in fp8:
            s = fp8_scale(gen)
            raw[name] = x.to(E4M3).cuda()
            exact[name] = raw[name].double() * s.double().cuda()
            scales.append(s.cuda())
        else:
            raw[name] = x.to(torch.bfloat16).cuda()
            exact[name] = raw[name].double()
    return raw, scales, exact


@pytest.mark.parametrize("fp8,causal,b,h_q,h_kv,n_q,n_k,d", [
    ("qkv", False, 2, 8, 8, 1000, 1000, 128),
    ("qkv", True, 2, 8, 2, 1537, 1537, 128),
    ("qkv", False, 1, 4, 4, 777, 2049, 64),
    ("kv", True, 1, 8, 2, 1024, 1024, 128),
])
def test_fp8_forward_matches_float64(fp8, causal, b, h_q, h_kv, n_q, n_k, d):
    gen = torch.Generator().manual_seed(n_q + d)
    raw, scales, exact = _operands(gen, b, h_q, h_kv, n_q, n_k, d, fp8)
    scale = 1.0 / math.sqrt(d)
    spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype="bfloat16", causal=causal,
                         scale=scale, fp8=fp8)
    out, lse = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], scales,
                                           spec.to_json(), None)
    visible = (torch.ones(n_q, n_k, dtype=torch.bool, device="cuda").tril()
               if causal else None)
    want, want_lse = exact_attention(exact["q"], exact["k"], exact["v"], scale, visible)
    assert relative_error(out, want) <= KERNEL_TOLERANCE[torch.bfloat16]
    assert (lse.double() - want_lse).abs().max().item() <= 2e-3


def test_compiled_dequant_then_sdpa_matches_eager():
    gen = torch.Generator().manual_seed(5)
    q8, k8, v8 = (torch.randn(2, 8, 2048, 128, generator=gen).to(E4M3).cuda()
                  for _ in range(3))
    s = [fp8_scale(gen).cuda().reshape(()) for _ in range(3)]

    def fn(q8, k8, v8, sq, sk, sv):
        q, k, v = (x.to(torch.bfloat16) * y for x, y in ((q8, sq), (k8, sk), (v8, sv)))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    fast = ioaware.compile(fn)
    got, want = fast(q8, k8, v8, *s), fn(q8, k8, v8, *s)
    assert relative_error(got, want) <= TOLERANCE[torch.bfloat16]
    [rewrite] = fast._ioaware_backend.explanation.rewrites
    assert rewrite.detail["fp8"] == "fp8 q,k,v (per-tensor scales)"
