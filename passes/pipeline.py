"""The pass recipe: a straight list of named steps, each with the reason it is there."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import fx

from ioaware.explain import Fallback, Rewrite
from ioaware.passes.attention import match as attention
from ioaware.passes.scan import rewrite as scan


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What every pass may consult: the device profile it prices against, how rewritten
    kernels will run ("triton", "triton-interpret" or "reference"), and hint values for
    the graph's size symbols."""

    profile: Any
    backend_name: str
    hints: dict


@dataclasses.dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[fx.GraphModule, PassContext], tuple[list[Rewrite], list[Fallback]]]
    why: str


PIPELINE: list[Pass] = [
    # Exact attention: the N×N scores and probabilities never reach HBM.
    Pass(
        "attention",
        lambda gm, ctx: attention.run(gm, ctx.profile, ctx.backend_name, ctx.hints),
        "QKᵀ → scale → mask → softmax → PV becomes one FlashAttention kernel",
    ),
    # Linear recurrences: the (B, D, L, N) states and their producers never reach HBM.
    Pass(
        "scan",
        lambda gm, ctx: scan.run(gm, ctx.profile, ctx.backend_name, ctx.hints),
        "h_t = a_t·h_(t-1) + b_t (loops, associative_scan) becomes one fused scan kernel",
    ),
]


def run_pipeline(gm: fx.GraphModule, ctx: PassContext) -> tuple[list[Rewrite], list[Fallback]]:
    """Run every pass in order on `gm` (in place); collect rewrites and fallbacks.

    The bodies of activation-checkpointed regions (`torch.utils.checkpoint`, kept as one
    higher-order op with its body as a subgraph) are rewritten the same way, so a layer
    trained with checkpointing keeps it and still gets the kernels.
    """
    from ioaware.capture import is_checkpoint

    rewrites: list[Rewrite] = []
    fallbacks: list[Fallback] = []
    for p in PIPELINE:
        r, f = p.run(gm, ctx)
        rewrites += r
        fallbacks += f
    for node in gm.graph.nodes:
        if is_checkpoint(node):
            body = gm.get_submodule(node.args[0].target)
            r, f = run_pipeline(body, ctx)
            body.recompile()
            rewrites += r
            fallbacks += f
    return rewrites, fallbacks
