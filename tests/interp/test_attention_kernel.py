"""The generated FlashAttention kernels, run by Triton's interpreter, against eager math.

Every example draws fresh shapes, dtypes, layouts and values and compares out, lse and
dq/dk/dv with softmax(scale·QKᵀ [causal]) V computed in float64 by torch autograd on
the very same (rounded) inputs. Tolerance: relative error ‖a − b‖ / ‖b‖ per dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioaware.codegen.attention import op as ops
from ioaware.codegen.attention import reference
from ioaware.config import config

# ‖a − b‖ / ‖b‖ bounds: a few units of the output dtype's rounding (fp16 2^-11,
# bf16 2^-8); fp32 runs IEEE fp32 products, so it is held near fp32 accumulation error.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = list(TOLERANCE)


# Every test here runs the kernels under the interpreter (tests/interp/conftest.py).
pytestmark = pytest.mark.usefixtures("interpreted_kernels")


def eager_attention(q, k, v, scale: float, causal: bool):
    """(out, lse) in float64 via plain softmax; q/k/v float64 leaves or views."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = scale * q @ k.transpose(-1, -2)
    if causal:
        visible = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
        s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    assert not torch.isnan(actual).any(), "NaN in kernel output"
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# Unit roundoff 2^-p of each dtype (p significand bits, the implicit one included).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def delta_rounding_bound(q, k, v, dout, scale: float, causal: bool) -> dict[str, float]:
    """First-order effect on dq, dk of rounding O to the input dtype before the backward.

    FlashAttention's backward (FA2 Alg. 2, line 4; FA3, SDPA, Triton's tutorial alike)
    takes delta_i = rowsum(dO_i ∘ O_i) from the stored, rounded O. That shifts delta_i
    by δ_i, |δ_i| <= u · Σ_d |dO_id O_id|, and dS_ij = P_ij (dP_ij - delta_i) by
    -P_ij δ_i; so dq_i moves by scale · δ_i (P K)_i and dk_j by scale · Σ_i P_ij δ_i q_i.
    Small next to ‖dq‖ unless dS cancels (few visible keys), where it dominates; this
    bound (norms, float64) is added to the relative tolerance. dv does not use delta.
    """
    u = UNIT_ROUNDOFF[q.dtype]
    q, k, v, dout = (t.detach().double() for t in (q, k, v, dout))
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = scale * q @ kk.transpose(-1, -2)
    if causal:
        visible = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, -1)
    delta_shift = u * (dout.abs() * (p @ vv).abs()).sum(-1, keepdim=True)  # [B, Hq, Nq, 1]
    dk = scale * (p * delta_shift).transpose(-1, -2) @ q
    dk = dk.reshape(dk.shape[0], -1, group, *dk.shape[2:]).sum(2)
    return {
        "dq": (scale * delta_shift * (p @ kk)).norm().item(),
        "dk": dk.norm().item(),
        "dv": 0.0,
    }


def assert_close_rel(name: str, actual, expected, tol: float, extra: float = 0.0) -> None:
    """‖actual − expected‖ <= tol · ‖expected‖ + extra (extra: a modelled error term)."""
    assert not torch.isnan(actual).any(), f"{name}: NaN"
    err = (actual.double() - expected.double()).norm().item()
    norm = expected.double().norm().item()
    assert err <= tol * norm + extra, (
        f"{name}: ‖error‖ = {err:.3e} > {tol:.0e} · {norm:.3e} + {extra:.3e}"
        f" (relative {err / max(norm, 1e-300):.2e})"
    )


def make_input(shape: tuple[int, ...], dtype: torch.dtype, layout: str, gen: torch.Generator):
    """A tensor of `shape` in a given memory layout, values ~ N(0, 1)."""
    b, h, n, d = shape
    if layout == "contiguous":
        base = torch.randn(shape, generator=gen)
        view = lambda t: t
    elif layout == "bnhd":  # [B, N, H, d] storage, the usual projection output
        base = torch.randn(b, n, h, d, generator=gen)
        view = lambda t: t.transpose(1, 2)
    elif layout == "padded":  # rows longer than d: a slice of a wider tensor
        base = torch.randn(b, h, n, d + 7, generator=gen)
        view = lambda t: t[..., :d]
    else:  # "d_major": head dim not unit-stride
        base = torch.randn(b, h, d, n, generator=gen)
        view = lambda t: t.transpose(2, 3)
    base = base.to(dtype).requires_grad_()
    return base, view(base)


