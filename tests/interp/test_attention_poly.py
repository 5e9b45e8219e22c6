"""The forward's "poly" variant (issue 15): a fixed share of P's exp2 on the FMA pipe as
a polynomial (`codegen/exp2poly.py`, FlashAttention-4's split), the rest on MUFU.

The primitive as the forward renders it, per dtype (degree 3 bf16, 4 fp16, 5 fp32),
against exp2 in float64 over every x the softmax can feed it: scores minus a row max
(x <= 0; up to RESCALE_THRESHOLD = 8 under "lazy") down past the underflow, -inf for a
masked score. Then the forward at each share under the interpreter against eager
float64 at ragged sizes, dense and causal, and the lse against the plain kernel's within
the polynomial's bound; the tuning space without it; the PTX with fewer ex2.
"""

from __future__ import annotations

import pytest
import torch
from sm90 import compile_sm90, has_ptx_backend, import_compiled
from test_attention_kernel import TOLERANCE, assert_close_rel, eager_attention
from test_scan_kernel import _PROBE, run_exp2_probe

from ioaware.codegen import exp2poly
from ioaware.codegen.attention import forward as fwd_render
from ioaware.codegen.attention import op as ops
from ioaware.codegen.runtime import kernel_module

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

def _probe_module(dtype: torch.dtype):
    """The interpreted forward module of a plain `dtype` Spec, with a probe kernel."""
    from ioaware.codegen.cache import _import_text

    spec = ops._plain_spec(16, 16, dtype, False, 1.0)
    text = fwd_render.render_forward(spec, interpret=True) + _PROBE
    return _import_text(f"attention_poly_probe_{spec.key()}", text, True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_exp2_poly_matches_exp2_over_the_softmax_range(dtype):
    """Error bound (docs/kernels.md, "Polynomial exp2 in the forward"): relative
    ERROR[degree] (fp32 Horner on [-1/2, 1/2]; 2^n is exact) plus one fp32 rounding for
    -125 <= x <= 8; below, absolute error < 2^-126 and exactly 0 from -127 down (-inf
    included); integers exact (x = 0 gives 1: a row's max entry); NaN stays NaN."""
    degree = exp2poly.attention_degree(str(dtype)[6:])
    module = _probe_module(dtype)
    size = 1 << 16
    g = torch.Generator().manual_seed(0)
    dense = torch.linspace(-130.0, 8.0, size // 2)
    wide = -torch.rand(size // 4, generator=g) * 1e4  # scores far below the row max
    tiny = -torch.rand(size // 8, generator=g) * 2.0 ** -20  # at the row max
    ends = torch.tensor([0.0, -0.0, -0.5, 0.5, -124.5, -125.0, -125.5, -126.0, -126.5,
                         -127.0, -127.5, -149.0, -150.0, 7.5, 8.0, float("-inf"),
                         float("nan")])
    ints = torch.arange(-140.0, 9.0)
    x, y, want = run_exp2_probe(module, [dense, wide, tiny, ends, ints], size)
    normal = (x >= -125.0) & (x <= 8.0)
    rel = ((y.double() - want).abs() / want)[normal]
    bound = exp2poly.ERROR[degree] + 2.0 ** -24
    assert rel.max().item() <= bound, f"degree {degree}: relative {rel.max().item():.3g}"
    low = x < -125.0
    assert (y[low] >= 0).all() and ((y[low].double() - want[low]).abs() <= 2.0 ** -126).all()
    assert (y[x <= -127.0] == 0).all()  # a masked score's P is exactly 0
    exact = normal & (x == x.round())
    assert torch.equal(y[exact], torch.exp2(x[exact]))
    assert torch.isnan(y[x.isnan()]).all()


# (dtype, d, Nq, Nk, causal, scale, config): ragged sizes against the interpreter's
# 32 × 16 tiles, every share (the finer ones on the wider tiles they need), with lazy
# rescaling (x up to 8) and TMA loads
CASES = [
    (torch.bfloat16, 24, 45, 37, False, 2.0, (32, 16, 4, 1, "poly2")),
    (torch.bfloat16, 40, 50, 50, True, 0.3, (32, 16, 4, 1, "poly4")),
    (torch.float16, 64, 33, 70, True, 2.0, (32, 16, 4, 1, "poly8")),
    (torch.bfloat16, 16, 70, 45, True, 1.0, (32, 32, 4, 1, "tma+poly16")),
    (torch.float32, 24, 45, 77, False, 0.5, (32, 64, 4, 1, "poly32")),
    (torch.bfloat16, 24, 45, 37, True, 2.0, (32, 16, 4, 1, "lazy+poly")),
]


@pytest.mark.parametrize(("dtype", "d", "n_q", "n_k", "causal", "scale", "config"), CASES)
def test_poly_forward_matches_eager(dtype, d, n_q, n_k, causal, scale, config):
    """O and lse against float64 eager within the dtype's tolerance, and the lse against
    the plain kernel's within the polynomial's relative bound on l (both sum the same
    fp32 P but for the poly entries: |Δ ln l| <= ERROR[degree])."""
    gen = torch.Generator().manual_seed(hash(config) % 2**31)
    q = torch.randn(2, 2, n_q, d, generator=gen).to(dtype)
    k, v = (torch.randn(2, 1, n_k, d, generator=gen).to(dtype) for _ in range(2))
    module = kernel_module("attention_fwd", ops._plain_spec(d, d, dtype, causal, scale),
                           torch.device("cpu"))
    results = []
    for cfg in (config[:4], config):
        out, lse = torch.empty_like(q), torch.empty(q.shape[:3])
        module.forward(q, k, v, out, lse, config=cfg)
        results.append((out, lse))
    (_, lse0), (out, lse) = results
    want_out, want_lse = eager_attention(q.double(), k.double(), v.double(), scale, causal)
    assert_close_rel("out", out, want_out, TOLERANCE[dtype])
    assert_close_rel("lse", lse, want_lse, TOLERANCE[dtype])
    degree = exp2poly.attention_degree(str(dtype)[6:])
    shift = (lse - lse0).abs().max().item()
    assert shift <= exp2poly.ERROR[degree] + 1e-6, f"lse moved by {shift:.3g}"


def test_poly_through_the_op_and_its_backward(monkeypatch):
    """The variant as the op's untuned config: forward, then gradients through the
    unchanged backward (which recomputes P by MUFU from the stored lse), bf16 GQA causal."""
    from test_attention_kernel import delta_rounding_bound

    dtype, scale = torch.bfloat16, 0.3
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 50, 40, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(2, 1, 50, 40, generator=gen).to(dtype).requires_grad_()
            for _ in range(2))
    module = kernel_module("attention_fwd", ops._plain_spec(40, 40, dtype, True, scale),
                           torch.device("cpu"))
    monkeypatch.setattr(module, "DEFAULT_CONFIG", (*fwd_render.INTERPRET_CONFIG, "poly2"))
    out, lse = torch.ops.ioaware.flash_attention(q, k, v, scale, True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, lse64 = eager_attention(q64, k64, v64, scale, True)
    assert_close_rel("out", out, out64, TOLERANCE[dtype])
    assert_close_rel("lse", lse, lse64, TOLERANCE[dtype])
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
    bound = delta_rounding_bound(q, k, v, dout, scale, True)
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
        assert_close_rel(name, g, g64, TOLERANCE[dtype], bound[name])


def test_poly_is_pinnable_only():
    """No "poly" config in the forward's tuning space (out until a GPU measures it), at
    any head dim or dtype; the variant string names the share."""
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    for dtype in (torch.bfloat16, torch.float16):
        for d in (64, 128, 256):
            for causal in (False, True):
                spec = ops._plain_spec(d, d, dtype, causal, d**-0.5)
                configs = fwd_render.forward_configs(spec, h100)
                assert not any(len(c) > 4 and "poly" in c[4] for c in configs)
    assert fwd_render.poly_share("tma+poly") == fwd_render.POLY_SHARE
    assert fwd_render.poly_share("poly2+lazy") == 2 and fwd_render.poly_share("tma") == 0
    with pytest.raises(ValueError):
        fwd_render.poly_share("poly3")


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
def test_poly_moves_its_share_of_ex2_off_mufu(tmp_path):
    """Compiled for sm_90 at the tuned d = 64 config (128, 64, 8 warps): the PTX holds
    1/K fewer ex2 of P per loop (32 a thread: two loops, dense and causal), no local
    memory, and no shared memory beyond the plain kernel's (no layout conversion)."""
    from ioaware.codegen.attention.spec import AttentionSpec

    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                         scale=0.125)
    module = import_compiled(fwd_render.render_forward(spec), tmp_path / "poly_fwd.py")

    def build(poly):
        return compile_sm90(
            module._attn_fwd, {"BLOCK_M": 128, "BLOCK_N": 64, "TMA": True, "POLY": poly},
            lambda a: {"Lse": "*fp32"}.get(a, "*bf16" if a in ("Q", "K", "V", "Out")
                                           else "i32"), num_warps=8, num_stages=3)
    base, poly = build(0), build(4)
    per_thread = 128 * 64 // (8 * 32)
    count = base.asm["ptx"].count("ex2.approx")
    assert count - poly.asm["ptx"].count("ex2.approx") == 2 * per_thread // 4
    assert ".local" not in poly.asm["ptx"]
    assert poly.metadata.shared == base.metadata.shared
