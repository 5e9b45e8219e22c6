"""The scan pass: first-order diagonal linear recurrences → one fused scan kernel.

The recurrence is h_t = a_t ⊙ h_{t-1} + b_t along a time axis, h_{-1} = h0 or 0. Three
spellings reach the canonical ATen graph from `ioaware.capture`:

1. A Python loop that dynamo unrolled: L steps `add(mul(a_t, h_{t-1}), b_t)` with a_t,
   b_t per-step slices `select(a, dim, t)` (or `slice(a, dim, t, t+1)`), often followed
   by a per-step readout (Mamba: `matmul(h_t, C_t[..., None])`) collected by `stack`.
   Re-rolled in time linear in the number of nodes: each step is checked against the
   form above with its step index, each readout is hashed relative to its step index
   and compared with its neighbour's. Steps that differ (another slice, another op, an
   intermediate used elsewhere) leave the loop as it was, with the step that differs.
2. `associative_scan(combine, (a, b), dim)`: in "pointwise" mode the higher-order op,
   whose combine subgraph must be (a1, b1), (a2, b2) → (a1·a2, a2·b1 + b2); in "generic"
   mode the odd-even tree that dynamo inlines (capture flattens its vmaps). The tree is
   checked by abstract interpretation: every row of every tensor in it is tracked as
   the interval [lo, hi] of time steps it combines, and the output must hold [0, t] in
   row t. Any tree of slices, cats, pads and interleaves that computes the scan passes;
   anything else (a non-associative combine, a missing step) does not.
3. The closed form h = P · cumsum(b / P, dim) with P = exp(cumsum(log a)) (or log a given
   directly) or cumprod(a): the same recurrence from h = 0, without its division.

The files: candidate.py (where a recurrence might be, and the dispatch to its matcher),
spellings.py (loops, associative_scan, closed forms), record.py (the match record and
guards), plan.py (selective or linear, with readout.py for the readout with C and
fusion.py for the selective scan's producers and epilogue), pricing.py (the eager
region's cost) and rewrite.py (the graph edits); the driver decides whether it pays.
"""

from __future__ import annotations

from torch import fx

from ioaware.passes.driver import Match, Pass, PassContext
from ioaware.passes.scan import candidate, rewrite
from ioaware.passes.scan.plan import plan_rewrite
from ioaware.passes.scan.pricing import region_cost


def _candidates(gm: fx.GraphModule, ctx: PassContext) -> list[candidate.ScanCandidate]:
    return candidate.candidates(gm)


def _match(gm: fx.GraphModule, cand: candidate.ScanCandidate, ctx: PassContext) -> Match:
    rec = candidate.match_candidate(gm, cand)
    plan = plan_rewrite(rec, cand.order, ctx.profile)
    return Match(plan=plan, anchor=rec.anchor.name, before=region_cost(plan.nodes),
                 after=plan.after, dtype=plan.detail["dtype"], detail=plan.detail)


SCAN = Pass(
    name="scan",
    why="h_t = a_t·h_(t-1) + b_t (loops, associative_scan) becomes one fused scan kernel",
    candidates=_candidates,
    match=_match,
    apply=rewrite.apply,
    alive=candidate.alive,
    label=lambda cand: cand.anchor.name,
)

__all__ = ["SCAN"]