@st.composite
def problems(draw, dtype=None):
    h_kv = draw(st.integers(1, 2))
    return {
        "batch": draw(st.integers(1, 2)),
        "h_kv": h_kv,
        "h_q": h_kv * draw(st.sampled_from([1, 2, 3])),
        "n_q": draw(st.integers(1, 150)),
        "n_k": draw(st.integers(1, 150)),
        "d": draw(st.sampled_from([16, 40, 64, 80, 96, 128]) | st.integers(1, 256)),
        "d_v": draw(st.none() | st.integers(1, 160)),
        "dtype": dtype or draw(st.sampled_from(DTYPES)),
        "causal": draw(st.booleans()),
        "scale": draw(st.none() | st.floats(0.02, 2.0)),
        "layouts": draw(st.lists(st.sampled_from(["contiguous", "bnhd", "padded", "d_major"]),
                                 min_size=3, max_size=3)),
        "use_lse": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


# One test per dtype, 30 examples each: three items that pytest-xdist can spread over
# its workers (as one 90-example test it ran ~9 minutes alone, the suite's floor).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernels_match_eager_math(interpreted_kernels, dtype, data):
    p = data.draw(problems(dtype))
    assert ops.backend_name("cpu") == "triton-interpret"
    gen = torch.Generator().manual_seed(p["seed"])
    dtype, d, d_v = p["dtype"], p["d"], p["d_v"] or p["d"]
    scale = p["scale"] if p["scale"] is not None else 1.0 / math.sqrt(d)
    _, q = make_input((p["batch"], p["h_q"], p["n_q"], d), dtype, p["layouts"][0], gen)
    _, k = make_input((p["batch"], p["h_kv"], p["n_k"], d), dtype, p["layouts"][1], gen)
    _, v = make_input((p["batch"], p["h_kv"], p["n_k"], d_v), dtype, p["layouts"][2], gen)

    out, lse = torch.ops.ioaware.flash_attention(q, k, v, scale, p["causal"])
    assert out.shape == (p["batch"], p["h_q"], p["n_q"], d_v) and out.dtype == dtype
    assert out.is_contiguous() and lse.dtype == torch.float32

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, lse64 = eager_attention(q64, k64, v64, scale, p["causal"])
    tol = TOLERANCE[dtype]
    assert_close_rel("out", out, out64, tol)
    assert_close_rel("lse", lse, lse64, tol)

    dout = torch.randn(out.shape, generator=gen).to(dtype)
    dlse = torch.randn(lse.shape, generator=gen) if p["use_lse"] else None
    outputs, outputs64 = ((out, lse), (out64, lse64)) if p["use_lse"] else ((out,), (out64,))
    cotangents = (dout, dlse) if p["use_lse"] else (dout,)
    grads = torch.autograd.grad(outputs, (q, k, v), cotangents)
    expected = torch.autograd.grad(outputs64, (q64, k64, v64), [c.double() for c in cotangents])
    bound = delta_rounding_bound(q, k, v, dout, scale, p["causal"])
    for name, g, g64, t in zip(("dq", "dk", "dv"), grads, expected, (q, k, v)):
        assert g.shape == t.shape and g.dtype == dtype, name
        assert_close_rel(name, g, g64, tol, bound[name])


def test_single_block_boundaries_and_causal_band(interpreted_kernels):
    """Sizes at and around the interpreter tiles (32 × 16), Nq > Nk and Nq < Nk, causal."""
    gen = torch.Generator().manual_seed(0)
    for n_q, n_k in [(1, 1), (16, 16), (32, 16), (33, 17), (16, 64), (64, 16), (31, 97)]:
        q = torch.randn(1, 2, n_q, 24, generator=gen, requires_grad=True)
        k = torch.randn(1, 1, n_k, 24, generator=gen, requires_grad=True)
        v = torch.randn(1, 1, n_k, 8, generator=gen, requires_grad=True)
        for causal in (False, True):
            out = ops.flash_attention(q, k, v, causal=causal)
            q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
            out64, _ = eager_attention(q64, k64, v64, 24**-0.5, causal)
            assert rel_err(out, out64) < 1e-4
            # sum() hands the backward an expanded, stride-0 gradient.
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            expected = torch.autograd.grad(out64.sum(), (q64, k64, v64))
            bound = delta_rounding_bound(q, k, v, torch.ones_like(out), 24**-0.5, causal)
            for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
                assert_close_rel(name, g, g64, 1e-4, bound[name])


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (2, 2, 0, 5), (2, 2, 5, 0), (2, 0, 5, 5)])
def test_empty_problems(interpreted_kernels, shape):
    """Empty batch/heads/queries/keys: eager results, zero gradients, no kernel launch."""
    b, h, n_q, n_k = shape
    q = torch.randn(b, h, n_q, 8, requires_grad=True)
    k = torch.randn(b, h, n_k, 8, requires_grad=True)
    v = torch.randn(b, h, n_k, 4, requires_grad=True)
    out, lse = torch.ops.ioaware.flash_attention(q, k, v, 0.5, False)
    expected = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v if n_k else q.new_zeros(
        b, h, n_q, 4)
    assert out.shape == (b, h, n_q, 4) and lse.shape == (b, h, n_q)
    torch.testing.assert_close(out, expected)
    if n_k == 0 and lse.numel():
        assert torch.isneginf(lse).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    for g, t in zip(grads, (q, k, v)):
        assert g.shape == t.shape and (g == 0).all()


