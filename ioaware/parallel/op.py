"""Ring attention as torch custom ops, so a compiled graph can hold it (Inductor keeps
custom ops opaque; a Python call doing P2P could not be traced):

    ioaware::ring_attention(q, k, v, inputs, spec, cp_id, gather) -> (out, lse)
    ioaware::ring_attention_backward(dout, q, k, v, out, lse, inputs, spec, cp_id, gather,
                                     dlse=None) -> (dq, dk, dv, d_inputs)

spec: an AttentionSpec as JSON, or `{"plain": true, "scale": s, "causal": c}` for a
region of `ioaware::flash_attention` (head dims and dtype read off q and v per call).
cp_id: the `ContextParallel` the graph was compiled for (`context.route_to_ring`); its
group and its current layout are read per call, so one compiled graph serves every
sequence length the layout is set to. gather: pairs (input index, sequence axis) of
inputs that hold this rank's rows of a per-token tensor (a model's attention_mask,
sharded like input_ids): each is all-gathered into the global tensor the ring reads.
"""

from __future__ import annotations

import functools
import json

import torch
from torch import Tensor

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel.gather import gather_rows
from ioaware.parallel.ring import _check_shapes, routes
from ioaware.spec import dtype_name

# cp_id -> ContextParallel, filled by context.route_to_ring
ACTIVE: dict = {}


def plain_spec_json(scale: float, causal: bool) -> str:
    return json.dumps({"plain": True, "scale": float(scale), "causal": bool(causal)})


@functools.lru_cache(maxsize=256)
def _spec(text: str, head_dim: int, head_dim_v: int, dtype: torch.dtype) -> AttentionSpec:
    fields = json.loads(text)
    if fields.get("plain"):
        return AttentionSpec(head_dim=head_dim, head_dim_v=head_dim_v,
                             dtype=dtype_name(dtype), causal=fields["causal"],
                             scale=fields["scale"])
    return AttentionSpec.from_json(text)


def _context(cp_id: int, q: Tensor):
    """(the ContextParallel, the layout of this call's sequence)."""
    cp = ACTIVE[cp_id]
    return cp, cp.layout_for(q)


def _global_inputs(inputs: list[Tensor], gather: list[int], layout, group) -> list[Tensor]:
    inputs = list(inputs)
    for i, axis in zip(gather[::2], gather[1::2]):
        inputs[i] = gather_rows(inputs[i], axis, layout, group)
    return inputs


@torch.library.custom_op("ioaware::ring_attention", mutates_args=())
def ring_attention_op(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor], spec: str,
                      cp_id: int, gather: list[int]) -> tuple[Tensor, Tensor]:
    """(out, lse) of this rank's rows, over the ring of ContextParallel `cp_id`."""
    cp, layout = _context(cp_id, q)
    _check_shapes(q, k, v, layout, cp.group)
    aspec = _spec(spec, q.shape[-1], v.shape[-1], q.dtype)
    return routes(aspec)[0](aspec, q, k, v, _global_inputs(inputs, gather, layout, cp.group),
                         layout, cp.group, cp.rank, cp.world)


@ring_attention_op.register_fake
def _(q, k, v, inputs, spec, cp_id, gather):
    out = q.new_empty((*q.shape[:3], v.shape[-1]))
    return out, q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("ioaware::ring_attention_backward", mutates_args=())
def ring_attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                               lse: Tensor, inputs: list[Tensor], spec: str, cp_id: int,
                               gather: list[int], dlse: Tensor | None = None
                               ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(dq, dk, dv, gradients of the requires-grad inputs: this rank's share)."""
    cp, layout = _context(cp_id, q)
    aspec = _spec(spec, q.shape[-1], v.shape[-1], q.dtype)
    return routes(aspec)[1](aspec, dout, dlse, q, k, v, out, lse,
                          _global_inputs(inputs, gather, layout, cp.group), layout, cp.group,
                          cp.rank, cp.world)


@ring_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, inputs, spec, cp_id, gather, dlse=None):
    aspec = _spec(spec, q.shape[-1], v.shape[-1], q.dtype)
    grads = [x.new_empty(x.shape) for t, x in zip(aspec.inputs, inputs) if t.requires_grad]
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grads


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, extra, spec, cp_id, gather = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *extra)
    ctx.spec, ctx.cp_id, ctx.gather = spec, cp_id, gather
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *extra = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dgrads = torch.ops.ioaware.ring_attention_backward(
        dout, q, k, v, out, lse, list(extra), ctx.spec, ctx.cp_id, ctx.gather, dlse)
    aspec = _spec(ctx.spec, q.shape[-1], v.shape[-1], q.dtype)
    it = iter(dgrads)
    dextra = [next(it) if t.requires_grad else None for t in aspec.inputs]
    # autograd matches the arguments' structure: one None per entry of the gather list
    return dq, dk, dv, dextra, None, None, [None] * len(ctx.gather)


ring_attention_op.register_autograd(_backward, setup_context=_setup_context)
