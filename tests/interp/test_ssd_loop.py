"""Mamba-2 written as a loop, through ioaware.compile with the kernels under Triton's
interpreter: re-rolled into the chunked SSD (passes/ssd/loop.py), y, the final state and
every gradient as eager's loop, over more steps than one interpreted chunk (16)."""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.codegen.ssd import reference
from ioaware.verify import relative_error

pytestmark = pytest.mark.usefixtures("interpreted_kernels")


def loop(x, dt, A, B, C, D, dt_bias, h0):
    return reference.ssd_recurrent(x, dt, A, B, C, D, dt_bias, True, h0)


def test_rerolled_loop_outputs_and_gradients_match_eager():
    g = torch.Generator().manual_seed(1)
    batch, length, heads, groups, p, n = 1, 21, 2, 1, 4, 3
    tensors = [torch.randn(batch, length, heads, p, generator=g),
               torch.randn(batch, length, heads, generator=g) * 0.5,
               -torch.rand(heads, generator=g) - 0.1,
               torch.randn(batch, length, groups, n, generator=g),
               torch.randn(batch, length, groups, n, generator=g),
               torch.randn(heads, generator=g), torch.randn(heads, generator=g) * 0.3,
               torch.randn(batch, heads, p, n, generator=g)]
    before = ioaware.counters["ssd"]
    results = []
    for fn in (loop, ioaware.compile(loop)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        y, state = fn(*leaves)
        (y.square().mean() + state.square().mean()).backward()
        results.append([y.detach(), state.detach(), *(t.grad for t in leaves)])
    assert ioaware.counters["ssd"] - before == 1
    for got, want in zip(results[1], results[0]):
        assert relative_error(got, want, floor=1e-3) <= 1e-4
