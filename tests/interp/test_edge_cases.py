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
    from ioaware.codegen import ops

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
