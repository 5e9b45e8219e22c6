"""The decode pass: attention of a few query rows against a long cache → the split-KV
decode kernels (codegen/decode/), dense or read page by page.

Runs before the attention pass and claims the attention regions of a decode shape
(1 ≤ Nq ≤ 16 and Nq < Nk at dynamo's hints, read off the SDPA call's operands or the
softmax's scores, so prefill regions are not even candidates): it matches each with the
attention pass's own matcher (masks, score mods, GQA, layouts: one matcher for both),
rewrites it as the attention pass would, then routes the call to the decode kernels
(route.py: their semantics, the packed rows, the modelled time); K and V gathered from
a paged cache through a block table are read in-kernel instead (paged.py). A region the
decode kernels do not take is left to the attention pass, with the reason. One region,
one record: explain and the report count its traffic once.
"""

from __future__ import annotations

import dataclasses

from torch import fx

from ioaware.passes.attention import match as attention_match
from ioaware.passes.attention import match_region
from ioaware.passes.attention import rewrite as attention_rewrite
from ioaware.passes.decode import paged, route
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext


@dataclasses.dataclass
class DecodeRegion:
    """An attention region (the attention pass's match) and its paged source, if any."""

    attention: object  # passes.attention.AttentionMatch
    paged: paged.PagedSource | None


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    from ioaware.codegen.decode import op  # noqa: F401  (registers torch.ops.ioaware)

    return [n for n in attention_match.candidates(gm) if route.decode_shaped(n, ctx)]


def _match(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    region = match_region(gm, node, ctx)  # the generated kernels, never an SDPA choice
    m = region.plan
    spec = attention_rewrite.spec_of(m)
    why = route.unsupported(spec)
    if why is not None:
        raise NoMatch(f"{node.name}: {why}")
    source = paged.find(m.k, m.v, ctx) if isinstance(m.k, fx.Node) else None
    after, detail, extra_before = route.price(node.name, spec, m.dims, m.dtype.itemsize,
                                              source, ctx)
    # The waves model in route.price has required the decode kernels to be no slower;
    # the region's eager side is what the attention pass would have priced, plus a
    # paged cache's gathered copies.
    return Match(plan=DecodeRegion(m, source), anchor=region.anchor,
                 before=region.before + extra_before, after=after, dtype=region.dtype,
                 detail={**_region_detail(region.detail), **detail}, always_pays=True)


def _region_detail(detail: dict) -> dict:
    """What the attention match inferred (mask, source, layout, ...), less the prefill
    tile it priced: the decode kernels' own shape is in the decode detail."""
    return {k: v for k, v in detail.items() if k != "tiles"}


def _apply(gm: fx.GraphModule, region: DecodeRegion) -> None:
    calls = {n for n in gm.graph.nodes if route.is_attention_call(n)}
    attention_rewrite.apply(gm, region.attention)
    new = [n for n in gm.graph.nodes if route.is_attention_call(n) and n not in calls]
    if len(new) != 1:  # the attention rewrite always makes exactly one call
        raise RuntimeError(f"expected one new attention call, found {len(new)}")
    route.apply(gm, route.plan_of(new[0]), region.paged)


DECODE = Pass(
    name="decode",
    why="few query rows against a long KV cache become split-KV decode kernels",
    candidates=_candidates,
    match=_match,
    apply=_apply,
)

__all__ = ["DECODE"]
