"""The compiled scan kernels on a CUDA GPU against the eager time loop in float64.

Same properties as tests/interp/test_scan_kernel.py, at GPU sizes (L up to a few
thousand, hundreds of channels, d_state up to 256), with the autotuned tiles; the
float64 loop runs on the GPU too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioaware.codegen.scan import op as scan_ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_scan_kernel import (
    DTYPES,
    assert_close,
    check_poly_scan,
    check_selective,
    eager_linear_scan,
    make_selective,
)


def to_cuda(t: torch.Tensor | None) -> torch.Tensor | None:
    """The same tensor on the GPU, keeping a transposed layout or a stride-0 broadcast."""
    if t is None or not isinstance(t, torch.Tensor):
        return t
    if t.dim() == 4 and t.stride(1) == 0:
        return t[:, :1].cuda().expand(t.shape)
    return t.cuda()


# Each new Spec compiles (and, past TUNE_MIN_STEPS, autotunes among up to
# MAX_TUNE_CONFIGS tiles for the forward and as many for the backward) its own kernels,
# so the examples are few and large: most of them take the autotuned path, which is where
# the atomic outputs must be zeroed between trials.
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    channels_groups=st.sampled_from([(64, 1), (96, 4), (130, 130), (256, 8), (1536 // 8, 1)]),
    length=st.sampled_from([1, 2, 63, 100, 257, 1000, 2049]),
    n=st.sampled_from([1, 4, 16, 64, 256]),
    dtype=st.sampled_from(DTYPES),
    delta_fp32=st.booleans(),
    parts=st.sets(st.sampled_from(["D", "z", "delta_bias", "softplus", "h0"])),
    layout=st.sampled_from(["contiguous", "transposed", "broadcast"]),
)
def test_selective_scan_gpu_matches_eager_loop(seed, batch, channels_groups, length, n, dtype,
                                               delta_fp32, parts, layout):
    channels, groups = channels_groups
    if n >= 64:  # keep the float64 loop's [Bt, Dc, N] state and the test time modest
        channels, groups = min(channels, 64), min(groups, 8)
    inputs = make_selective(seed, batch, channels, groups, length, n, dtype, delta_fp32,
                            parts, layout)
    check_selective(tuple(to_cuda(t) for t in inputs), seed)


def test_selective_scan_gpu_issue_shape_forward():
    """The issue's shape (B=4, Dc=1536, L=2048, N=16, bf16) through the autotuned path."""
    inputs = make_selective(0, 4, 1536, 1, 2048, 16, torch.bfloat16, False,
                            {"D", "z", "delta_bias", "softplus"}, "transposed")
    u, delta, A, B, C, D, z, delta_bias, softplus, h0 = (to_cuda(t) for t in inputs)
    y, h_last = scan_ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, h0)
    from ioaware.codegen.scan import reference as scan_reference

    y_ref, h_ref = scan_reference.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                                 softplus, h0)
    assert_close("y", y, y_ref.float(), torch.bfloat16)
    assert_close("h_last", h_last, h_ref, torch.float32)


@pytest.mark.parametrize("poly_every", [1, 4])
def test_selective_scan_gpu_poly_exp2(poly_every):
    """The compiled forward and backward with the decays' exp2 on the FMA pipe in every
    step (1) or one step in four (4), bf16 inputs with the inline-PTX upcast, against the
    float64 loop (issue 17)."""
    from ioaware.codegen.scan.spec import ScanSpec

    inputs = make_selective(5, 2, 64, 1, 1000, 16, torch.bfloat16, False,
                            {"D", "z", "delta_bias", "softplus"}, "contiguous")
    spec = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, delta_dtype="bfloat16",
                    bc_dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                    delta_softplus=True)
    check_poly_scan(tuple(to_cuda(t) for t in inputs), spec, poly_every, False,
                    torch.bfloat16)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 8),
    length=st.sampled_from([1, 5, 127, 1000, 4097]),
    features=st.sampled_from([1, 7, 64, 300]),
    dtype=st.sampled_from(DTYPES),
    with_h0=st.booleans(),
    reverse=st.booleans(),
)
def test_linear_scan_gpu_matches_eager_loop(seed, rows, length, features, dtype, with_h0,
                                            reverse):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, length, features, generator=g).to(dtype).cuda()
    b = torch.randn(rows, length, features, generator=g).to(dtype).cuda()
    h0 = torch.randn(rows, features, generator=g).cuda() if with_h0 else None
    leaves = [None if t is None else t.detach().requires_grad_() for t in (a, b, h0)]
    h = scan_ops.linear_scan(leaves[0], leaves[1], h0=leaves[2], reverse=reverse)
    ref_leaves = [None if t is None else t.detach().double().requires_grad_()
                  for t in (a, b, h0)]
    h_ref = eager_linear_scan(*ref_leaves, reverse)
    assert_close("h", h, h_ref, dtype)
    dh = torch.randn(h.shape, generator=g).to(dtype).cuda()
    present = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(h, [leaves[i] for i in present], dh)
    ref_grads = torch.autograd.grad(h_ref, [ref_leaves[i] for i in present], dh.double())
    for i, gk, gr in zip(present, grads, ref_grads):
        assert_close(("da", "db", "dh0")[i], gk, gr, (a, b, h0)[i].dtype)
