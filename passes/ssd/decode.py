"""Recognising Mamba-2's single-step state update (the L = 1 decode step transformers
runs as `mamba2_selective_state_update` when a cache holds the state), so that `explain`
names every mixer of a decode graph: the step is left as written, with the reason.

What the canonical graph holds per mixer and step:

    S' = S · exp(dt·A) + (dt·B) · x      add(mul(S, exp(·)), mul(·)), [Bt, H, P, N]
    S.copy_(S');  y = bmm(S', C) + D·x

A fused step would be one kernel (read S, x, B, C; write S', y) and is not built yet;
rewriting it to `ioaware::ssd` at L = 1 would run a whole padded chunk per step.
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.passes.driver import NoMatch

from .chunked import is_call, shape

aten = torch.ops.aten


def candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """4-D adds S·exp(·) + (·) whose result is copied into a state: decode steps."""
    out = []
    for n in gm.graph.nodes:
        if not is_call(n, aten.add.Tensor) or len(shape(n) or ()) != 4:
            continue
        decays = [a for a in n.args[:2] if is_call(a, aten.mul.Tensor)
                  and any(is_call(b, aten.exp.default) for b in a.args[:2])]
        copied = any(is_call(u, aten.copy_.default) for u in n.users)
        if decays and copied:
            out.append(n)
    return out


def match(gm: fx.GraphModule, anchor: fx.Node):
    batch, heads, head_dim, d_state = shape(anchor)
    raise NoMatch(f"{anchor.name}: Mamba-2 decode step (L = 1 state update "
                  f"S = exp(dt·A)·S + dt·x Bᵀ, state [{batch}, {heads}, {head_dim}, "
                  f"{d_state}] copied back to the cache) left as written: the fused "
                  f"single-step kernel is not built yet")
