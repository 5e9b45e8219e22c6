"""Matching the per-step readout of a recurrence: y_t = Σ_n C_t[n]·h_t[n] however it
is spelled (matmul, einsum, multiply-and-sum), checked on random probes of the state.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware.passes.driver import NoMatch
from ioaware.passes.scan.order import NodeOrder
from ioaware.passes.scan.record import (
    CAST_OPS,
    Readout,
    Recurrence,
    aten,
    dtype_of,
    fake_value,
    is_call,
    is_tensor,
    time_slice,
)
from ioaware.passes.views import LAYOUT_OPS, hinted_shape

# The readout probe: relative error below which the readout is the contraction with C.
# Half-precision casts in the readout (h.to(bf16)) cost ~1e-2; a different contraction
# costs O(1).
PROBE_TOLERANCE = 5e-2

# Readouts already probed, by structure (see _probe_key): a model's layers repeat one
# readout, and each probe runs it on a whole random [B, D, L, N] state (~0.3 s per layer
# at D=512, L=2048 on a CPU), so the layers after the first reuse the first's answer.
_PROBED: dict[tuple, tuple[str, str]] = {}


# ---------------------------------------------------------------------------------------
# matching: the per-step readout of a loop


def _step_closure(h: fx.Node, skip: set[fx.Node], stop: fx.Node | None
                  ) -> tuple[list[fx.Node], fx.Node | None]:
    """Nodes reached forward from state h (not through `skip`) up to the collector."""
    seen, frontier, collector = [], [h], None
    inside = {h}
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u in skip or u in inside or u.op != "call_function":
                continue
            if is_call(u, aten.stack.default):
                collector = u
                continue
            if stop is not None and u is stop:
                continue
            inside.add(u)
            seen.append(u)
            frontier.append(u)
            if len(seen) > 64:
                raise NoMatch(f"{h.name}: the per-step readout is larger than 64 nodes")
    return seen, collector


def _reaching(nodes: list[fx.Node], target: fx.Node, order: NodeOrder) -> list[fx.Node]:
    """The nodes of `nodes` from which `target` is reached through users in `nodes`."""
    inside, reach = set(nodes), set()
    for n in sorted(nodes, key=order, reverse=True):
        if any(u is target or u in reach for u in n.users if u is target or u in inside):
            reach.add(n)
    return [n for n in nodes if n in reach]


def _side_inputs(nodes: list[fx.Node], h: fx.Node, leaf: Any = None
                 ) -> tuple[list[fx.Node], list[fx.Node]]:
    """Side inputs of a readout: view chains back to a time slice (or, with `leaf`, to
    any node), used only by the readout. Returns (side nodes, leaves)."""
    inside = set(nodes) | {h}
    side, leaves, frontier = [], [], [n for n in nodes]
    while frontier:
        n = frontier.pop()
        for x in n.all_input_nodes:
            if x in inside:
                continue
            if leaf is not None and not (is_call(x, *LAYOUT_OPS, *CAST_OPS)
                                         and all(u in inside for u in x.users)):
                leaves.append(x)
                inside.add(x)
            elif time_slice(x) is not None and all(u in inside for u in x.users):
                leaves.append(x)
                inside.add(x)
                side.append(x)
            elif is_call(x, *LAYOUT_OPS, *CAST_OPS) and all(u in inside for u in x.users):
                inside.add(x)
                side.append(x)
                frontier.append(x)
    return side, leaves


def _signature(nodes: list[fx.Node], h: fx.Node, t: int, order: NodeOrder) -> tuple:
    """The readout's structure with its state as "h", its own nodes by position and the
    time indices of its slices relative to step index t."""
    ordered = sorted(nodes, key=order)
    local = {n: i for i, n in enumerate(ordered)}

    def norm(x: Any) -> Any:
        if isinstance(x, fx.Node):
            if x is h:
                return "h"
            return ("local", local[x]) if x in local else ("ext", x)
        if isinstance(x, (list, tuple)):
            return tuple(norm(y) for y in x)
        return x

    sig = []
    for n in ordered:
        args = list(n.args)
        ts = time_slice(n)
        if ts is not None and ts[0] not in local:
            args = [ts[0], ts[1], ("t", ts[2] - t), ts[3]]
        sig.append((n.target, norm(args), norm(dict(n.kwargs))))
    return tuple(sig)


def match_readout(rec: Recurrence, order: NodeOrder) -> Readout:
    """The per-step readout of a loop, the same at every step, collected by one stack."""
    states = rec.states
    steps = range(rec.length) if not rec.reverse else range(rec.length - 1, -1, -1)
    prev_sig, collector, outs, leaves_all, nodes_all = None, None, {}, [], []
    region = set(rec.region)
    for t in steps:
        h = states[t]
        nodes, coll = _step_closure(h, region, None)
        if coll is None or (collector is not None and coll is not collector):
            raise NoMatch(f"{h.name}: the state of step {t} is not read out into one stack")
        collector = coll
        nodes = _reaching(nodes, collector, order)  # other readers of h are not the readout
        ends = [n for n in nodes if collector in n.users] or ([h] if h in collector.args[0] else [])
        if len(ends) != 1:
            raise NoMatch(f"{h.name}: step {t} contributes {len(ends)} tensors to {collector.name}")
        side, leaves = _side_inputs(nodes, h)
        for n in nodes:
            if any(u not in set(nodes) | {collector} for u in n.users):
                raise NoMatch(f"{n.name}: an intermediate of step {t}'s readout is used "
                              "elsewhere")
        sig = _signature(nodes + side, h, t, order)
        if prev_sig is not None and sig != prev_sig:
            raise NoMatch(f"{h.name}: the readout of step {t} differs from its neighbour's")
        prev_sig = sig
        outs[t] = ends[0]
        leaves_all.append(leaves)
        nodes_all += nodes + side
    items = collector.args[0]
    if list(items) != [outs[t] for t in range(rec.length)]:
        raise NoMatch(f"{collector.name}: stacks the readouts out of time order")
    leaves = leaves_all[0]
    if len(leaves) != 1:
        raise NoMatch(f"{states[0].name}: the readout reads {len(leaves)} per-step tensors, "
                      "expected one (C_t)")
    c, c_dim, _, c_keep = time_slice(leaves[0])
    if c_keep:
        raise NoMatch(f"{leaves[0].name}: C_t keeps its time axis")
    t0 = 0 if not rec.reverse else rec.length - 1
    h = states[t0]
    if fake_value(h).dim() != 3:
        raise NoMatch(f"{h.name}: state of shape {hinted_shape(h)}, the fused scan wants "
                      "[Bt, Dc, N]")
    sizes = dict(zip("bdn", hinted_shape(h)))
    # leaves_all[0] belongs to the first step visited, t0
    c_roles, out_roles = _probe_readout(h, "bdn", leaves_all[0][0], outs[t0], sizes,
                                       order)
    stack_dim = collector.args[1] if len(collector.args) > 1 else collector.kwargs.get("dim", 0)
    stack_dim %= fake_value(collector).dim()
    return Readout(c=c, c_roles=insert_role(c_roles, c_dim), output=collector,
                   out_roles=insert_role(out_roles, stack_dim), nodes=nodes_all)


def insert_role(roles: str, at: int) -> str:
    return roles[:at] + "t" + roles[at:]


def match_full_readout(rec: Recurrence, order: NodeOrder) -> Readout:
    """The readout of every state at once (associative_scan): from the states through a
    contraction with one C to the first node holding y, and the layout views after it."""
    H = rec.all_states
    if fake_value(H).dim() != 4:
        raise NoMatch(f"{H.name}: states of shape {hinted_shape(H)}, expected [Bt, Dc, L, N]")
    roles = insert_role("bdn", rec.dim)
    sizes = dict(zip(roles, hinted_shape(H)))
    nodes, node, y_numel = [], H, sizes["b"] * sizes["d"] * sizes["t"]
    # H[..., L-1, ...] (transformers' final state for its cache) is h_last, not readout
    last = [u for u in H.users if (ts := time_slice(u)) is not None and ts[0] is H
            and ts[1] == rec.dim and ts[2] == rec.length - 1 and not ts[3]]
    while True:
        users = [u for u in node.users if u.op == "call_function" and u not in last]
        if len(users) != 1 or len(node.users) != 1 + len(last) * (node is H):
            if node is H:
                raise NoMatch(f"{H.name}: the states are used by {len(node.users)} nodes, "
                              "expected one readout")
            break
        u = users[0]
        if nodes and _numel(nodes[-1]) == y_numel and not is_call(u, *LAYOUT_OPS):
            break
        nodes.append(u)
        node = u
        if len(nodes) > 16:
            raise NoMatch(f"{H.name}: no readout to [Bt, Dc, L] within 16 nodes")
    end = nodes[-1] if nodes else H
    if _numel(end) != y_numel:
        raise NoMatch(f"{end.name}: the states are read out into {hinted_shape(end)}, "
                      "not [Bt, Dc, L]")
    side, leaves = _side_inputs(nodes, H, leaf=lambda x: True)
    if len(leaves) != 1:
        raise NoMatch(f"{end.name}: the readout reads {len(leaves)} other tensors, expected "
                      "one (C)")
    c_roles, out_roles = _probe_readout(H, roles, leaves[0], end, sizes, order)
    return Readout(c=leaves[0], c_roles=c_roles, output=end, out_roles=out_roles,
                   nodes=nodes + side, last=last)


def _numel(node: fx.Node) -> int:
    return int(np.prod(hinted_shape(node))) if is_tensor(node) else -1


def _probe_readout(h: fx.Node, h_roles: str, c: fx.Node, end: fx.Node, sizes: dict,
                   order: NodeOrder) -> tuple[str, str]:
    """Evaluate the readout on random h and C: is it y = Σ_n C[.., n] h[.., n]?

    h_roles names h's axes (b batch, d channel, t time, n state). Tries every way C's
    axes can be (b, [d,] [t,] n) and y's the rest of h's: a linear map that agrees with
    the contraction on random inputs is the contraction (barring probability zero).
    Returns (C's roles, y's roles).
    """
    y_roles = h_roles.replace("n", "")
    c_sets = [y_roles.replace("d", "") + "n", h_roles]
    c_cands = [r for rs in c_sets for r in _perms(rs) if _fits(r, c, sizes)]
    y_cands = [r for r in _perms(y_roles) if _fits(r, end, sizes)]
    if not c_cands or not y_cands:
        raise NoMatch(f"{end.name}: readout shapes C {hinted_shape(c)} → "
                      f"y {hinted_shape(end)} do not fit "
                      f"states {hinted_shape(h)}")
    step_nodes = sorted(_nodes_between(h, c, end), key=order)
    key = _probe_key(h, h_roles, c, end, step_nodes)
    if key in _PROBED:
        return _PROBED[key]
    gen = torch.Generator().manual_seed(0)
    device = fake_value(h).device  # the graph's own device: its ops may name it
    if device.type == "meta":  # a report priced on meta: probe values need real data
        device = torch.device("cpu")
    hv = torch.randn(hinted_shape(h), generator=gen).to(device=device, dtype=dtype_of(h))
    cv = torch.randn(hinted_shape(c), generator=gen).to(device=device, dtype=dtype_of(c))
    env = {h: hv, c: cv}
    try:
        for node in step_nodes:
            args = torch.fx.node.map_arg(node.args, lambda x: env[x])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda x: env[x])
            env[node] = node.target(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - an op the probe cannot replay
        raise NoMatch(f"{end.name}: the readout could not be evaluated on a probe "
                      f"({type(e).__name__})") from None
    got = env[end].double().cpu()
    hv, cv = hv.cpu(), cv.cpu()
    best = float("inf")
    for cr in c_cands:
        want = torch.einsum(f"{h_roles},{cr}->{y_roles}", hv.double(), cv.double())
        for yr in y_cands:
            w = want.permute([y_roles.index(r) for r in yr])
            err = float((got - w).norm() / (w.norm() + 1e-30))
            if err <= PROBE_TOLERANCE:
                if len(_PROBED) >= 256:
                    _PROBED.clear()
                _PROBED[key] = cr, yr
                return cr, yr
            best = min(best, err)
    raise NoMatch(f"{end.name}: the readout is not Σ_n C[n]·h[n] "
                  f"(relative error {best:.2g} on a random probe)")


def _probe_key(h: fx.Node, h_roles: str, c: fx.Node, end: fx.Node, steps: list[fx.Node]
               ) -> tuple:
    """What the probe's answer depends on: h's roles, the shapes, dtypes and device of h
    and C, and each readout step's op, output shape and dtype and arguments, with h, C
    and earlier steps named by role and index (not by node, so another layer's identical
    readout has the same key)."""
    local = {h: "h", c: "c", **{n: i for i, n in enumerate(steps)}}

    def name(x: fx.Node) -> Any:
        return ("node", local[x])

    def meta(x: fx.Node) -> Any:
        return (hinted_shape(x), dtype_of(x)) if is_tensor(x) else repr(fake_value(x))

    return (h_roles, meta(h), meta(c), fake_value(h).device.type, local[end], *(
        (str(n.target), meta(n), repr(torch.fx.node.map_arg(n.args, name)),
         repr(torch.fx.node.map_arg(n.kwargs, name)))
        for n in steps))


def _perms(roles: str) -> list[str]:
    return ["".join(p) for p in itertools.permutations(roles)]


def _fits(roles: str, node: fx.Node, sizes: dict) -> bool:
    return hinted_shape(node) == tuple(sizes[r] for r in roles)


def _nodes_between(h: fx.Node, c_t: fx.Node, end: fx.Node) -> list[fx.Node]:
    """The nodes `end` depends on, stopping at h and C_t; any other input is an error."""
    out, stack, seen = [], [end], {h, c_t}
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op != "call_function":
            raise NoMatch(f"{end.name}: the readout depends on {n.name}, not only on h_t "
                          "and C_t")
        out.append(n)
        stack.extend(n.all_input_nodes)
    return out


