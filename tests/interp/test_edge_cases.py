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
