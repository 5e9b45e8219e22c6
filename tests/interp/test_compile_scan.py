"""ioaware.compile on recurrences in every spelling: outputs and gradients equal eager.

The generated scan kernels run under Triton's interpreter. Each example draws a spelling
(a Mamba loop with one of three readouts, transformers-style associative_scan, a gated
linear RNN, an EMA, a reverse loop, the cumsum closed form), random sizes, a dtype and which fused parts are
present; the compiled function must give eager's outputs and input gradients within the
input dtype's tolerance (ioaware.verify.TOLERANCE) and every scan must be rewritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._higher_order_ops.associative_scan import associative_scan

import ioaware
from ioaware.verify import TOLERANCE, relative_error


def _combine(left, right):
    return left[0] * right[0], right[0] * left[1] + right[1]


def selective(form: str, skip: bool, gate: bool):
    """Mamba's scan: u, delta, z [Bt, Dc, L]; A [Dc, N]; B, C [Bt, L, N]; D [Dc]."""

    def fn(u, delta, A, B, C, D, z):
        dA = torch.exp(delta[..., None] * A[:, None, :])
        dBu = delta[..., None] * B[:, None] * u[..., None]
        if form == "associative_scan":
            _, hs = associative_scan(_combine, (dA, dBu), dim=2, combine_mode="generic")
            y = torch.matmul(hs.transpose(1, 2), C.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        else:
            h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=dA.dtype)
            ys = []
            for t in range(u.shape[2]):
                h = dA[:, :, t] * h + dBu[:, :, t]
                if form == "sum":
                    ys.append((h * C[:, t, None, :]).sum(-1))
                elif form == "einsum":
                    ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
                else:
                    ys.append(torch.matmul(h, C[:, t, :].unsqueeze(-1))[:, :, 0])
            y = torch.stack(ys, dim=-1)
        if skip:
            y = y + u * D[None, :, None]
        if gate:
            y = y * F.silu(z)
        return y

    return fn


def linear(form: str):
    """Diagonal recurrences that are not Mamba: a, b [R, L, F]; h0 [R, F]."""

    def fn(a, b, h0):
        if form == "associative_scan":
            return associative_scan(_combine, (a, b), dim=1, combine_mode="generic")[1]
        if form == "cumsum":
            p = torch.exp(torch.cumsum(torch.log(a), dim=1))
            return p * torch.cumsum(b / p, dim=1)
        steps = range(a.shape[1])
        h = h0 if form == "gated" else torch.zeros_like(h0)
        out = [None] * a.shape[1]
        for t in (reversed(steps) if form == "reverse" else steps):
            h = (0.9 * h if form == "ema" else a[:, t] * h) + b[:, t]
            out[t] = h
        return torch.stack(out, 1)

    return fn


def _check(fn, args, dtype):
    torch._dynamo.reset()
    fast = ioaware.compile(fn)
    out = fast(*args)
    ref = fn(*args)
    expl = fast._ioaware_backend.explanation
    length = args[0].shape[-1] if len(args) == 7 else args[0].shape[1]
    if length > 1:
        assert [r.kind for r in expl.rewrites] == ["scan"] and not expl.fallbacks, expl
    tol = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tol
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    leaves = [x for x in args if x.requires_grad]
    got = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    want = torch.autograd.grad(ref, leaves, grad, allow_unused=True)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        # floor 0.1: the gradients here are O(0.1..1) per element
        err = relative_error(g, w, floor=0.1)
        assert err <= tol, f"gradient {i}: relative error {err:.3g}"


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["sum", "einsum", "matmul", "associative_scan"]),
       st.integers(1, 40), st.sampled_from([1, 4, 16]), st.booleans(), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_compiled_selective_scan_matches_eager(interpret, form, length, n, skip, gate, dtype,
                                               seed):
    gen = torch.Generator().manual_seed(seed)
    bt, dc = 2, 5

    def rand(*shape, positive=False):
        x = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
        return x.to(dtype).requires_grad_()

    args = (rand(bt, dc, length), rand(bt, dc, length, positive=True),
            (-torch.rand(dc, n, generator=gen)).to(dtype).requires_grad_(),
            rand(bt, length, n), rand(bt, length, n), rand(dc), rand(bt, dc, length))
    _check(selective(form, skip, gate), args, dtype)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["gated", "ema", "reverse", "associative_scan", "cumsum"]),
       st.integers(1, 48), st.integers(1, 9),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_compiled_linear_scan_matches_eager(interpret, form, length, features, dtype, seed):
    if form == "cumsum":
        # eager's closed form in bf16 is itself off by more than bf16's tolerance (its
        # gradient through log, exp and two cumsums): the "numerically fragile"
        dtype = torch.float32
    gen = torch.Generator().manual_seed(seed)
    # a in [0.5, 1]: the closed form divides by Π a, which must not underflow here
    a = (0.5 + 0.5 * torch.rand(3, length, features, generator=gen)).to(dtype).requires_grad_()
    b = torch.randn(3, length, features, generator=gen).to(dtype).requires_grad_()
    h0 = torch.randn(3, features, generator=gen).to(dtype).requires_grad_()
    _check(linear(form), (a, b, h0), dtype)


def test_long_associative_scan(interpret):
    """A couple of thousand steps through the associative_scan tree (the loop spelling at
    this length is dynamo's cost, not ours: see scripts/compile_time_scan.py)."""
    gen = torch.Generator().manual_seed(0)
    a = (0.5 + 0.5 * torch.rand(2, 2000, 3, generator=gen)).requires_grad_()
    b = torch.randn(2, 2000, 3, generator=gen).requires_grad_()
    _check(linear("associative_scan"), (a, b, torch.zeros(2, 3)), torch.float32)
