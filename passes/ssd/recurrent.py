"""Recognising the plain recurrent spelling of a matrix-state linear recurrence (a Python
loop over steps that dynamo unrolled), so that `explain` names it:

    S_t = a_t · S_{t-1} + k_t v_tᵀ        add(mul(a_t, S_{t-1}), mul(k_t[..., :, None], v_t[..., None, :]))

Gated linear attention, RetNet's retention and Mamba-2 written as a loop all take this
form. Mamba-2's own (a_t = exp(dt_t·A), the update dt_t·x_t B_tᵀ) is re-rolled into
`ioaware::ssd` by loop.py; any other is left as written and the first step of each chain
says so, with the decay's kind (scalar per head, or per state row: the latter is not the
SSD) and why loop.py did not take it.
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.passes.driver import NoMatch

from .chunked import is_call, shape

aten = torch.ops.aten


def _outer(node: object) -> bool:
    """mul of a [..., n, 1] and a [..., 1, m] operand: an outer product k vᵀ."""
    if not is_call(node, aten.mul.Tensor) or not all(shape(a) for a in node.args[:2]):
        return False
    a, b = (shape(x) for x in node.args[:2])
    if len(a) < 2 or len(b) < 2:
        return False
    return (a[-1] == 1 and b[-2] == 1) or (a[-2] == 1 and b[-1] == 1)


def _step(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(decay, previous state) when `node` is one step of the recurrence."""
    if not is_call(node, aten.add.Tensor) or len(shape(node) or ()) < 3:
        return None
    for decayed, update in (node.args[:2], node.args[1::-1]):
        if _outer(update) and is_call(decayed, aten.mul.Tensor):
            for decay, prev in (decayed.args[:2], decayed.args[1::-1]):
                if isinstance(prev, fx.Node) and shape(prev) == shape(node):
                    return decay, prev
    return None


def candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """The first step of every chain of steps (its previous state is not a step)."""
    return [n for n in gm.graph.nodes if (s := _step(n)) is not None and _step(s[1]) is None]


def match(gm: fx.GraphModule, first: fx.Node, why_not_ssd: str = ""):
    steps, node = 1, first
    while True:
        nexts = [w for u in node.users for w in u.users  # state -> a·state -> step
                 if (s := _step(w)) is not None and s[1] is node]
        if len(nexts) != 1:
            break
        node, steps = nexts[0], steps + 1
    decay = shape(_step(first)[0]) or ()
    kind = ("a scalar decay per (batch, head): the SSD's structure"
            if len(decay) >= 2 and decay[-1] == decay[-2] == 1
            else f"a decay of shape {list(decay)} per state element: not a scalar decay, "
                 f"not the SSD")
    raise NoMatch(f"{first.name}: a loop of {steps} steps of a matrix-state linear "
                  f"recurrence S_t = a_t·S_(t-1) + k_t v_tᵀ ({kind}) left as written: "
                  f"only Mamba-2's form (a_t = exp(dt_t·A), k_t v_tᵀ = dt_t·x_t B_tᵀ) is "
                  f"re-rolled into ioaware::ssd" + (f"; here {why_not_ssd}" if why_not_ssd
                                                    else ""))
