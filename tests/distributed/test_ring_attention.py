"""Ring attention (ioaware/parallel/ring.py) over gloo at world sizes 2 and 4, kernels
under the interpreter, against single-process float64 eager: outputs and the gradients
of q, k, v and of a learned bias, for causal, window, document, padding, ALiBi and bias
masks, at a length that no world size divides (29). One spawned group per world size
runs every case (process start-up dominates).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
from dist_util import run_group
from ring_cases import assert_close, cases, eager_grads, problem

from ioaware.parallel import contiguous_layout, zigzag_layout
from ioaware.parallel.ring import ring_attention, ring_plan

SEQ = 29


def _ring_matches_eager(rank: int, world: int) -> None:
    all_cases = cases(SEQ)
    # causal on a contiguous layout too: shards travel only as far as the mask needs them
    all_cases.append(dataclasses.replace(all_cases[0], name="causal-contiguous",
                                         layout="contiguous"))
    for case in all_cases:
        layout = case.make_layout(world)
        q, k, v, dout = problem(case, seed=7)
        want = eager_grads(case, q, k, v, dout)
        local = [layout.shard(x, rank, dim=2).requires_grad_(True) for x in (q, k, v)]
        inputs = [case.tensors[t.name].clone().requires_grad_(t.requires_grad)
                  for t in case.spec.inputs]
        out = ring_attention(*local, case.spec, inputs, layout=layout)
        (out * layout.shard(dout, rank, dim=2)).sum().backward()
        try:
            assert_close("out", out, layout.shard(want["out"], rank, dim=2))
            for name, x in zip("qkv", local):
                assert_close(f"d{name}", x.grad, layout.shard(want[name], rank, dim=2))
            for t, x in zip(case.spec.inputs, inputs):
                if t.requires_grad:  # each rank's share; their sum is the gradient
                    dist.all_reduce(x.grad)
                    assert_close(f"d{t.name}", x.grad, want[t.name])
        except AssertionError as e:
            raise AssertionError(f"{case.name}, rank {rank} of {world}: {e}") from None
    # the plan: with causal on contiguous shards, shard r goes to ranks r+1 .. W-1 only
    _, last_hop = ring_plan(all_cases[0].spec, contiguous_layout(SEQ, world))
    assert last_hop == tuple(world - 1 - r for r in range(world))
    _, last_hop = ring_plan(all_cases[0].spec, zigzag_layout(SEQ, world))
    assert last_hop == (world - 1,) * world


def _bad_input_raises_everywhere(rank: int, world: int) -> None:
    case = cases(SEQ)[0]
    layout = zigzag_layout(SEQ, world)
    q, k, v, _ = problem(case, seed=1)
    local = [layout.shard(x, rank, dim=2) for x in (q, k, v)]
    if rank == 1:  # one rank's shard is a row short
        local[0] = local[0][:, :, 1:]
    with pytest.raises(ValueError, match=r"q.shape\[2\]=\d+ on rank 1"):
        ring_attention(*local, case.spec, layout=layout)
    with pytest.raises(ValueError, match="layout has"):
        ring_attention(*local, case.spec, layout=zigzag_layout(SEQ, world + 1))
    dropout = dataclasses.replace(case.spec, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        ring_attention(*local, dropout, layout=layout)
    # the group is still usable: nobody is left inside a ring the others refused
    local = [layout.shard(x, rank, dim=2) for x in (q, k, v)]
    out = ring_attention(*local, case.spec, layout=layout)
    assert torch.isfinite(out).all()


def _all(rank: int, world: int) -> None:
    _bad_input_raises_everywhere(rank, world)
    _ring_matches_eager(rank, world)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_eager(world, tmp_path):
    run_group(_all, world, tmp_path)
