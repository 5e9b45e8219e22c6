"""The decode pass: attention calls of a few query rows against a long cache → the
split-KV decode kernels (codegen/decode/), dense or read page by page.

Runs after the attention pass, on its output: each `ioaware::flash_attention` /
`ioaware::attention` call of a decode shape is a candidate (a few query rows against a
longer cache, at the hints; prefill calls are not candidates, so explain lists no
fallback for them), and route.py decides whether the decode kernels take it (their
semantics, the packed rows, the modelled time); a call whose K and V are gathered
from a paged cache through a block table reads the pages in-kernel instead (paged.py).
"""

from __future__ import annotations

from torch import fx

from ioaware.passes.decode import paged, route
from ioaware.passes.driver import Match, Pass, PassContext


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    return [n for n in gm.graph.nodes
            if route.is_attention_call(n) and route.decode_shaped(n, ctx)]


def _match(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    plan = route.plan_of(node)
    plan.paged = paged.find(plan, ctx)
    before, after, detail = route.price(plan, ctx)
    # The roofline prices both kernels alike (the same bytes); the waves model in
    # route.price has already required the decode kernels to be faster.
    return Match(plan=plan, anchor=node.name, before=before, after=after,
                 dtype=plan.spec.dtype, detail=detail, always_pays=True)


DECODE = Pass(
    name="decode",
    why="few query rows against a long KV cache become split-KV decode kernels",
    candidates=_candidates,
    match=_match,
    apply=route.apply,
)

__all__ = ["DECODE"]
