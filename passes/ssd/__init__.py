"""The SSD pass: Mamba-2's chunked state-space dual, written in PyTorch, becomes one
`ioaware::ssd` call (codegen/ssd/: chunked Triton kernels on tensor cores).

    chunked.py  the chunked spelling (transformers' mamba2_chunk_scan / torch_forward,
                shared by Mamba-2, Bamba, Zamba2, Falcon-H1, Nemotron-H, Granite 4):
                the anchor (cumsum of dt·A in chunks) and the region's operands
    probe.py    the region evaluated on random operands against the SSD reference
    decode.py   the L = 1 decode step (a cache holds the state) -> `ioaware::ssd_step`,
                in place on the cache's state: its own pass, SSD_DECODE
    loop.py     Mamba-2 as a loop over steps (unrolled by dynamo), re-rolled into the same op
    recurrent.py  loops of S_t = a_t·S_(t-1) + k_t v_tᵀ (GLA, retention) that are not,
                named with their decay's structure (left eager)

Fused into the op where present: dt's bias, softplus and clamp (time_step_limit), the D
skip, the initial state h0 and the final state. What stays eager, with the reason in
`explain`: a region whose intermediates are read elsewhere, one that does not compute
the SSD on random operands, sizes the kernels do not take.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from ioaware import cost
from ioaware.codegen.ssd import op as ssd_ops
from ioaware.codegen.ssd.price import ssd_cost
from ioaware.codegen.ssd.tiles import choose_chunk
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext
from ioaware.passes.ssd import chunked, decode, loop, probe, recurrent
from ioaware.spec import dtype_name

aten = torch.ops.aten


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    steps = set(decode.candidates(gm))  # decode steps are SSD_DECODE's, rewritten or not
    return chunked.candidates(gm) + [n for n in recurrent.candidates(gm) if n not in steps]


def _check_private(region: chunked.ChunkedSSD) -> None:
    """Every intermediate is read only inside the region (the outputs aside), dead
    readers aside."""
    inside, memo = set(region.nodes), {}
    for n in region.nodes:
        if n in (region.y, region.final) or chunked.val(n) is None:  # (size arithmetic)
            continue
        outside = [u for u in n.users if u not in inside and chunked.live(u, memo)]
        if outside:
            raise NoMatch(f"{n.name}: an intermediate of the SSD region is also read by "
                          f"{outside[0].name}")


def _match(gm: fx.GraphModule, anchor: fx.Node, ctx: PassContext) -> Match:
    if chunked.is_call(anchor, aten.add.Tensor):  # a loop: re-rolled, or why not
        try:
            region = loop.match(gm, anchor)
        except NoMatch as e:
            recurrent.match(gm, anchor, str(e))  # raises, with both reasons
    else:
        region = chunked.match(gm, anchor)
    _check_private(region)
    region = probe.verify(region)
    x, B = chunked.val(region.x), chunked.val(region.B)
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    # the Spec the op will build: validates head_dim and d_state (ValueError -> fallback)
    ssd_ops.ssd_spec(x, chunked.val(region.dt), B, region.D, region.dt_bias,
                     region.dt_softplus, region.h0, *region.dt_limit)
    chunk = choose_chunk(ctx.profile, head_dim, d_state, x.dtype.itemsize,
                         max(1, heads // groups))
    before = sum((c for c in map(cost.node_cost, region.nodes) if c is not None),
                 cost.Cost.zero())
    after = ssd_cost(batch, length, heads, head_dim, d_state, groups, x.dtype.itemsize,
                     chunk=chunk, has_h0=region.h0 is not None)
    fused = [name for name, present in (("dt_bias", region.dt_bias is not None),
                                        ("softplus", region.dt_softplus),
                                        ("dt_clamp", region.dt_limit != (-math.inf, math.inf)),
                                        ("D", region.D is not None),
                                        ("h0", region.h0 is not None),
                                        ("final_state", region.final is not None))
             if present]
    detail = {"spelling": region.spelling, "source_chunk": region.chunk,
              "chunk": chunk, "heads": heads, "groups": groups, "head_dim": head_dim,
              "d_state": d_state, "fused": fused, "dtype": dtype_name(x.dtype)}
    return Match(plan=region, anchor=anchor.name, before=before, after=after,
                 dtype=dtype_name(x.dtype), detail=detail)


def _apply(gm: fx.GraphModule, region: chunked.ChunkedSSD) -> None:
    g = gm.graph
    order = {n: i for i, n in enumerate(g.nodes)}
    last = max((n for n in (region.y, region.final) if n is not None), key=order.get)
    with g.inserting_after(last):
        call = g.call_function(torch.ops.ioaware.ssd.default, (
            region.x, region.dt, region.A, region.B, region.C, region.D, region.dt_bias,
            region.dt_softplus, region.h0, *region.dt_limit))
    after = call
    for index, old in enumerate((region.y, region.final)):
        if old is not None:  # output `index` of the op, in the dtype the region gave
            with g.inserting_after(after):
                item = g.call_function(operator.getitem, (call, index))
            with g.inserting_after(item):
                after = g.call_function(aten._to_copy.default, (item,),
                                        {"dtype": chunked.val(old).dtype})
            old.replace_all_uses_with(after)
    for n in reversed(region.nodes):
        if not n.users:
            g.erase_node(n)
    g.lint()


SSD = Pass(
    name="ssd",
    why="Mamba-2's chunked SSD (segment_sum, einsum chain) becomes one chunked SSD kernel",
    candidates=_candidates,
    match=_match,
    apply=_apply,
)

SSD_DECODE = decode.SSD_DECODE

__all__ = ["SSD", "SSD_DECODE"]
