"""Symbolic sizes: after dynamo recompiles a function with dynamic shapes, every
spelling is still rewritten, and the one compiled graph serves each new length."""

from __future__ import annotations

import pytest
import torch
from spellings import SPELLINGS, make

import ioaware
from ioaware.verify import TOLERANCE, relative_error


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_every_spelling_survives_dynamic_shapes(interpret, name):
    fn = make(name, True, 0.25)
    fast = ioaware.compile(fn)
    for n in (10, 20, 33):  # the second length makes dynamo trace with a symbolic N
        hkv = 2 if name == "sdpa_gqa" else 4
        q = torch.randn(2, 4, n, 16, requires_grad=True)
        k, v = (torch.randn(2, hkv, n, 16, requires_grad=True) for _ in range(2))
        out, ref = fast(q, k, v), fn(q, k, v)
        assert relative_error(out, ref) <= TOLERANCE[torch.float32]
        got = torch.autograd.grad(out.sum(), (q, k, v))
        want = torch.autograd.grad(ref.sum(), (q, k, v))
        for g, w in zip(got, want):
            assert relative_error(g, w, floor=0.1) <= TOLERANCE[torch.float32]
    expl = fast._ioaware_backend.explanation
    assert expl.graphs == 2, "one static graph, then one with a symbolic sequence length"
    assert len(expl.rewrites) == 2 and not expl.fallbacks, expl


def test_mask_offset_by_a_symbolic_size_is_not_called_causal(interpret):
    # Bottom-right aligned causal (kv_idx <= q_idx + Nk - Nq): the offset is a size, so
    # the predicate is not a function of kv_idx - q_idx alone for every length; the
    # kernel reads the sizes at runtime, and one graph serves every length.
    def bottom_right(q, k, v):
        nq, nk = q.shape[-2], k.shape[-2]
        i = torch.arange(nq)[:, None] + (nk - nq)
        j = torch.arange(nk)[None, :]
        s = (q @ k.transpose(-2, -1)).masked_fill(j > i, float("-inf"))
        return s.softmax(-1) @ v

    fast = ioaware.compile(bottom_right, dynamic=True)
    for nq, nk in ((8, 12), (5, 9)):
        q = torch.randn(1, 2, nq, 16)
        k = v = torch.randn(1, 2, nk, 16)
        torch.testing.assert_close(fast(q, k, v), bottom_right(q, k, v))
    expl = fast._ioaware_backend.explanation
    assert len(expl.rewrites) == 1 and not expl.fallbacks, expl
    assert "causal" not in expl.rewrites[0].detail["mask"]
