"""Inputs at the edges: each is handled exactly as eager handles it, or left to eager."""

from __future__ import annotations

import pytest
import torch
from spellings import make

import ioaware
from ioaware.verify import TOLERANCE, relative_error


def run_both(fn, *args):
    fast = ioaware.compile(fn)
    return fast(*args), fn(*args), fast._ioaware_backend.explanation


@pytest.mark.parametrize("name", ["matmul_masked_fill", "sdpa"])
def test_empty_batch(interpret, name):
    q, k, v = (torch.randn(0, 2, 8, 16) for _ in range(3))
    out, ref, _ = run_both(make(name, True, 0.25), q, k, v)
    assert out.shape == ref.shape == (0, 2, 8, 16)


@pytest.mark.parametrize("name", ["matmul_masked_fill", "einsum_where", "sdpa"])
def test_non_contiguous_inputs(interpret, name):
    # [B, N, H, D] storage seen as [B, H, N, D]: the layout projections produce.
    q, k, v = (torch.randn(2, 40, 3, 32).transpose(1, 2) for _ in range(3))
    out, ref, expl = run_both(make(name, True, 0.2), q, k, v)
    assert expl.rewrites
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]


def test_broadcast_kv_over_batch(interpret):
    q = torch.randn(3, 2, 24, 16)
    k, v = (torch.randn(1, 2, 24, 16).expand(3, -1, -1, -1) for _ in range(2))
    out, ref, _ = run_both(make("sdpa", False, 0.25), q, k, v)
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]


def test_sequence_length_one(interpret):
    q, k, v = (torch.randn(2, 2, 1, 16, requires_grad=True) for _ in range(3))
    out, ref, _ = run_both(make("matmul_masked_fill", True, 0.25), q, k, v)
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]


def test_mismatched_dtypes_raise_as_eager(interpret):
    fn = make("matmul_masked_fill", False, 0.25)
    q = torch.randn(1, 1, 8, 16)
    k = v = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError) as eager:
        fn(q, k, v)
    with pytest.raises(RuntimeError) as compiled:
        ioaware.compile(fn)(q, k, v)
    assert str(compiled.value) == str(eager.value)


def test_float64_is_left_to_eager_with_reason(interpret):
    q, k, v = (torch.randn(1, 2, 8, 16, dtype=torch.float64) for _ in range(3))
    out, ref, expl = run_both(make("matmul_masked_fill", True, 0.25), q, k, v)
    assert not expl.rewrites and "float64" in expl.fallbacks[0].reason
    assert torch.equal(out, ref)


def test_batches_beyond_the_grid_limit_launch_in_slices(interpret, monkeypatch):
    # CUDA limits grid axis 1 (batch·heads) to 65535; shrink the limit to exercise the
    # slicing with a small problem: 5 batches × 2 heads in slices of 1 batch.
    from ioaware.codegen.attention import op as ops

    monkeypatch.setattr(ops, "MAX_GRID_Y", 3)
    q, k, v = (torch.randn(5, 2, 20, 16, requires_grad=True) for _ in range(3))
    fn = make("sdpa", True, 0.25)
    out, ref, expl = run_both(fn, q, k, v)
    assert expl.rewrites
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]
    for g, w in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                    torch.autograd.grad(ref.sum(), (q, k, v))):
        assert relative_error(g, w, floor=0.1) <= TOLERANCE[torch.float32]


