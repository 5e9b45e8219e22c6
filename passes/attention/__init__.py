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

import dataclasses

import torch
from torch import fx

from ioaware.hardware import DeviceProfile
from ioaware.passes.attention import choice, fp8, match, pricing, rewrite, sdpa
from ioaware.passes.attention.describe import (
    detail_of,
    gluon_backward_status,
    gluon_forward_status,
)
from ioaware.passes.attention.record import AttentionMatch, Source
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext
from ioaware.spec import dtype_name


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    from ioaware.codegen.attention import op as ops  # noqa: F401  (registers torch.ops.ioaware)

    return match.candidates(gm)


def _find(node: fx.Node) -> AttentionMatch:
    """The attention region at `node` (NoMatch when it is not one)."""
    if node.target is torch.ops.aten._softmax.default:
        m = match.match_softmax(node)
    else:
        m = sdpa.match_sdpa(node)
    rewrite.check_inputs_outside(m)
    fp8.take(m)  # FP8 operands dequantized just before: read at their source
    if (m.mods.general or m.fp8) and not hasattr(torch.ops.ioaware, "attention"):
        raise NoMatch(f"{m.output.name}: needs the general ioaware::attention op, "
                      "which this build does not register")
    return m


def _priced(m: AttentionMatch, profile: DeviceProfile | None) -> Match:
    """The Match of `m`, its kernel priced at the best tile on `profile` (None: the
    family's default tile)."""
    before, after = pricing.region_costs(m, profile)
    return Match(
        plan=m, anchor=m.output.name, before=before, after=after, dtype=dtype_name(m.dtype),
        detail={**detail_of(m), "tiles": pricing.priced_tile(m, profile)},
        # SDPA is already one fused kernel, priced the same either way (pricing.py)
        always_pays=m.source is Source.SDPA,
    )


def match_region(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    """The region at `node` matched and priced, to run as the generated kernels (the
    decode pass matches with this too); ValueError when its Spec is not one they take."""
    m = _find(node)
    rewrite.spec_of(m)  # validates head dims, dtype, scale
    return _priced(m, ctx.profile)


def _match(gm: fx.GraphModule, node: fx.Node, ctx: PassContext) -> Match:
    """The region and the implementation it runs as: an SDPA backend where one is exact
    and measured faster on this device (choice.py), else the generated kernels. Where
    the generated kernels cannot serve it (a head dim above 256, shared memory no tile
    fits), an SDPA backend if one is exact and runs, else the region stays eager."""
    m = _find(node)
    unfit = choice.generated_cannot(m, ctx.profile)
    decided = choice.decide(gm, m, ctx, without_generated=unfit)
    if unfit is not None and decided.chosen == choice.GENERATED:
        raise NoMatch(f"{m.output.name}: the generated kernels cannot run it ({unfit}); "
                      f"no SDPA backend instead: {decided.describe()}; left to eager")
    region = _priced(m, None if unfit else ctx.profile)
    m.implementation = decided.chosen
    region.detail["implementation"] = decided.describe()
    gluon = gluon_forward_status(m, ctx.backend_name)
    if gluon is not None:
        region.detail["gluon_forward"] = gluon
        region.detail["gluon_backward"] = gluon_backward_status(m, ctx.backend_name)
    if decided.chosen != choice.GENERATED:
        region = dataclasses.replace(region, backend=f"sdpa-{decided.chosen}")
    return region


ATTENTION = Pass(
    name="attention",
    why="QKᵀ → scale → mask → softmax → PV becomes one FlashAttention kernel",
    candidates=_candidates,
    match=_match,
    apply=rewrite.apply,
)

__all__ = ["ATTENTION", "AttentionMatch", "match_region"]
