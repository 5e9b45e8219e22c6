"""The attention pass: exact attention written in plain PyTorch → one FlashAttention kernel.

Two entry shapes, both on the canonical ATen graph from `ioaware.capture`: a softmax
between two bmms (match.py; its score chain in score_chain.py, its operands' sources in
operands.py, its masks and biases in masks.py) and `aten.scaled_dot_product_attention`
(sdpa.py). A match is priced (pricing.py), described (describe.py) and rewritten into
one kernel call (rewrite.py); the driver decides whether it pays. GQA: K/V repeated by
expand+reshape or repeat_interleave are read at their source with Hkv heads, never the
copy.
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.passes.attention import choice, match, pricing, rewrite, sdpa
from ioaware.passes.attention.describe import detail_of
from ioaware.passes.attention.record import AttentionMatch, Source
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext
from ioaware.spec import dtype_name


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    from ioaware.codegen.attention import op as ops  # noqa: F401  (registers torch.ops.ioaware)

    return match.candidates(gm)


def match_region(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    """The region at `node` matched and priced, to run as the generated kernels (the
    decode pass matches with this too)."""
    if node.target is torch.ops.aten._softmax.default:
        m = match.match_softmax(node)
    else:
        m = sdpa.match_sdpa(node)
    rewrite.spec_of(m)  # validates head dims, dtype, scale
    rewrite.check_inputs_outside(m)
    if m.mods.general and not hasattr(torch.ops.ioaware, "attention"):
        raise NoMatch(f"{m.output.name}: needs the general ioaware::attention op, "
                      "which this build does not register")
    before, after = pricing.region_costs(m, ctx.profile)
    return Match(
        plan=m, anchor=m.output.name, before=before, after=after, dtype=dtype_name(m.dtype),
        detail={**detail_of(m), "tiles": pricing.priced_tile(m, ctx.profile)},
        # SDPA is already one fused kernel, priced the same either way (pricing.py)
        always_pays=m.source is Source.SDPA,
    )


def _match(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    """match_region, then the implementation it runs as: an SDPA backend where one is
    exact and measured faster on this device (choice.py), else the generated kernels."""
    region = match_region(gm, node, ctx)
    decided = choice.decide(gm, region.plan, ctx)
    region.plan.implementation = decided.chosen
    region.detail["implementation"] = decided.describe()
    return region


ATTENTION = Pass(
    name="attention",
    why="QKᵀ → scale → mask → softmax → PV becomes one FlashAttention kernel",
    candidates=_candidates,
    match=_match,
    apply=rewrite.apply,
)

__all__ = ["ATTENTION", "AttentionMatch", "match_region"]
