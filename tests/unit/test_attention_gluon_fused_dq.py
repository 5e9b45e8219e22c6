"""The fused-dQ Gluon dK/dV kernel ("gluon+atomic", codegen/attention/gluon_bwd_dq_kernel.py):
its config logic (named, pinnable, the measured winners in the tuning space, dropped under
deterministic algorithms like the Triton atomics), its fallbacks where the gate refuses, and, on
Triton 3.6, its sm_90 build (TMA reduce-adds in the SASS, the register split, the
products per block, exp2 under a pending wgmma). Its numbers are checked on a GPU by
scripts/gpu_gluon_backward.py."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen.attention import backward as bwd_render
from ioaware.codegen.attention import gluon_backward, gluon_forward
from ioaware.codegen.attention.spec import AttentionSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sm90 import has_ptx_backend


def _spec(d=128, causal=False, dtype="bfloat16") -> AttentionSpec:
    return AttentionSpec(head_dim=d, head_dim_v=d, dtype=dtype, causal=causal,
                         scale=d ** -0.5)


def test_the_variant_string_names_the_fused_kernel():
    fused = (64, 128, 8, 2, "gluon+atomic")
    assert gluon_backward.is_fused(fused) and gluon_backward.is_gluon(fused)
    # the Triton atomics' rule holds too: no dQ pass, and dropped from a tuning space
    # under torch.use_deterministic_algorithms (backward(), `is_atomic`)
    assert bwd_render.is_atomic(fused)
    for other in [(64, 128, 8, 2, "gluon"), (64, 64, 8, 2, "tma+atomic"),
                  (64, 64, 8, 2, "tma+atomic+bulk"), (64, 128, 8, 2)]:
        assert not gluon_backward.is_fused(other)


def test_fused_candidates_are_pinnable_and_the_measured_ones_tuned(monkeypatch):
    """d = 64 and 128 have fused candidates within an H100's shared memory, apart from
    the two-kernel Gluon candidates (whose GPU checks and tests stay as they were). The
    ones a GPU measured ahead (`TUNED`) join the dK/dV tuning space where the device and
    Triton admit the Gluon kernels, and only there."""
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    for d in (64, 128):
        for causal in (False, True):
            spec = _spec(d, causal)
            fused = bwd_render.gluon_fused_candidate_configs(spec, h100)
            assert fused and all(map(gluon_backward.is_fused, fused))
            assert not set(fused) & set(bwd_render.dkdv_configs(spec, h100))  # no device
            assert not set(fused) & set(bwd_render.gluon_candidate_configs(spec, h100))
            tuned = [c for c in gluon_backward.TUNED[d] if gluon_backward.is_fused(c)]
            assert tuned and set(tuned) <= set(fused)
            assert all(c[1] == 2 * gluon_backward.KV_ROWS_PER_WARPGROUP for c in fused)
    monkeypatch.setattr(gluon_forward, "present_environment_reason", lambda: None)
    for d in (64, 128):
        space = bwd_render.dkdv_configs(_spec(d, True), h100)
        assert any(map(gluon_backward.is_fused, space))
    assert bwd_render.gluon_fused_candidate_configs(_spec(256), h100) == []
    assert gluon_backward.fused_candidate_configs(_spec(256)) == []


def test_the_fused_smem_estimate_adds_ds_and_staging():
    """dSᵀ (2 buffers × 2 warpgroups × 64 × BLOCK_M, 16-bit), the fp32 dQ staging tiles
    (2 × BLOCK_M × d/2) and two mbarriers on top of the two-kernel kernel's."""
    spec = _spec(128)
    two = gluon_backward.smem_bytes(spec, (64, 128, 8, 2, "gluon"))
    fused = gluon_backward.smem_bytes(spec, (64, 128, 8, 2, "gluon+atomic"))
    assert fused - two == 2 * 2 * 64 * 64 * 2 + 2 * 64 * 64 * 4 + 16
    assert fused <= 227 * 1024


def test_a_pinned_fused_config_needs_no_dq_config():
    """The rendered module treats a fused config as one kernel: no dQ tuning, the fp32
    accumulator zeroed, the fused kernel, then `_bwd_dq_convert`."""
    source = bwd_render.render_backward(_spec(), interpret=True)
    assert "gluon_backward.is_fused(dkdv_config)" in source
    assert "dq_acc=acc" in source
    assert 'dkdv_config = (*DEFAULT_DKDV[:4], "atomic")' in source


@pytest.mark.skipif(gluon_forward.triton_version() in gluon_backward.TRITON_VERSIONS,
                    reason="Triton 3.6's interpreter does not run the generated kernels "
                           "(the CPU tiers' Triton is 3.9)")
