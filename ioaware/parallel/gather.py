"""All-gather attention: the context-parallel route for Specs the ring cannot split.

    out, lse = gather_forward(spec, q, k, v, inputs, layout, group, rank, world)

The ring merges partial results over disjoint key sets by their log-sum-exp, which is
exact only when a masked key contributes nothing (`shard.ring_refusal`: a mask whose
masked logits are filled with a mild value, `masked_fill(-1e3)`, keeps them in every
row's softmax). Such a Spec is computed instead from the whole K/V: every rank
all-gathers K and V (`gather_rows`), then runs each of its query chunks against all
S keys in one kernel call, with the Spec's positions made global by

    q_idx -> q_idx + cp_q0[0]          (kv_idx is already global: the keys are all here)

and causal folded into the mask (`kv_idx <= q_idx + cp_q0[0]`); the mask semantics and
fill stay as they are, so the kernels give eager's answer row for row, fully masked rows
included. Backward: K/V are gathered again, each chunk's kernels give dQ and this rank's
queries' share of dK, dV over all S keys; an all_reduce sums the shares and each rank
keeps its own rows (a reduce_scatter would move half as much; gloo has none over
unequal pieces).

Cost, per rank, n = S/W rows: (W-1)·B·Hkv·n·(d+dv) elements received forward (as a
full ring), the same again backward plus an all_reduce of B·Hkv·S·(d+dv) fp32, and
memory for the whole K/V (and their fp32 gradients) at once: W times a shard's. No
overlap of transfer and compute. It is the fallback, named in `explain`.
"""

from __future__ import annotations

import dataclasses
import functools

import sympy
import torch
import torch.distributed as dist
from torch import Tensor

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel.layout import ShardLayout
from ioaware.parallel.shard import Q_OFFSET, check_context_parallel, global_mask
from ioaware.spec import Q_IDX, TensorInput


def gather_rows(x: Tensor, axis: int, layout: ShardLayout, group) -> Tensor:
    """The global tensor of which every rank holds its rows `x` along `axis` (as
    `layout.shard` cut them): one all_gather, shards padded to the longest."""
    n_max = max(layout.length(r) for r in range(layout.world))
    wire = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo sends no bool
    shape = list(x.shape)
    shape[axis] = n_max
    buf = wire.new_zeros(shape)
    buf.narrow(axis, 0, x.shape[axis]).copy_(wire)
    parts = [torch.empty_like(buf) for _ in range(layout.world)]
    dist.all_gather(parts, buf, group=group)
    rows = [p.narrow(axis, 0, layout.length(r)) for r, p in enumerate(parts)]
    return layout.unshard(rows, dim=axis).to(x.dtype)


@functools.lru_cache(maxsize=256)
def _gather_json(spec: AttentionSpec) -> str:
    """`spec` with query positions shifted by cp_q0[0] and causal in the mask, as JSON."""
    check_context_parallel(spec)
    shift = {Q_IDX: Q_IDX + sympy.IndexedBase(Q_OFFSET)[0]}
    mask, mod = global_mask(spec), spec.score_mod_expr()
    return dataclasses.replace(
        spec, causal=False,
        mask=None if mask is None else str(mask.xreplace(shift)),
        score_mod=None if mod is None else str(mod.xreplace(shift)),
        inputs=(*spec.inputs, TensorInput(Q_OFFSET, 1, "int64"))).to_json()


def _offset(start: int, device: torch.device) -> Tensor:
    return torch.full((1,), start, dtype=torch.int64, device=device)


def gather_forward(spec, q, k, v, inputs, layout, group, rank, world):
    """(out, lse) of this rank's rows from the gathered K/V (the module docstring)."""
    k_all, v_all = gather_rows(k, 2, layout, group), gather_rows(v, 2, layout, group)
    out = q.new_empty((*q.shape[:3], v.shape[3]))
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    with torch.no_grad():
        for ql, qg, nq in layout.local_chunks(rank):
            rows = slice(ql, ql + nq)
            o, lse_rows = torch.ops.ioaware.attention(
                q[:, :, rows], k_all, v_all, [*inputs, _offset(qg, q.device)],
                _gather_json(spec), None)
            out[:, :, rows] = o
            lse[:, :, rows] = lse_rows
    return out, lse


def gather_backward(spec, dout, dlse, q, k, v, out, lse, inputs, layout, group, rank,
                    world):
    """(dq, dk, dv, this rank's share of the learned inputs' gradients)."""
    k_all, v_all = gather_rows(k, 2, layout, group), gather_rows(v, 2, layout, group)
    f32 = torch.float32
    dq = torch.zeros(q.shape, dtype=f32, device=q.device)
    dk_all = torch.zeros(k_all.shape, dtype=f32, device=k.device)
    dv_all = torch.zeros(v_all.shape, dtype=f32, device=v.device)
    grad_inputs = [x for t, x in zip(spec.inputs, inputs) if t.requires_grad]
    dinputs = [torch.zeros(x.shape, dtype=f32, device=x.device) for x in grad_inputs]
    with torch.no_grad():
        for ql, qg, nq in layout.local_chunks(rank):
            rows = slice(ql, ql + nq)
            g = torch.ops.ioaware.attention_backward(
                dout[:, :, rows], q[:, :, rows], k_all, v_all, out[:, :, rows],
                lse[:, :, rows], [*inputs, _offset(qg, q.device)], _gather_json(spec), None,
                None if dlse is None else dlse[:, :, rows])
            dq[:, :, rows] = g[0].float()
            dk_all += g[1].float()
            dv_all += g[2].float()
            for acc, d in zip(dinputs, g[3]):
                acc += d.float()
    dist.all_reduce(dk_all, group=group)
    dist.all_reduce(dv_all, group=group)
    dk, dv = layout.shard(dk_all, rank, dim=2), layout.shard(dv_all, rank, dim=2)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            [d.to(x.dtype) for d, x in zip(dinputs, grad_inputs)])
