"""GPU tier for recurrences: compiled scan kernels and Inductor, against eager.

Skipped without a CUDA GPU (see tests/conftest.py). On CUDA, associative_scan runs in
combine_mode="pointwise", which keeps the higher-order op whole: the spelling the CPU
tiers can only build by hand. Sizes go beyond what the interpreter can afford.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._higher_order_ops.associative_scan import associative_scan

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.gpu


def _combine(left, right):
    return left[0] * right[0], right[0] * left[1] + right[1]


def mamba_scan(form: str):
    """u, delta, z [Bt, Dc, L]; A [Dc, N]; B, C [Bt, L, N]; D [Dc]."""

    def fn(u, delta, A, B, C, D, z):
        dA = torch.exp(delta[..., None] * A[:, None, :])
        dBu = delta[..., None] * B[:, None] * u[..., None]
        if form == "pointwise":
            _, hs = associative_scan(_combine, (dA, dBu), dim=2, combine_mode="pointwise")
            y = torch.matmul(hs.transpose(1, 2), C.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        else:
            h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device,
                            dtype=dA.dtype)
            ys = []
            for t in range(u.shape[2]):
                h = dA[:, :, t] * h + dBu[:, :, t]
                ys.append((h * C[:, t, None, :]).sum(-1))
            y = torch.stack(ys, dim=-1)
        return (y + u * D[None, :, None]) * F.silu(z)

    return fn


def _grads_match(fn, args, tol, reference):
    """ioaware.compile(fn) against `reference`, the same recurrence as an eager loop run
    in fp32 on fp32 copies of the inputs (the kernels keep the state in fp32; a bf16 loop
    would round it at every step), outputs and gradients, at the inputs' tolerance.

    Not against fn itself: on CUDA, torch's own associative_scan gradient is wrong for the
    first leaf when the product leaf is discarded (measured with torch 2.11: relative
    error 0.87-0.96 in da against the loop at L = 2..300; known upstream,
    pytorch/pytorch#172568), and eager fn would compare with that."""
    fast = ioaware.compile(fn)
    wide = [a.detach().float().requires_grad_() for a in args]
    out, ref = fast(*args), reference(*wide)
    expl = fast._ioaware_backend.explanation
    assert [r.kind for r in expl.rewrites] == ["scan"], expl
    assert expl.rewrites[0].backend == "triton"
    assert relative_error(out, ref.to(out.dtype)) <= tol
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, args, grad)
    want = torch.autograd.grad(ref, wide, grad.float())
    for i, (g, w) in enumerate(zip(got, want)):
        err = relative_error(g, w.to(g.dtype), floor=0.1)
        assert err <= tol, f"gradient {i}: relative error {err:.3g}"
    return expl.rewrites[0]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
# L >= 2: a single step is left to eager by design (tests/unit/test_scan_pass.py)
@given(st.sampled_from(["pointwise", "loop"]), st.integers(2, 600), st.sampled_from([4, 16, 64]),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**31 - 1))
def test_compiled_selective_scan_on_gpu(form, length, n, dtype, seed):
    if form == "loop":
        length = min(length, 96)  # dynamo unrolls the loop: its time, not ours
    torch._dynamo.reset()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    bt, dc = 2, 48

    def rand(*shape, positive=False):
        x = (torch.rand if positive else torch.randn)(*shape, generator=gen, device="cuda")
        return x.to(dtype).requires_grad_()

    args = (rand(bt, dc, length), rand(bt, dc, length, positive=True),
            (-torch.rand(dc, n, generator=gen, device="cuda")).to(dtype).requires_grad_(),
            rand(bt, length, n), rand(bt, length, n), rand(dc), rand(bt, dc, length))
    rewrite = _grads_match(mamba_scan(form), args, TOLERANCE[dtype], mamba_scan("loop"))
    assert rewrite.detail["op"] == "selective_scan", rewrite.detail


def _linear_loop(a, b):
    h, hs = torch.zeros_like(a[:, 0]), []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


def test_pointwise_associative_scan_is_one_linear_scan():
    def fn(a, b):
        return associative_scan(_combine, (a, b), dim=1, combine_mode="pointwise")[1]

    a = (0.5 + 0.5 * torch.rand(4, 3000, 64, device="cuda")).requires_grad_()
    b = torch.randn(4, 3000, 64, device="cuda", requires_grad=True)
    rewrite = _grads_match(fn, (a, b), TOLERANCE[torch.float32], _linear_loop)
    assert rewrite.detail["form"] == "associative_scan", rewrite.detail


@pytest.mark.parametrize("associative_scan_", [False, True], ids=["loop", "assoc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mamba_on_gpu_matches_eager(associative_scan_, dtype, monkeypatch):
    pytest.importorskip("transformers")
    from hf_models import LAYERS, assert_compiled_matches_eager, mamba, quietly

    torch.manual_seed(0)
    model = quietly(mamba, associative_scan_)
    if model is None:
        pytest.skip("this transformers has no use_associative_scan")
    if associative_scan_:
        # Under torch 2.11's dynamo transformers 5.23 took its loop branch whatever the
        # config said (docs/performance.md); answer its gate outside dynamo, as
        # scripts/compile_time_scan.py --force-assoc-branch does, so this tests the op.
        from transformers.models.mamba import modeling_mamba as mm

        monkeypatch.setattr(mm, "is_torch_greater_or_equal", lambda v, accept_dev=False: True)
        monkeypatch.setattr(mm, "is_torchdynamo_compiling", torch.compiler.is_compiling)
        monkeypatch.setattr(mm, "is_torchdynamo_exporting", lambda: False)
    model = model.cuda().to(dtype).train()
    ids = torch.randint(0, 128, (2, 64), device="cuda")
    expl = ioaware.explain(model, ids)
    scans = [r for r in expl.rewrites if r.kind == "scan"]
    assert len(scans) == LAYERS and scans[0].backend == "triton", expl
    form = "associative_scan" if associative_scan_ else "loop"
    assert all(r.detail["form"] == form for r in scans), [r.detail for r in scans]
    assert not [f for f in expl.fallbacks if f.kind == "scan"], expl
    assert_compiled_matches_eager(model, ids, TOLERANCE[dtype])
