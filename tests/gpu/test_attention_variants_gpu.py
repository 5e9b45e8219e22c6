"""The sm_90 variant configs of the plain forward and of dK/dV (`forward.VARIANTS`,
`backward.DKDV_VARIANT_CANDIDATES`, `WIDE_DKDV_CANDIDATES`: tma; and the one-kernel
backward's atomic and TMA-reduce "bulk" dQ, `atomic_dkdv_configs`, out of the space),
compiled on a CUDA GPU, against eager math in float64: every config of the two tuning
spaces that names a variant, and the atomic ones, pinned, at
ragged sizes, GQA, causal and not; outputs and gradients. Then the backward's study
candidates (`backward.candidate_configs`: dK/dV "dpfirst", dQ "tma"), each pinned.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen.attention import backward as bwd_render
from ioaware.codegen.attention import forward as fwd_render
from ioaware.codegen.attention import op as ops
from ioaware.codegen.runtime import kernel_module

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_attention_kernel import TOLERANCE, assert_close_rel, delta_rounding_bound
from test_attention_kernel_gpu import eager_f64


def _variant_configs(spec) -> list[tuple[tuple, tuple | None, tuple | None]]:
    """(forward config, dK/dV config or None, None) for each variant config of the spaces."""
    fwd = [(c, None, None) for c in fwd_render.forward_configs(spec) if len(c) > 4]
    first = fwd[0][0] if fwd else fwd_render.default_forward_config(spec)
    dkdv = bwd_render.dkdv_configs(spec) + bwd_render.atomic_dkdv_configs(spec)
    return fwd + [(first, c, None) for c in dkdv if len(c) > 4]


def _candidate_configs(spec) -> list[tuple[tuple, tuple | None, tuple | None]]:
    """(forward default, dK/dV config or None, dQ config or None): each candidate pinned."""
    first = fwd_render.default_forward_config(spec)
    dkdv, dq = bwd_render.candidate_configs(spec)
    return [(first, c, None) for c in dkdv] + [(first, None, c) for c in dq]


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_variant_configs_match_eager(d, causal, monkeypatch):
    _check_configs(_variant_configs, d, causal, monkeypatch)


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_candidates_match_eager(d, causal, monkeypatch):
    _check_configs(_candidate_configs, d, causal, monkeypatch)


def _check_configs(configs_of, d, causal, monkeypatch):
    """Each (forward, dK/dV, dQ) config of configs_of(spec) pinned (None: the kernel's
    default), at ragged sizes with GQA: outputs and gradients against float64 eager."""
    dtype, scale = torch.bfloat16, d ** -0.5
    gen = torch.Generator(device="cuda").manual_seed(d + causal)
    n_q, n_k = (333, 333) if causal else (300, 517)
    q = torch.randn(2, 4, n_q, d, device="cuda", generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(2, 2, n_k, d, device="cuda", generator=gen).to(dtype).requires_grad_()
            for _ in range(2))
    dout = torch.randn(2, 4, n_q, d, device="cuda", generator=gen).to(dtype)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, _ = eager_f64(q64, k64, v64, scale, causal)
    expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
    bound = delta_rounding_bound(q, k, v, dout, scale, causal)

    spec = ops._plain_spec(d, d, dtype, causal, scale)
    fwd = kernel_module("attention_fwd", spec, q.device)
    bwd = kernel_module("attention_bwd", spec, q.device)
    monkeypatch.setattr(fwd, "TUNE_CONFIGS", [])
    monkeypatch.setattr(bwd, "TUNE_DKDV", [])
    monkeypatch.setattr(bwd, "TUNE_DQ", [])
    configs = configs_of(spec)
    assert configs
    for config, dkdv, dq in configs:
        monkeypatch.setattr(fwd, "DEFAULT_CONFIG", config)
        monkeypatch.setattr(bwd, "DEFAULT_DKDV", dkdv or bwd_render.default_dkdv_config(spec))
        monkeypatch.setattr(bwd, "DEFAULT_DQ", dq or bwd_render.default_dq_config(spec))
        out = ops.flash_attention(q, k, v, scale=scale, causal=causal)
        assert_close_rel(f"out {config}", out, out64, TOLERANCE[dtype])
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
            assert_close_rel(f"{name} {config} {dkdv} {dq}", g, g64, TOLERANCE[dtype],
                             bound[name])
