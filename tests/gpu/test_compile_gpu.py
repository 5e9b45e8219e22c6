"""GPU tier: the same properties as tests/interp, with compiled kernels and Inductor.

Skipped without a CUDA GPU (see tests/conftest.py). Sizes go beyond what the
interpreter can afford: sequence lengths up to 1024 and head dims up to 256 (longer
sequences autotune, which the bench covers at N = 4096).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spellings import make, problems

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.gpu


@settings(max_examples=16, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems(batch=3, kv_heads=4, groups=4, min_n=2, max_n=1024,
                head_dims=[16, 32, 64, 80, 96, 128, 256], scales=[None]),
       st.integers(0, 2**31 - 1))
def test_compiled_attention_matches_eager_on_gpu(problem, seed):
    name, causal, b, h, hkv, nq, nk, d, dtype, scale = problem
    torch._dynamo.reset()
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(dtype).requires_grad_()

    q, k, v = rand(b, h, nq, d), rand(b, hkv, nk, d), rand(b, hkv, nk, d)
    fn = make(name, causal, scale)
    fast = ioaware.compile(fn)
    out = fast(q, k, v)
    ref = fn(q, k, v)
    expl = fast._ioaware_backend.explanation
    assert expl.rewrites and not expl.fallbacks, expl
    assert expl.rewrites[0].backend == "triton"
    tol = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tol

    grad = torch.randn(out.shape, generator=gen, device="cuda").to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for which, g, w in zip("qkv", got, want):
        err = relative_error(g, w, floor=0.1)
        assert err <= tol, f"d{which}: relative error {err:.3g}"


def test_torch_compile_backend_by_name_on_gpu():
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = make("matmul_masked_fill", True, 0.125)
    out = torch.compile(fn, backend="ioaware")(q, k, v)
    assert relative_error(out, fn(q, k, v)) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("fill", ["bool", "-inf", "min"])
def test_sdpa_fully_masked_rows_as_eager_on_gpu(dtype, fill):
    """Left padding leaves query rows with no visible key. Eager SDPA on CUDA (efficient
    backend; cuDNN's answer at N % 128 == 64 is a known bug, pytorch/pytorch#196678, so
    it is excluded) gives them 0 for a bool, -inf or finfo.min mask; so must ioaware,
    forward and backward. N = 96 puts the masked rows inside the first tile."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch._dynamo.reset()
    n, d = 96, 64
    i = torch.arange(n, device="cuda")
    pad = torch.ones(2, n, dtype=torch.bool, device="cuda")
    pad[0, :9] = False
    allowed = ((i[None, :] <= i[:, None])[None] & pad[:, None, :])[:, None]
    if fill == "bool":
        mask = allowed
    else:
        big = float("-inf") if fill == "-inf" else torch.finfo(dtype).min
        mask = torch.zeros(allowed.shape, dtype=dtype, device="cuda").masked_fill(~allowed, big)

    def fn(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = (torch.randn(2, 4, n, d, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    fast = ioaware.compile(fn)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        out = fast(q, k, v)
        ref = fn(q, k, v)
    assert fast._ioaware_backend.explanation.rewrites, fast._ioaware_backend.explanation
    assert (ref[0, :, :9] == 0).all(), "eager's semantics changed: revisit passes/attention"
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad),
                    torch.autograd.grad(ref, (q, k, v), grad)):
        assert relative_error(g, w, floor=0.1) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_additive_min_bias_tensor_as_eager_on_gpu(dtype):
    """A finfo.min padding mask handed in as a tensor is a bias to the kernels; rows it
    masks entirely are eager's uniform average, forward and backward (compiled kernels:
    the log2 overflow guard and the tie rows' lse encoding)."""
    torch._dynamo.reset()
    b, h, n, d = 2, 4, 200, 64
    keep = torch.ones(b, n, dtype=torch.bool, device="cuda")
    keep[0, :70] = False  # crosses the first 64-row tile
    tril = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
    allowed = keep[:, None, None, :] & tril
    bias = torch.zeros(b, 1, n, n, dtype=dtype, device="cuda").masked_fill(
        ~allowed, torch.finfo(dtype).min)

    def fn(q, k, v, bias):
        return torch.softmax((q @ k.transpose(-1, -2)) * d ** -0.5 + bias, dim=-1) @ v

    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    fast = ioaware.compile(fn)
    out, ref = fast(q, k, v, bias), fn(q, k, v, bias)
    assert fast._ioaware_backend.explanation.rewrites, fast._ioaware_backend.explanation
    assert not ref.isnan().any()
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad),
                    torch.autograd.grad(ref, (q, k, v), grad)):
        assert relative_error(g, w) <= TOLERANCE[dtype]