def test_reference_backend_matches_eager_math(interpreted_kernels, monkeypatch):
    monkeypatch.setattr(config, "interpret", False)
    assert ops.backend_name("cpu") == "reference"
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 37, 40, generator=gen).bfloat16().requires_grad_()
    k = torch.randn(2, 2, 53, 40, generator=gen).bfloat16().requires_grad_()
    v = torch.randn(2, 2, 53, 24, generator=gen).bfloat16().requires_grad_()
    for causal in (False, True):
        out, lse = torch.ops.ioaware.flash_attention(q, k, v, 0.3, causal)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        out64, lse64 = eager_attention(q64, k64, v64, 0.3, causal)
        assert rel_err(out, out64) < 1e-2 and rel_err(lse, lse64) < 1e-5
        dout = torch.randn(out.shape, generator=gen).bfloat16()
        grads = torch.autograd.grad(out, (q, k, v), dout)
        expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
        for g, g64 in zip(grads, expected):
            assert rel_err(g, g64) < 1e-2
    # The reference path itself, in fp32, is exact to fp32 rounding.
    o32, _ = reference.attention_forward(q.float(), k.float(), v.float(), 0.3, True)
    assert rel_err(o32, eager_attention(q.double(), k.double(), v.double(), 0.3, True)[0]) < 1e-5


def test_backend_name(monkeypatch):
    monkeypatch.setattr(config, "interpret", True)
    assert ops.backend_name("cpu") == "triton-interpret"
    assert ops.backend_name(torch.device("cuda", 0)) == "triton"
    monkeypatch.setattr(config, "interpret", False)
    assert ops.backend_name("cpu") == "reference"
    assert ops.backend_name("meta") == "reference"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (((2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), {}, "q must be 4-D"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4)), {}, "v must be 4-D"),
        (((1, 3, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), {}, "Hq=3 must be a multiple of"),
        (((1, 2, 4, 8), (1, 2, 4, 16), (1, 2, 4, 8)), {}, "head dims differ"),
        (((1, 2, 4, 300), (1, 2, 4, 300), (1, 2, 4, 8)), {}, "q.shape[-1]=300"),
        (((1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 4, 8)), {}, "k and v must agree"),
        (((2, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), {}, "batch sizes differ"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), {"scale": -1.0}, "scale=-1.0"),
    ],
)
def test_bad_arguments_raise_value_error(args, kwargs, message):
    q, k, v = (torch.randn(s) for s in args)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.flash_attention(q, k, v, **kwargs)


def test_dtype_and_device_mismatch_raise_value_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="k.dtype"):
        ops.flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="q.dtype"):
        ops.flash_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="v.device"):
        ops.flash_attention(q, q, q.to("meta"))


def test_opcheck_schema_fake_and_autograd(interpreted_kernels):
    """torch.library.opcheck: schema, fake tensors, autograd registration, aot_dispatch."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 20, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 1, 24, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 1, 24, 16, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.ioaware.flash_attention.default, (q, k, v, 0.25, True))
    out, lse = torch.ops.ioaware.flash_attention(q, k, v, 0.25, True)
    torch.library.opcheck(
        torch.ops.ioaware.flash_attention_backward.default,
        (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
         0.25, True),
    )


def test_inside_compiled_and_fx_graphs(interpreted_kernels):
    """The op stays opaque under torch.compile (aot_eager) and runs in an fx graph."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 20, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 2, 24, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, 24, 16, generator=gen, requires_grad=True)

    def block(q, k, v):
        return (ops.flash_attention(q, k, v, causal=True) * 2).sum()

    eager = block(q, k, v)
    eager_grads = torch.autograd.grad(eager, (q, k, v))
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(q, k, v)
    compiled_grads = torch.autograd.grad(compiled, (q, k, v))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)

    class Block(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.ioaware.flash_attention(q, k, v, 0.25, False)[0]

    gm = torch.fx.symbolic_trace(Block())
    targets = (torch.ops.ioaware.flash_attention, torch.ops.ioaware.flash_attention.default)
    assert any(n.target in targets for n in gm.graph.nodes)
    torch.testing.assert_close(gm(q, k, v), Block()(q, k, v))
