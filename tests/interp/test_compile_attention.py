"""ioaware.compile on attention in every spelling: outputs and gradients equal eager.

The generated Triton kernels run under the interpreter. Each example draws fresh
random inputs; tolerances are set by dtype (ioaware.verify.TOLERANCE) and compare the
compiled result with eager execution of the same function.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spellings import make, problems

import ioaware
from ioaware.verify import TOLERANCE, relative_error


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems(batch=2, kv_heads=2, groups=3, min_n=1, max_n=150,
                head_dims=[16, 24, 32, 64, 80], scales=[None, 0.05, 0.3]),
       st.integers(0, 2**31 - 1))
def test_compiled_attention_matches_eager(interpret, problem, seed):
    name, causal, b, h, hkv, nq, nk, d, dtype, scale = problem
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_()

    q, k, v = rand(b, h, nq, d), rand(b, hkv, nk, d), rand(b, hkv, nk, d)
    fn = make(name, causal, scale)
    fast = ioaware.compile(fn)

    out = fast(q, k, v)
    ref = fn(q, k, v)
    expl = fast._ioaware_backend.explanation
    if name == "einsum_where" and 1 in (nq, nk):
        # einsum may lower a contraction with a size-1 axis to mul + sum instead of
        # bmm: then a fallback with its reason, and still eager's result.
        assert len(expl.rewrites) + len(expl.fallbacks) == 1, expl
    else:
        assert expl.rewrites and not expl.fallbacks, expl
    tol = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tol

    grad = torch.randn(out.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name_, g, w in zip("qkv", got, want):
        # floor 0.1: gradients of these unit-scale inputs are O(0.1..1) per element; the
        # floor only matters when one is zero by cancellation (a row sees a single key).
        err = relative_error(g, w, floor=0.1)
        assert err <= tol, f"d{name_}: relative error {err:.3g}"
