"""The Gluon forward (codegen/attention/gluon_kernel.py) on an sm_90 GPU with Triton 3.6:
each candidate config pinned in the forward module, through ioaware::flash_attention,
at ragged sizes with GQA and a transposed layout, O and lse against float64 eager, on
fresh inputs at one signature six calls in a row (the op's launch plan records the
launch, then replays it), then the gradients (the backward reads the Gluon lse)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen import plan
from ioaware.codegen.attention import forward as fwd_render
from ioaware.codegen.attention import gluon_forward
from ioaware.codegen.attention import op as ops
from ioaware.codegen.runtime import kernel_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_attention_kernel import TOLERANCE, assert_close_rel, delta_rounding_bound
from test_attention_kernel_gpu import eager_f64

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_gluon_candidates_match_eager(d, causal, monkeypatch):
    dtype, scale = torch.bfloat16, d ** -0.5
    spec = ops._plain_spec(d, d, dtype, causal, scale)
    reason = gluon_forward.unavailable_reason(spec, torch.device("cuda"))
    if reason:
        pytest.skip(f"the Gluon forward cannot run here: {reason}")
    fwd = kernel_module("attention_fwd", spec, torch.device("cuda"))
    monkeypatch.setattr(fwd, "TUNE_CONFIGS", [])
    n_q, n_k = (333, 333) if causal else (300, 517)
    gen = torch.Generator(device="cuda").manual_seed(d + causal)
    configs = fwd_render.candidate_configs(spec)
    assert configs
    for config in configs:
        monkeypatch.setattr(fwd, "DEFAULT_CONFIG", config)
        plan.forget()  # the last config's plan would replay its launch at this signature
        for call in range(6):
            # [B, N, H, d] storage seen as [B, H, N, d]: the strides a projection gives
            q = torch.randn(2, n_q, 4, d, device="cuda", generator=gen).to(dtype).transpose(1, 2)
            k, v = (torch.randn(2, n_k, 2, d, device="cuda", generator=gen).to(dtype)
                    .transpose(1, 2) for _ in range(2))
            with torch.no_grad():
                out, lse = torch.ops.ioaware.flash_attention(q, k, v, scale, causal)
            out64, lse64 = eager_f64(q.double(), k.double(), v.double(), scale, causal)
            assert_close_rel(f"out {config} call {call}", out, out64, TOLERANCE[dtype])
            torch.testing.assert_close(lse.double(), lse64, atol=2e-3, rtol=0)
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        dout = torch.randn_like(q)
        out = ops.flash_attention(q, k, v, scale=scale, causal=causal)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        out64, _ = eager_f64(q64, k64, v64, scale, causal)
        expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
        bound = delta_rounding_bound(q, k, v, dout, scale, causal)
        for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
            assert_close_rel(f"{name} {config}", g, g64, TOLERANCE[dtype], bound[name])
