"""Re-rolling Mamba-2 written as a loop over steps (the recurrence as its definition
reads, unrolled by dynamo) into one chunked `ioaware::ssd`:

    for t in range(L):
        S = exp(dt[:, t] · A)[..., None, None] · S + (dt[:, t, :, None] · x[:, t])[..., None] · B_t
        ys.append(contract(S, C_t))
    y = stack(ys, 1) (+ D[:, None] · x)

The chain of steps is recurrent.py's (S_t = a_t·S_(t-1) + k_t v_tᵀ). Its first step names
the SSD's operands: the decay must be exp(dt_t·A) with dt_t = dt'[:, 0] of a [Bt, L, H]
tensor dt' (itself clamp(softplus(dt + dt_bias)) or not: chunked.dt_producers) and A one
value per head; x is the [Bt, L, H, P] tensor whose step 0 the update multiplies. The
output is the first node after the steps shaped like x (the stacked ys, past a D skip;
a D skip added to every step's output is the one [H] operand left);
the final state is the last step, where something outside the loop reads it; the
initial state is what the first step decays (zeros: none). B and C are the two
remaining [Bt, L, G, N] operands (under a `repeat_interleave` to heads, as chunked.py
takes them). Which is which, and whether the region computes the SSD at all (every step
the same map of the same operands), the probe decides by evaluating it (probe.py).
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.passes.driver import NoMatch

from . import recurrent
from .chunked import (
    _CASTS,
    _CONSTANT,
    ChunkedSSD,
    _output,
    dt_producers,
    is_call,
    region,
    shape,
    strip,
)

aten = torch.ops.aten

_UNSQUEEZE = _CASTS | {aten.unsqueeze.default}
_ZEROS = {aten.new_zeros.default, aten.zeros_like.default, *_CONSTANT}
SPELLING = "a loop over steps, re-rolled"


def _steps(first: fx.Node) -> list[fx.Node]:
    """The chain of recurrence steps from `first` (as recurrent.match walks it)."""
    steps, node = [first], first
    while True:
        nexts = [w for u in node.users for w in u.users
                 if (s := recurrent._step(w)) is not None and s[1] is node]
        if len(nexts) != 1:
            return steps
        node = nexts[0]
        steps.append(node)


def _flat_factors(node: object) -> list[object]:
    """Factors of a broadcast product: nested muls through casts and unsqueezes."""
    base = strip(node, _UNSQUEEZE) if isinstance(node, fx.Node) else node
    if is_call(base, aten.mul.Tensor):
        return _flat_factors(base.args[0]) + _flat_factors(base.args[1])
    return [base]


def _sequence_of(step_value: object, index: int, length: int) -> fx.Node | None:
    """T where `step_value` is T[:, index] (a select along axis 1 of a length-L T)."""
    node = strip(step_value, _CASTS) if isinstance(step_value, fx.Node) else None
    if (is_call(node, aten.select.int) and node.args[1] == 1 and node.args[2] == index
            and (shape(node.args[0]) or (0, 0))[1] == length):
        return node.args[0]
    return None


def match(gm: fx.GraphModule, first: fx.Node) -> ChunkedSSD:
    """The loop whose first step is `first` as a chunked SSD region, or NoMatch."""
    steps = _steps(first)
    length = len(steps)
    if len(shape(first) or ()) != 4:
        raise NoMatch(f"{first.name}: the state {list(shape(first) or ())} is not "
                      f"[Bt, H, P, N]")
    batch, heads, head_dim, _ = shape(first)
    # every step decays by exp(dt'[:, t] · A): the same dt' and the same A
    found = {_decay_operands(s, t, batch, heads, length) for t, s in enumerate(steps)}
    if len(found) != 1:
        raise NoMatch(f"{first.name}: the steps decay by different dt' or A tensors; the "
                      f"SSD has one A per head for every step")
    ((dts, A),) = found
    _, prev = recurrent._step(first)
    dt, dt_bias, softplus, dt_limit, _ = dt_producers(dts)
    update = first.args[1] if first.args[0] is recurrent_decayed(first) else first.args[0]
    xs = [s for f in _flat_factors(update) if (s := _sequence_of(f, 0, length)) is not None
          and shape(s) == (batch, length, heads, head_dim)]
    if len(xs) != 1:
        raise NoMatch(f"{first.name}: the update reads no x[:, 0] of shape "
                      f"[Bt, {length}, H, P]")
    x = strip(xs[0])
    y, D = _output(gm, first, x)
    final = steps[-1]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    h0 = None if is_call(strip(prev), *_ZEROS) else strip(prev)
    known = {x, dt, A} | {n for n in (D, dt_bias, h0) if n is not None}
    nodes, leaves = region(gm, [y] if y is not None else [final], known,
                           inputs_are_leaves=True)
    outside = [u for u in final.users if u not in nodes]
    if y is not None and outside:  # the final state is an output too
        early = [u for u in outside if order[u] < order[y]]
        if early:
            raise NoMatch(f"{early[0].name}: reads the loop's final state before its output")
    elif y is not None:
        final = None
    bc = [n for n in leaves if n not in known]
    per_head = [n for n in bc if shape(n) == (heads,)]
    if D is None and len(per_head) == 1:  # the D skip added to each step's output
        D = per_head[0]
        bc.remove(D)
    if y is None and len(bc) == 1:
        bc = bc * 2
    if len(bc) != 2 or any(shape(n) is None or len(shape(n)) != 4
                           or shape(n)[:2] != (batch, length) or heads % shape(n)[2]
                           for n in bc):
        raise NoMatch(f"{first.name}: the loop reads {[n.name for n in bc]} besides x, dt, "
                      f"A, D, dt_bias, h0; expected B and C [Bt, L, G, N]")
    return ChunkedSSD(first, x, dt, A, bc[0], bc[1], D, dt_bias, softplus,
                      dt_limit, h0, y, final, 1, nodes, spelling=SPELLING)


def _decay_operands(step: fx.Node, t: int, batch: int, heads: int, length: int
                    ) -> tuple[fx.Node, fx.Node]:
    """(dt', A) when step t decays by exp(dt'[:, t] · A), dt' [Bt, L, H], A [H]."""
    exp = strip(recurrent._step(step)[0], _UNSQUEEZE)
    if not is_call(exp, aten.exp.default):
        raise NoMatch(f"{step.name}: the decay is not exp(dt·A)")
    factors = _flat_factors(exp.args[0])
    dt_t = [f for f in factors if shape(f) == (batch, heads)]
    A = [f for f in factors if shape(f) == (heads,)]
    if len(factors) != 2 or len(dt_t) != 1 or len(A) != 1:
        raise NoMatch(f"{exp.name}: the decay is not exp(dt_t·A) with dt_t [Bt, H] and A "
                      f"one value per head")
    dts = _sequence_of(dt_t[0], t, length)
    if dts is None:
        raise NoMatch(f"{dt_t[0].name}: step {t}'s dt is not dt[:, {t}] of a "
                      f"[Bt, {length}, H] tensor")
    return dts, strip(A[0])


def recurrent_decayed(step: fx.Node) -> fx.Node:
    """The a_t · S_(t-1) operand of a step."""
    decay, prev = recurrent._step(step)
    for a in step.args[:2]:
        if is_call(a, aten.mul.Tensor) and prev in a.args[:2] and decay in a.args[:2]:
            return a
    raise NoMatch(f"{step.name}: no decayed state among its operands")
