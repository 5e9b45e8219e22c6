"""The pass driver: every rewrite pass is data, and one loop runs them all.

A `Pass` names its candidates (every place its pattern might be), matches one (a
`Match`: the plan it would apply and the Costs of the region before and after, or
`NoMatch` with the reason), and applies a match. The driver owns what every pass used
to repeat: skipping candidates an earlier rewrite removed, `cost.rewrite_pays`, the
`Fallback` with its reason when a candidate does not match or would not pay, the
"internal error" fallback when a matcher has a bug (never a crash for a graph that runs
eagerly), the `Rewrite` record, logging under `ioaware.passes.<name>` and the seconds
each pass takes. Activation-checkpoint bodies are rewritten the same way.

The recipe, the ordered list of passes, is `passes/pipeline.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import fx

from ioaware import cost
from ioaware.explain import Fallback, Rewrite
from ioaware.hardware import DeviceProfile


class NoMatch(Exception):
    """A candidate region that is not rewritten; the message is the reason `explain`
    shows, starting with the node it is about."""


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What every pass may consult: the device profile it prices against, how rewritten
    kernels will run ("triton", "triton-interpret" or "reference"), and hint values for
    the graph's size symbols (dynamo's), to evaluate modelled costs."""

    profile: DeviceProfile
    backend_name: str
    hints: dict


@dataclasses.dataclass(frozen=True)
class Match:
    """A matched region, priced: what the driver weighs and what the pass applies.

    plan: the pass's own record of the region (what its `apply` takes).
    anchor: the name of the node a reason starts with ("softmax_3: rewrite would not pay").
    before / after: modelled Cost of the eager region and of the generated kernel.
    dtype: the dtype the region computes in (the peak rate its FLOPs are priced at).
    detail: what was inferred, for `explain` and the report (`Rewrite.detail`).
    always_pays: rewrite even where the model says it does not pay (an SDPA call is
        already one fused kernel, priced the same before and after: the rewrite never
        loses, and it pays in the backward and in explainability).
    backend: how the rewritten region runs, where not as the pass context's kernels
        (an SDPA backend the attention pass measured faster: "sdpa-cudnn"); None: theirs.
    """

    plan: Any
    anchor: str
    before: cost.Cost
    after: cost.Cost
    dtype: str
    detail: dict[str, Any]
    always_pays: bool = False
    backend: str | None = None


def _in_graph(gm: fx.GraphModule, candidate: Any) -> bool:
    return candidate.graph is gm.graph and candidate in gm.graph.nodes


def _node_name(candidate: Any) -> str:
    return candidate.name


@dataclasses.dataclass(frozen=True)
class Pass:
    """One rewrite, as data.

    name: the kind its rewrites and fallbacks carry ("attention", "scan"), its logger's
        last part (`ioaware.passes.<name>`) and its key in the seconds per pass.
    why: one line, what it rewrites into what.
    candidates(gm, ctx): every place the pattern might be, in graph order.
    match(gm, candidate, ctx): a priced `Match`, or raise `NoMatch` (or `ValueError`,
        from a Spec's validation) with the reason. Matching never edits the graph.
    apply(gm, plan): rewrite the region a match's `plan` describes, in place.
    alive(gm, candidate): False when an earlier rewrite removed the candidate's nodes.
    label(candidate): the node name an internal error is reported at.
    """

    name: str
    why: str
    candidates: Callable[[fx.GraphModule, PassContext], Iterable[Any]]
    match: Callable[[fx.GraphModule, Any, PassContext], Match]
    apply: Callable[[fx.GraphModule, Any], None]
    alive: Callable[[fx.GraphModule, Any], bool] = _in_graph
    label: Callable[[Any], str] = _node_name


@dataclasses.dataclass
class PassOutcome:
    """What the passes did to one graph: rewrites, fallbacks, and the wall-clock seconds
    each pass took (candidates, matching, pricing and rewriting), by pass name."""

    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    fallbacks: list[Fallback] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, other: PassOutcome) -> None:
        self.rewrites += other.rewrites
        self.fallbacks += other.fallbacks
        for name, s in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s


def _decide(p: Pass, gm: fx.GraphModule, candidate: Any, ctx: PassContext) -> Match:
    """The candidate matched and priced, or NoMatch when the rewrite would not pay."""
    m = p.match(gm, candidate, ctx)
    pays, why = cost.rewrite_pays(m.before, m.after, ctx.profile, m.dtype, ctx.hints)
    if not pays and not m.always_pays:
        raise NoMatch(f"{m.anchor}: rewrite would not pay ({why})")
    return m


def run_pass(p: Pass, gm: fx.GraphModule, ctx: PassContext) -> PassOutcome:
    """Find and rewrite every region of pass `p` in `gm` (in place); say why not the rest."""
    log = logging.getLogger(f"ioaware.passes.{p.name}")
    start = time.perf_counter()
    out = PassOutcome()
    for candidate in p.candidates(gm, ctx):
        if not p.alive(gm, candidate):
            continue  # removed by an earlier rewrite
        try:
            m = _decide(p, gm, candidate, ctx)
        except (NoMatch, ValueError) as e:
            out.fallbacks.append(Fallback(kind=p.name, reason=str(e)))
            log.debug("left: %s", e)
            continue
        except Exception as e:  # noqa: BLE001 - a bug here must not cost the user a crash
            reason = (f"{p.label(candidate)}: internal error while matching "
                      f"({type(e).__name__}: {e}); left to eager, please report")
            out.fallbacks.append(Fallback(kind=p.name, reason=reason))
            log.warning("%s", reason)
            continue
        ev_before, ev_after = m.before.evaluate(ctx.hints), m.after.evaluate(ctx.hints)
        p.apply(gm, m.plan)
        out.rewrites.append(Rewrite(
            kind=p.name, detail=m.detail,
            hbm_bytes_before=int(ev_before["hbm_bytes"]),
            hbm_bytes_after=int(ev_after["hbm_bytes"]),
            flops=int(ev_after["flops"]), flops_before=int(ev_before["flops"]),
            backend=m.backend or ctx.backend_name, cost_before=m.before, cost_after=m.after,
        ))
        log.debug("rewrote %s: %s", m.anchor, m.detail)
    out.seconds[p.name] = time.perf_counter() - start
    log.debug("%d rewritten, %d left, %.3f s", len(out.rewrites), len(out.fallbacks),
              out.seconds[p.name])
    return out


def run_passes(passes: Sequence[Pass], gm: fx.GraphModule, ctx: PassContext) -> PassOutcome:
    """Run `passes` in order on `gm` (in place); collect rewrites, fallbacks and seconds.

    The bodies of activation-checkpointed regions (`torch.utils.checkpoint`, kept as one
    higher-order op with its body as a subgraph) are rewritten the same way, so a layer
    trained with checkpointing keeps it and still gets the kernels.
    """
    from ioaware.capture import is_checkpoint

    out = PassOutcome()
    for p in passes:
        out.add(run_pass(p, gm, ctx))
    for node in gm.graph.nodes:
        if is_checkpoint(node):
            body = gm.get_submodule(node.args[0].target)
            out.add(run_passes(passes, body, ctx))
            body.recompile()
    return out