@pytest.mark.parametrize("deterministic", [False, True])
def test_a_fused_config_the_gate_refuses_runs_triton_kernels(
        monkeypatch, caplog, deterministic):
    """Refused (no CUDA device under the interpreter), a fused config runs Triton
    kernels with eager's gradients and the reason logged once: chosen by the tuner (here
    the module's default), the two-kernel backward with the dQ config chosen beside it;
    pinned with no dQ config, the Triton one-kernel backward at the default tiles."""
    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.runtime import kernel_module

    d, scale = 64, 0.125
    spec = ops._plain_spec(d, d, torch.float32, False, scale)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 29, d, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 1, 41, d, generator=gen, requires_grad=True) for _ in range(2))
    bwd = kernel_module("attention_bwd", spec, q.device)
    fused = (*bwd.DEFAULT_DKDV[:4], "gluon+atomic")
    monkeypatch.setattr(bwd, "DEFAULT_DKDV", fused)
    monkeypatch.setattr(gluon_backward, "_noted", set())
    seen = []
    real = bwd._launch
    monkeypatch.setattr(bwd, "_launch", lambda kernel, config, *a: (
        seen.append(config), real(kernel, config, *a))[1])
    dout = torch.randn(1, 2, 29, d, generator=gen)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), scale=scale)
    expected_grads = torch.autograd.grad(expected, (q, k, v), dout)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        with caplog.at_level(logging.WARNING, logger="ioaware.attention"):
            out = ops.flash_attention(q, k, v, scale=scale)
            grads = torch.autograd.grad(out, (q, k, v), dout)
            tuned_seen, seen[:] = list(seen), []
            # pinned: the module's backward called directly, as a GPU script pins configs
            q_, k_, v_ = (t.detach() for t in (q, k, v))
            out_ = torch.empty_like(q_)
            lse_ = torch.empty(q_.shape[:3], dtype=torch.float32)
            kernel_module("attention_fwd", spec, q.device).forward(q_, k_, v_, out_, lse_)
            pinned = [torch.empty_like(t) for t in (q_, k_, v_)]
            bwd.backward(dout, q_, k_, v_, out_, lse_, None, *pinned, dkdv_config=fused)
    finally:
        torch.use_deterministic_algorithms(previous)
    notes = [r for r in caplog.records if "Gluon dK/dV" in r.getMessage()]
    assert len(notes) == 1 and "dtype float32" in notes[0].getMessage()
    assert tuned_seen and not any(bwd_render.is_atomic(c) or gluon_backward.is_gluon(c)
                                  for c in tuned_seen)
    assert seen and all(bwd_render.is_atomic(c) and not gluon_backward.is_gluon(c)
                        for c in seen)
    for grads_ in (grads, pinned):
        for g, g_ref in zip(grads_, expected_grads):
            torch.testing.assert_close(g, g_ref, atol=2e-4, rtol=2e-4)


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
@pytest.mark.skipif(gluon_forward.triton_version() not in gluon_backward.TRITON_VERSIONS,
                    reason="the Gluon kernel is written for Triton 3.6's Gluon API")
@pytest.mark.parametrize(("d", "causal"), [(128, False), (64, False), (64, True)])
def test_the_fused_kernel_compiles_for_sm90(d, causal):
    """It builds for Hopper with the two-kernel kernel's register split (240 per
    consumer, 24 for the loader); per consumer and query block five products (Sᵀ, dPᵀ
    with K = d; dV, dK with K = BLOCK_M; dQ's column half as two K = 64 products), every
    exp2 issued under a pending wgmma, TMA reduce-adds (UTMAREDG) for dQ, ptxas's shared
    memory as estimated; no spill in the loops at d = 64 (d = 128: a few loop-invariant
    reloads, docs/kernels.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from attention_templates_sm90 import sass_stats

    config = gluon_backward.FUSED_CANDIDATES[d][0]
    block_m = config[0]
    kernel = gluon_backward.compile_sm90(config, d, causal)
    ptx = kernel.asm["ptx"]
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+240;", ptx)
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+24;", ptx)
    assert "cp.reduce.async.bulk.tensor.2d.global.shared::cta.add" in ptx
    assert abs(kernel.metadata.shared - gluon_backward.smem_bytes(_spec(d, causal), config)
               ) < 1024
    sass = kernel.asm["sass"]
    assert "UTMAREDG" in sass
    assert sass.count("gsb0;") < sass.count("HGMMA") / 2  # no serialized wgmma
    per_block = 2 * (d // 16) + 2 * (block_m // 16) + 2 * (64 // 16)
    loops = [lp for lp in sass_stats(kernel)["loops"] if lp["mma"]]
    assert loops and all(lp["mma"] == per_block for lp in loops)
    assert all(lp["mufu"] == 64 * block_m // 128 == lp["mufu_pending"] for lp in loops)
    assert all(lp["spill"] <= (0 if d == 64 else 8) for lp in loops)
