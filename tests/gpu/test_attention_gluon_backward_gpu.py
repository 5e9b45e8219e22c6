"""The Gluon dK/dV kernel (codegen/attention/gluon_bwd_kernel.py) and its fused-dQ form
(gluon_bwd_dq_kernel.py) on an sm_90 GPU with Triton 3.6: each candidate config pinned as
the backward module's dK/dV config, through ioaware::flash_attention and autograd, five
calls each (the launch plan's replay included), at ragged sizes (N not a multiple of 64 or 128)
with GQA (two query heads a kv head) and a [B, N, H, d] layout seen through a
transpose, dense and causal, d = 64 and 128, bf16 and fp16: O, dQ, dK and dV against
float64 eager, on fresh random inputs each call. A pinned config that fell back to the
Triton dK/dV kernel fails the test (the gate was checked first)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen.attention import backward as bwd_render
from ioaware.codegen.attention import gluon_backward
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gluon_dkdv_candidates_match_eager(d, causal, dtype, monkeypatch):
    scale = d ** -0.5
    spec = ops._plain_spec(d, d, dtype, causal, scale)
    reason = gluon_backward.unavailable_reason(spec, torch.device("cuda"))
    if reason:
        pytest.skip(f"the Gluon dK/dV kernel cannot run here: {reason}")

    def fell_back(why):
        raise AssertionError(f"the pinned Gluon dK/dV config fell back: {why}")

    monkeypatch.setattr(gluon_backward, "note_fallback", fell_back)
    bwd = kernel_module("attention_bwd", spec, torch.device("cuda"))
    monkeypatch.setattr(bwd, "TUNE_DKDV", [])
    # the two-kernel configs and the fused-dQ ones ("gluon+atomic": dQ by TMA reduce-adds)
    configs = (bwd_render.gluon_candidate_configs(spec)
               + bwd_render.gluon_fused_candidate_configs(spec))
    assert configs and any(map(gluon_backward.is_fused, configs))
    # ragged against both the 64-row query blocks and the 128-row kv blocks
    n_q, n_k = (333, 333) if causal else (300, 517)
    gen = torch.Generator(device="cuda").manual_seed(d + causal + (dtype == torch.float16))
    for config in configs:
        monkeypatch.setattr(bwd, "DEFAULT_DKDV", config)
        # five calls at one signature: the op's launch plan records from the second and
        # replays from the fourth (codegen/plan.py), so the replay is checked too
        for call in range(5):
            # [B, N, H, d] storage seen as [B, H, N, d]: the strides a projection gives
            q = (torch.randn(2, n_q, 4, d, device="cuda", generator=gen).to(dtype)
                 .transpose(1, 2).requires_grad_())
            k, v = (torch.randn(2, n_k, 2, d, device="cuda", generator=gen).to(dtype)
                    .transpose(1, 2).requires_grad_() for _ in range(2))
            dout = torch.randn(2, 4, n_q, d, device="cuda", generator=gen).to(dtype)
            out = ops.flash_attention(q, k, v, scale=scale, causal=causal)
            grads = torch.autograd.grad(out, (q, k, v), dout)
            q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
            out64, _ = eager_f64(q64, k64, v64, scale, causal)
            expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
            bound = delta_rounding_bound(q, k, v, dout, scale, causal)
            label = f"{config} call {call}"
            assert_close_rel(f"out {label}", out, out64, TOLERANCE[dtype])
            for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
                assert_close_rel(f"{name} {label}", g, g64, TOLERANCE[dtype], bound[name])