class _CubeWithOwnBackward(torch.autograd.Function):
    """y = x³, s = Σx, with a backward that is deliberately not autograd's of the
    forward (twice the true gradient, times k): only the user's backward gives it."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x ** 3, x.sum()

    @staticmethod
    def backward(ctx, gy, gs):
        (x,) = ctx.saved_tensors
        return 2 * 3 * x * x * gy * ctx.k + gs, None


def test_custom_autograd_function_keeps_its_backward(interpret):
    # dynamo records the Function as autograd_function_apply; capture's re-trace would
    # inline its forward under no_grad and drop the gradient (BLOOM's GeLU lost its MLP
    # weights' gradients so), so capture keeps it whole as ioaware::autograd_function.
    def fn(q, k, v):
        o = torch.softmax((q @ k.transpose(-1, -2)) / 4, dim=-1) @ v
        y, s = _CubeWithOwnBackward.apply(o, 1.5)
        return y * s

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    out, ref, expl = run_both(fn, q, k, v)
    assert len(expl.rewrites) == 1 and not expl.fallbacks
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]
    got = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, w in zip(got, want):
        assert relative_error(g, w) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_min_mask_handed_in_as_a_tensor(interpret, dtype):
    # A padding mask of finfo.min that arrives as data (a model's 4-D attention_mask, or
    # a checkpointed layer's input) is a bias to the kernel. Rows it masks entirely are
    # eager's uniform average: their logits overflow the log2 scaling (forward) and tie
    # at the fp32 floor, where lse = m + log2 l would lose l (backward).
    def fn(q, k, v, bias):
        return torch.softmax((q @ k.transpose(-1, -2)) * 0.25 + bias, dim=-1) @ v

    torch.manual_seed(0)
    b, h, n, d = 2, 2, 12, 16
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[0, :5] = False  # queries 0..4 of batch 0 see no key at all
    allowed = keep[:, None, None, :] & torch.ones(n, n, dtype=torch.bool).tril()
    bias = torch.zeros(b, 1, n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    out, ref, expl = run_both(fn, q, k, v, bias)
    assert expl.rewrites and expl.rewrites[0].detail["score_mod"] == ["bias"]
    assert not ref.isnan().any()
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    go = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), go),
                    torch.autograd.grad(ref, (q, k, v), go)):
        assert relative_error(g, w) <= TOLERANCE[dtype]


def test_only_plain_loaded_summands_pay_the_overflow_check():
    # The kernels test each logit for the log2 overflow only where the score mod may add
    # a tensor's value as it is; ALiBi's slope times distance and soft-capping cannot.
    from ioaware.codegen.attention.header import adds_loaded_values
    from ioaware.codegen.attention.spec import AttentionSpec
    from ioaware.spec import TensorInput

    def spec(mod, *inputs):
        return AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                             scale=1.0, score_mod=mod,
                             inputs=tuple(TensorInput(n, d, "float32") for n, d in inputs))

    assert adds_loaded_values(spec("score + bias[b, h, q_idx, kv_idx]", ("bias", 4)))
    assert adds_loaded_values(spec("score + 2*bias[b, h, q_idx, kv_idx]", ("bias", 4)))
    assert adds_loaded_values(spec("score + table[h, Abs(kv_idx - q_idx)]", ("table", 2)))
    assert not adds_loaded_values(spec("score + slopes[h]*(kv_idx - q_idx)", ("slopes", 1)))
    assert not adds_loaded_values(spec("score + slopes[h]*kv_idx", ("slopes", 1)))
    assert not adds_loaded_values(spec("30*tanh(score/30)"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_sdpa_min_mask_tensor_rows_as_the_backend_gives_them(interpret, monkeypatch,
                                                            dtype, backend):
    # A finfo.min padding mask handed to SDPA as an input is a data bias. SDPA's math
    # backend (CPU) averages a row of only such keys uniformly; the CUDA backends give
    # it 0 as for -inf. The CUDA branch of the pass is taken here on CPU kernels and
    # checked against eager with those rows zeroed. bf16 also checks that a comparison
    # of a 16-bit load with a number is made in fp32 (the interpreter misreads bf16's).
    # Eager is SDPA's math backend: the CPU flash backend's gradient of such a row is
    # l times too large (its lse m + log l rounds to m, so P recomputes as 1 per key).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ioaware.passes.attention import sdpa

    if backend == "cuda":
        monkeypatch.setattr(sdpa, "_cuda_semantics", lambda node: True)
    torch._dynamo.reset()
    n = 40
    i = torch.arange(n)
    keep = torch.ones(2, n, dtype=torch.bool)
    keep[0, :9] = False
    allowed = ((i[None, :] <= i[:, None])[None] & keep[:, None, :])[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed,
                                                              torch.finfo(dtype).min)

    def fn(q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 16, generator=gen).to(dtype).requires_grad_()
               for _ in range(3))
    fast = ioaware.compile(fn)
    out = fast(q, k, v, mask)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = fn(q, k, v, mask)
    expl = fast._ioaware_backend.explanation
    assert expl.rewrites, expl
    if backend == "cuda":
        zero = torch.ones_like(ref)
        zero[0, :, :9] = 0
        ref = ref * zero  # the rows' gradient through the zeroing is 0, as on CUDA
        assert (out[0, :, :9] == 0).all()
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad),
                    torch.autograd.grad(ref, (q, k, v), grad)):
        assert relative_error(g, w, floor=0.1) <= TOLERANCE[dtype]
