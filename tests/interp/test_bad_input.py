"""Head dims and dtypes the generated kernels cannot serve, or serve only padded: each
runs as eager runs it, outputs and gradients, and `explain` says what ran and why
(issue 15's bad input). Kernels under the interpreter; on the CPU no SDPA backend is
measured, so what the kernels refuse stays eager."""

from __future__ import annotations

import pytest
import torch
from spellings import make

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.usefixtures("interpreted_kernels")


def outputs_and_grads(fn, q, k, v):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
    return [out.detach(), *(x.grad for x in leaves)]


def compiled_and_eager(name, causal, d, dtype):
    torch._dynamo.reset()
    fn = make(name, causal, 0.25)
    q, k, v = (torch.randn(1, 2, 12, d, dtype=dtype) for _ in range(3))
    fast = ioaware.compile(fn)
    got = outputs_and_grads(fast, q, k, v)
    want = outputs_and_grads(fn, q, k, v)
    return got, want, fast._ioaware_backend.explanation


@pytest.mark.parametrize("d", [72, 200])
def test_head_dims_that_are_not_powers_of_two_run_padded(interpret, d):
    got, want, expl = compiled_and_eager("matmul_masked_fill", True, d, torch.float32)
    assert len(expl.rewrites) == 1 and expl.rewrites[0].backend == "triton-interpret"
    for g, w in zip(got, want):
        assert relative_error(g, w) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize(("name", "d", "dtype", "reason"), [
    ("matmul_masked_fill", 320, torch.float32, "head_dim=320 must be between 1 and 256"),
    ("sdpa", 512, torch.float32, "head_dim=512 must be between 1 and 256"),
    ("matmul_masked_fill", 16, torch.float64, "float64 is not fp16/bf16/fp32"),
])
def test_what_the_kernels_refuse_stays_eager_and_says_why(interpret, name, d, dtype, reason):
    got, want, expl = compiled_and_eager(name, True, d, dtype)
    assert not expl.rewrites
    [fallback] = expl.fallbacks
    assert reason in fallback.reason, fallback.reason
    if d > 256:  # the region is attention SDPA would compute; off CUDA it is not measured
        assert "left to eager" in fallback.reason and "not measured" in fallback.reason
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # the same eager ops on the same inputs
