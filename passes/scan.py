"""Scan pass: first-order diagonal linear recurrences → one fused scan kernel.

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

What the kernel computes then depends on the producers and consumers:

- `selective_scan` (Mamba) when a = exp(Δ ⊗ A), b = Δ ⊗ B ⊗ u over [Bt, Dc, L, N] and the
  states are read out with C (y_t = Σ_n C_t[n] h_t[n], checked on random probes, so
  matmul, einsum and multiply-and-sum all count). The (Bt, Dc, L, N) tensors a, b and
  the states never reach HBM: the region reads u, Δ, B, C once and writes y.
- `linear_scan` otherwise, on the materialised a and b; the readout stays as it was.

IO per state element (fp32, unfused loop): read a_t, b_t, h_{t-1}, write h_t, plus the
readout reading h_t again: ≥ 20 bytes; fused selective scan: (2·Bt·Dc·L + 2·Bt·L·N)·it
over the whole region. See docs/cost-model.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware import cost, tiles
from ioaware.explain import Fallback, Rewrite
from ioaware.passes.views import LAYOUT_OPS, hinted_shape
from ioaware.spec import DTYPES, ScanSpec, dtype_name

aten = torch.ops.aten

CAST_OPS = {aten._to_copy.default}
ZERO_FACTORIES = {aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default}
# The readout probe: relative error below which the readout is the contraction with C.
# Half-precision casts in the readout (h.to(bf16)) cost ~1e-2; a different contraction
# costs O(1).
PROBE_TOLERANCE = 5e-2

# Readouts already probed, by structure (see _probe_key): a model's layers repeat one
# readout, and each probe runs it on a whole random [B, D, L, N] state (~0.3 s per layer
# at D=512, L=2048 on a CPU), so the layers after the first reuse the first's answer.
_PROBED: dict[tuple, tuple[str, str]] = {}


class NoMatch(Exception):
    """A candidate recurrence that is not rewritten; the message is the reason."""


# ---------------------------------------------------------------------------------------
# the match record


@dataclasses.dataclass
class Recurrence:
    """h_t = a_t ⊙ h_{t-1} + b_t along axis `dim` of the full tensors a and b.

    a, b: fx.Nodes holding every step (time at `dim`), or for a the Python number or
    step-invariant node every step multiplies by (`a_const`). states: the node of each
    h_t in time order (loop), or one node holding all of them laid out as b
    (`all_states`, associative_scan). region: the nodes the rewrite replaces.
    """

    form: str  # "loop" | "associative_scan" | "cumsum"
    a: Any
    b: fx.Node
    dim: int
    length: int
    reverse: bool
    h0: fx.Node | None
    anchor: fx.Node  # new nodes go before it
    region: list[fx.Node]
    states: list[fx.Node] | None = None
    all_states: fx.Node | None = None
    a_const: bool = False  # a is the same every step (a number or a node without time)
    a_is_log: bool = False  # `a` holds log a (closed forms that write exp(cumsum(log a)))
    keepdim: bool = False  # loop steps slice with slice(t, t+1): h_t keeps the time axis
    readout: Readout | None = None
    products: fx.Node | None = None  # associative_scan's Π a output, when it is read


@dataclasses.dataclass
class Readout:
    """y[b, d, t] = Σ_n C[b, (d,) t, n] · h_t[b, d, n], held by `output`.

    Roles name axes: b batch, d channel, t time, n state. c_roles: C's axes ("btn": one
    C shared by every channel, "bdtn": one per channel); out_roles: the output's axes.
    """

    c: fx.Node
    c_roles: str
    output: fx.Node
    out_roles: str
    nodes: list[fx.Node]  # the readout's nodes (all steps), output excluded
    # nodes holding the last state besides the readout (a cache update): h_last replaces them
    last: list[fx.Node] = dataclasses.field(default_factory=list)

    @property
    def grouped(self) -> bool:
        return "d" in self.c_roles


@dataclasses.dataclass
class Selective:
    """The producers of a and b: a = exp(Δ ⊗ A), b = Δ ⊗ B ⊗ u, each factor a node whose
    shape broadcasts to the 4-D frame of a and b (axes b, d, n in order, time at dim)."""

    delta: fx.Node
    A: fx.Node
    B: fx.Node
    u: fx.Node
    frame: tuple[int, ...]
    nodes: list[fx.Node]
    # Δ = softplus(delta_pre + delta_bias) when found: the view chain from the softplus
    # to the Δ factor is replayed on delta_pre (and on the bias) by the rewrite
    softplus: bool = False
    delta_pre: fx.Node | None = None
    delta_bias: fx.Node | None = None
    chain: list[fx.Node] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------
# small guards


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_tensor(node: Any) -> bool:
    return isinstance(_val(node), torch.Tensor)


def _static(node: fx.Node) -> bool:
    return all(isinstance(s, int) for s in _val(node).shape)


def _call(node: Any, *targets: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _is_add(node: Any) -> bool:
    return _call(node, aten.add.Tensor) and node.kwargs.get("alpha", 1) == 1 and len(node.args) == 2


def _is_mul(node: Any) -> bool:
    return _call(node, aten.mul.Tensor) and len(node.args) == 2


def _time_slice(node: Any) -> tuple[fx.Node, int, int, bool] | None:
    """(X, dim, index, keepdim) when `node` is X[..., index, ...] along `dim`."""
    if _call(node, aten.select.int):
        x, dim, index = node.args
        rank = _val(x).dim()
        size = hinted_shape(x)[dim % rank]
        if isinstance(index, int):
            return x, dim % rank, index % size if size else index, False
    if _call(node, aten.slice.Tensor):
        x, dim, start, end, step = (*node.args, *(0, None, None, 1)[len(node.args) - 1:])
        rank = _val(x).dim()
        size = hinted_shape(x)[dim % rank]
        if step == 1 and isinstance(start, int) and isinstance(end, int):
            start = start + size if start < 0 else start
            end = min(end + size if end < 0 else end, size)
            if end - start == 1:
                return x, dim % rank, start, True
    return None


def _is_zero(node: Any) -> bool:
    if _call(node, *ZERO_FACTORIES):
        return True
    if _call(node, aten.full.default, aten.full_like.default, aten.new_full.default):
        return node.args[-1] == 0 if node.target is not aten.new_full.default else node.args[2] == 0
    return False


def _same(x: Any, y: Any, depth: int = 8) -> bool:
    """x and y compute the same value: the same node, or the same op on the same
    arguments (as two `dt[..., None]` spellings of one Δ do)."""
    if x is y:
        return True
    if not (isinstance(x, fx.Node) and isinstance(y, fx.Node)):
        return not isinstance(x, fx.Node) and not isinstance(y, fx.Node) and x == y
    if depth == 0 or x.op != "call_function" or y.op != "call_function":
        return False
    if x.target is not y.target or len(x.args) != len(y.args) or x.kwargs != y.kwargs:
        return False
    return all(_same(a, b, depth - 1) if isinstance(a, fx.Node) else a == b
               for a, b in zip(x.args, y.args))


def _dtype(node: fx.Node) -> torch.dtype:
    return _val(node).dtype


# ---------------------------------------------------------------------------------------
# matching: unrolled loops


def _steps(gm: fx.GraphModule) -> tuple[dict, dict]:
    """Candidate steps add(mul(p, q), b_t) and the links h_{t-1} → h_t between them.

    Returns (steps: add → mul, nxt: add → next add). A link exists where one operand of
    a step's mul is another step's add; a state used by two steps links to neither.
    """
    steps = {}
    for node in gm.graph.nodes:
        if _is_add(node):
            muls = [x for x in node.args if _is_mul(x)]
            if len(muls) >= 1:
                steps[node] = muls
    nxt: dict[fx.Node, Any] = {}
    for s, muls in steps.items():
        for m in muls:
            prevs = [x for x in m.args if x in steps]
            if len(prevs) == 1:
                p = prevs[0]
                nxt[p] = s if p not in nxt else None  # None: two successors
    return steps, {p: s for p, s in nxt.items() if s is not None}


def loop_candidates(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Chains h_0 → h_1 → … of at least two steps whose a_t or b_t is a time slice."""
    steps, nxt = _steps(gm)
    has_prev = set(nxt.values())
    chains = []
    for s in steps:
        if s in has_prev or s not in nxt:
            continue
        chain = [s]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        if len(chain) >= 2 and any(_time_slice(x) for x in chain[1].args):
            chains.append(chain)
    return chains


def _split_step(add: fx.Node, prev: Any) -> tuple[fx.Node, Any, Any]:
    """(mul, a_t, b_t) of `add` = a_t · prev + b_t (either operand order)."""
    for m, b_t in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
        if _is_mul(m) and prev in m.args:
            x, y = m.args
            if x is y:
                raise NoMatch(f"{add.name}: the state multiplies itself (not linear)")
            return m, (y if x is prev else x), b_t
    raise NoMatch(f"{add.name}: not a_t * h + b_t with h the previous step's state")


def _head(chain: list[fx.Node]) -> tuple[fx.Node, Any, Any, Any]:
    """The first step's (mul, a_0, b_0, h_init): the h operand is the one that is not
    the slice of the second step's a (or the same constant)."""
    _, a1, _ = _split_step(chain[1], chain[0])
    s = chain[0]
    for m, b_t in ((s.args[0], s.args[1]), (s.args[1], s.args[0])):
        if not _is_mul(m):
            continue
        for a0, h in ((m.args[0], m.args[1]), (m.args[1], m.args[0])):
            t0, t1 = _time_slice(a0), _time_slice(a1)
            if (t0 and t1 and t0[:2] == t1[:2]) or (not t1 and not t0 and _same(a0, a1)):
                return m, a0, b_t, h
    raise NoMatch(f"{s.name}: the first step does not multiply by the same a as the others")


def match_loop(chain: list[fx.Node]) -> Recurrence:
    mul0, a0, b0, h_init = _head(chain)
    parts = [(chain[0], mul0, a0, b0)]
    for prev, s in itertools.pairwise(chain):
        m, a_t, b_t = _split_step(s, prev)
        parts.append((s, m, a_t, b_t))

    first_b = _time_slice(b0)
    if first_b is None:
        raise NoMatch(f"{chain[0].name}: b_0 = {getattr(b0, 'name', b0)} is not a time slice "
                      "b[..., t, ...] of one tensor")
    b_src, dim, b_index0, keepdim = first_b
    a_slice0 = _time_slice(a0)
    a_const = a_slice0 is None
    if a_const and isinstance(a0, fx.Node) and not _is_tensor(a0):
        raise NoMatch(f"{chain[0].name}: a_0 is not a tensor or a number")
    length = len(chain)
    step = 1
    for t, (s, m, a_t, b_t) in enumerate(parts):
        tb = _time_slice(b_t)
        if tb is None or tb[0] is not b_src or tb[1] != dim or tb[3] != keepdim:
            raise NoMatch(f"{s.name}: step {t} adds {getattr(b_t, 'name', b_t)}, not a slice of "
                          f"{b_src.name} along dim {dim} as step 0 does (the steps differ)")
        if t == 1:
            step = tb[2] - b_index0
            if step not in (1, -1):
                raise NoMatch(f"{s.name}: steps read {b_src.name} at {b_index0}, {tb[2]}: "
                              "not consecutive time steps")
        if tb[2] != b_index0 + step * t:
            raise NoMatch(f"{s.name}: step {t} reads {b_src.name}[{tb[2]}] along dim {dim}, "
                          f"expected {b_index0 + step * t} (the steps differ)")
        if a_const:
            if not _same(a_t, a0):
                raise NoMatch(f"{s.name}: step {t} multiplies by {getattr(a_t, 'name', a_t)}, "
                              f"step 0 by {getattr(a0, 'name', a0)} (the steps differ)")
        else:
            ta = _time_slice(a_t)
            if (ta is None or ta[0] is not a_slice0[0] or ta[1] != a_slice0[1] or ta[3] != keepdim
                    or ta[2] != tb[2]):
                raise NoMatch(f"{s.name}: step {t} multiplies by {getattr(a_t, 'name', a_t)}, "
                              f"not {a_slice0[0].name} at the step's own time (the steps differ)")
        if len(m.users) != 1:
            users = ", ".join(u.name for u in m.users)
            raise NoMatch(f"{m.name}: the product a_t·h_(t-1) of step {t} is used elsewhere "
                          f"({users})")
    size = hinted_shape(b_src)[dim]
    reverse = step == -1
    expected_first = size - 1 if reverse else 0
    if b_index0 != expected_first or length != size:
        raise NoMatch(f"{chain[0].name}: the loop covers {length} of the {size} steps along "
                      f"dim {dim} of {b_src.name}, starting at {b_index0}")
    if not a_const and _val(a_slice0[0]).dim() != _val(b_src).dim():
        raise NoMatch(f"{a0.name}: a and b have ranks {_val(a_slice0[0]).dim()} and "
                      f"{_val(b_src).dim()}")
    h0 = None if _is_zero(h_init) else h_init
    if h0 is not None and not _is_tensor(h0):
        raise NoMatch(f"{chain[0].name}: initial state {h_init} is not a tensor")
    states = [s for s, *_ in parts]
    if reverse:
        states.reverse()
    region = [n for s, m, a_t, b_t in parts for n in (s, m, a_t, b_t) if isinstance(n, fx.Node)
              and (n in (s, m) or _time_slice(n))]
    a_full = a0 if a_const else a_slice0[0]
    return Recurrence(form="loop", a=a_full, b=b_src, dim=dim, length=length, reverse=reverse,
                      h0=h0, anchor=chain[0], region=region, states=states, a_const=a_const,
                      keepdim=keepdim)


MATMUL_OPS = {aten.mm.default, aten.bmm.default, aten.mv.default}


def _through_views(node: Any) -> Any:
    while _call(node, *LAYOUT_OPS):
        node = node.args[0]
    return node


def matrix_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """Heads of chains h_t = M_t @ h_{t-1} + b_t (two steps or more): not diagonal, left
    to eager, and said so."""
    step = {}
    for node in gm.graph.nodes:
        if _is_add(node):
            for x in node.args:
                mm = _through_views(x)
                if _call(mm, *MATMUL_OPS):
                    prev = [_through_views(y) for y in mm.args]
                    step[node] = (mm, prev)
    heads = []
    for node, (mm, prev) in step.items():
        if not any(p in step for p in prev) and any(
                any(node is p for p in step[u][1]) for u in _users_through_views(node)
                if u in step):
            heads.append(node)
    return heads


def _users_through_views(node: fx.Node) -> list[fx.Node]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        for u in n.users:
            if _call(u, *LAYOUT_OPS, *MATMUL_OPS):
                stack.append(u)
            else:
                out.append(u)
    return out


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
            if _call(u, aten.stack.default):
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


def _reaching(nodes: list[fx.Node], target: fx.Node) -> list[fx.Node]:
    """The nodes of `nodes` from which `target` is reached through users in `nodes`."""
    inside, reach = set(nodes), set()
    for n in sorted(nodes, key=_position, reverse=True):
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
            if leaf is not None and not (_call(x, *LAYOUT_OPS, *CAST_OPS)
                                         and all(u in inside for u in x.users)):
                leaves.append(x)
                inside.add(x)
            elif _time_slice(x) is not None and all(u in inside for u in x.users):
                leaves.append(x)
                inside.add(x)
                side.append(x)
            elif _call(x, *LAYOUT_OPS, *CAST_OPS) and all(u in inside for u in x.users):
                inside.add(x)
                side.append(x)
                frontier.append(x)
    return side, leaves


def _signature(nodes: list[fx.Node], h: fx.Node, t: int) -> tuple:
    """The readout's structure with its state as "h", its own nodes by position and the
    time indices of its slices relative to step index t."""
    order = sorted(nodes, key=_position)
    local = {n: i for i, n in enumerate(order)}

    def norm(x: Any) -> Any:
        if isinstance(x, fx.Node):
            if x is h:
                return "h"
            return ("local", local[x]) if x in local else ("ext", x)
        if isinstance(x, (list, tuple)):
            return tuple(norm(y) for y in x)
        return x

    sig = []
    for n in order:
        args = list(n.args)
        ts = _time_slice(n)
        if ts is not None and ts[0] not in local:
            args = [ts[0], ts[1], ("t", ts[2] - t), ts[3]]
        sig.append((n.target, norm(args), norm(dict(n.kwargs))))
    return tuple(sig)


_POSITIONS: dict[fx.Node, int] = {}


def _position(n: fx.Node) -> int:
    return _POSITIONS.get(n, 0)


def match_readout(rec: Recurrence) -> Readout:
    """The per-step readout of a loop, the same at every step, collected by one stack."""
    states = rec.states
    order = range(rec.length) if not rec.reverse else range(rec.length - 1, -1, -1)
    prev_sig, collector, outs, leaves_all, nodes_all = None, None, {}, [], []
    region = set(rec.region)
    for t in order:
        h = states[t]
        nodes, coll = _step_closure(h, region, None)
        if coll is None or (collector is not None and coll is not collector):
            raise NoMatch(f"{h.name}: the state of step {t} is not read out into one stack")
        collector = coll
        nodes = _reaching(nodes, collector)  # other readers of h are not the readout
        ends = [n for n in nodes if collector in n.users] or ([h] if h in collector.args[0] else [])
        if len(ends) != 1:
            raise NoMatch(f"{h.name}: step {t} contributes {len(ends)} tensors to {collector.name}")
        side, leaves = _side_inputs(nodes, h)
        for n in nodes:
            if any(u not in set(nodes) | {collector} for u in n.users):
                raise NoMatch(f"{n.name}: an intermediate of step {t}'s readout is used "
                              "elsewhere")
        sig = _signature(nodes + side, h, t)
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
    c, c_dim, _, c_keep = _time_slice(leaves[0])
    if c_keep:
        raise NoMatch(f"{leaves[0].name}: C_t keeps its time axis")
    t0 = 0 if not rec.reverse else rec.length - 1
    h = states[t0]
    if _val(h).dim() != 3:
        raise NoMatch(f"{h.name}: state of shape {hinted_shape(h)}, the fused scan wants [Bt, Dc, N]")
    sizes = dict(zip("bdn", hinted_shape(h)))
    # leaves_all[0] belongs to the first step visited, t0
    c_roles, out_roles = _probe_readout(h, "bdn", leaves_all[0][0], outs[t0], sizes)
    stack_dim = collector.args[1] if len(collector.args) > 1 else collector.kwargs.get("dim", 0)
    stack_dim %= _val(collector).dim()
    return Readout(c=c, c_roles=_insert(c_roles, c_dim), output=collector,
                   out_roles=_insert(out_roles, stack_dim), nodes=nodes_all)


def _insert(roles: str, at: int) -> str:
    return roles[:at] + "t" + roles[at:]


def match_full_readout(rec: Recurrence) -> Readout:
    """The readout of every state at once (associative_scan): from the states through a
    contraction with one C to the first node holding y, and the layout views after it."""
    H = rec.all_states
    if _val(H).dim() != 4:
        raise NoMatch(f"{H.name}: states of shape {hinted_shape(H)}, expected [Bt, Dc, L, N]")
    roles = _insert("bdn", rec.dim)
    sizes = dict(zip(roles, hinted_shape(H)))
    nodes, node, y_numel = [], H, sizes["b"] * sizes["d"] * sizes["t"]
    # H[..., L-1, ...] (transformers' final state for its cache) is h_last, not readout
    last = [u for u in H.users if (ts := _time_slice(u)) is not None and ts[0] is H
            and ts[1] == rec.dim and ts[2] == rec.length - 1 and not ts[3]]
    while True:
        users = [u for u in node.users if u.op == "call_function" and u not in last]
        if len(users) != 1 or len(node.users) != 1 + len(last) * (node is H):
            if node is H:
                raise NoMatch(f"{H.name}: the states are used by {len(node.users)} nodes, "
                              "expected one readout")
            break
        u = users[0]
        if nodes and _numel(nodes[-1]) == y_numel and not _call(u, *LAYOUT_OPS):
            break
        nodes.append(u)
        node = u
        if len(nodes) > 16:
            raise NoMatch(f"{H.name}: no readout to [Bt, Dc, L] within 16 nodes")
    end = nodes[-1] if nodes else H
    if _numel(end) != y_numel:
        raise NoMatch(f"{end.name}: the states are read out into {hinted_shape(end)}, not [Bt, Dc, L]")
    side, leaves = _side_inputs(nodes, H, leaf=lambda x: True)
    if len(leaves) != 1:
        raise NoMatch(f"{end.name}: the readout reads {len(leaves)} other tensors, expected "
                      "one (C)")
    c_roles, out_roles = _probe_readout(H, roles, leaves[0], end, sizes)
    return Readout(c=leaves[0], c_roles=c_roles, output=end, out_roles=out_roles,
                   nodes=nodes + side, last=last)


def _numel(node: fx.Node) -> int:
    return int(np.prod(hinted_shape(node))) if _is_tensor(node) else -1


def _probe_readout(h: fx.Node, h_roles: str, c: fx.Node, end: fx.Node, sizes: dict
                   ) -> tuple[str, str]:
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
        raise NoMatch(f"{end.name}: readout shapes C {hinted_shape(c)} → y {hinted_shape(end)} do not fit "
                      f"states {hinted_shape(h)}")
    step_nodes = sorted(_nodes_between(h, c, end), key=_position)
    key = _probe_key(h, h_roles, c, end, step_nodes)
    if key in _PROBED:
        return _PROBED[key]
    gen = torch.Generator().manual_seed(0)
    device = _val(h).device  # the graph's own device: its ops may name it
    if device.type == "meta":  # a report priced on meta: probe values need real data
        device = torch.device("cpu")
    hv = torch.randn(hinted_shape(h), generator=gen).to(device=device, dtype=_dtype(h))
    cv = torch.randn(hinted_shape(c), generator=gen).to(device=device, dtype=_dtype(c))
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
        return (hinted_shape(x), _dtype(x)) if _is_tensor(x) else repr(_val(x))

    return (h_roles, meta(h), meta(c), _val(h).device.type, local[end], *(
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


# ---------------------------------------------------------------------------------------
# matching: associative_scan


def _combine_is_linear(combine: fx.GraphModule) -> str | None:
    """None if the combine subgraph is (a1, b1), (a2, b2) → (a1·a2, a2·b1 + b2), else why."""
    ph = [n for n in combine.graph.nodes if n.op == "placeholder"]
    out = next(n for n in combine.graph.nodes if n.op == "output")
    if len(ph) != 4:
        return f"the combine function takes {len(ph)} tensors, expected 2 pairs (a, b)"
    a1, b1, a2, b2 = ph
    res = out.args[0]
    if len(res) != 2:
        return f"the combine function returns {len(res)} tensors, expected (a, b)"
    oa, ob = res
    if not (_is_mul(oa) and set(oa.args) == {a1, a2}):
        return "the combine's first output is not a1·a2"
    if not _is_add(ob):
        return "the combine's second output is not a2·b1 + b2"
    for m, other in ((ob.args[0], ob.args[1]), (ob.args[1], ob.args[0])):
        if other is b2 and _is_mul(m) and set(m.args) == {a2, b1}:
            return None
    return "the combine's second output is not a2·b1 + b2"


HOP_TARGETS = {op for op in [getattr(torch.ops.higher_order, "associative_scan", None)] if op}


def hop_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if _call(n, *HOP_TARGETS)]


def match_hop(gm: fx.GraphModule, node: fx.Node) -> Recurrence:
    combine, xs = node.args[0], node.args[1]
    extra = node.args[2] if len(node.args) > 2 else ()
    sub = getattr(gm, combine.target) if combine.op == "get_attr" else None
    if not isinstance(sub, fx.GraphModule):
        raise NoMatch(f"{node.name}: the combine function is not a graph")
    if extra:
        raise NoMatch(f"{node.name}: the combine function closes over {len(extra)} tensors")
    why = _combine_is_linear(sub)
    if why is not None:
        raise NoMatch(f"{node.name}: {why}; only the linear recurrence is rewritten")
    a, b = xs
    outs = [u for u in node.users if _call(u, operator.getitem)]
    states = [u for u in outs if u.args[1] == 1]
    if len(states) != 1:
        raise NoMatch(f"{node.name}: expected one reader of the states, found {len(states)}")
    # The scan's first output, Π_{s<=t} a_s, is what torch.cumprod gives; a graph that
    # reads it (captures on CUDA keep the getitem alive) gets that instead.
    products = [u for u in outs if u.args[1] == 0 and u.users]
    return Recurrence(form="associative_scan", a=a, b=b, dim=0, length=hinted_shape(b)[0],
                      reverse=False, h0=None, anchor=node, region=[node, *outs],
                      all_states=states[0], products=products[0] if products else None)


# The odd-even tree of combine_mode="generic", interpreted on row intervals.


@dataclasses.dataclass
class _Rows:
    """Abstract value along axis 0: row i combines time steps lo[i]..hi[i] (lo = -1: a
    row with no meaning, from padding). kind: "a" (Π a), "b" (the state from 0 over
    the interval), "ab" (a·b of adjacent intervals, waiting for its + b)."""

    kind: str
    lo: np.ndarray
    hi: np.ndarray
    mid: np.ndarray | None = None  # "ab": where the b part ends

    def __len__(self) -> int:
        return len(self.lo)


def _rows_slice(v: _Rows, start: Any, end: Any, step: Any) -> _Rows:
    sl = slice(start, end, step)
    return _Rows(v.kind, v.lo[sl], v.hi[sl], None if v.mid is None else v.mid[sl])


def _interpret(node: fx.Node, env: dict) -> _Rows | None:
    """The abstract value of `node`, or None when it is not part of a tree scan."""
    args = node.args
    if _call(node, aten.slice.Tensor):
        v = env.get(args[0])
        dim = args[1] if len(args) > 1 else 0
        if v is None or dim != 0:
            return None
        start = args[2] if len(args) > 2 else None
        end = args[3] if len(args) > 3 else None
        step = args[4] if len(args) > 4 else 1
        return _rows_slice(v, start, end, step)
    if _call(node, aten.cat.default):
        parts = [env.get(x) for x in args[0]]
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if dim != 0 or any(p is None for p in parts) or len({p.kind for p in parts}) != 1:
            return None
        return _Rows(parts[0].kind, np.concatenate([p.lo for p in parts]),
                     np.concatenate([p.hi for p in parts]))
    if _call(node, aten.pad.default, aten.constant_pad_nd.default):
        v, pad = env.get(args[0]), list(args[1])
        rank = _val(node).dim()
        if v is None or len(pad) != 2 * rank or any(pad[:-2]) or pad[-2] != 0:
            return None
        extra = np.full(pad[-1], -1)
        return _Rows(v.kind, np.concatenate([v.lo, extra]), np.concatenate([v.hi, extra]))
    if _call(node, aten.stack.default):
        parts = [env.get(x) for x in args[0]]
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1 or len(parts) != 2 or any(p is None for p in parts) or \
                parts[0].kind != parts[1].kind or len(parts[0]) != len(parts[1]):
            return None
        # stack on axis 1 then view(…) merging axes 0, 1: rows interleave
        return _Rows(parts[0].kind + "|stacked", np.stack([parts[0].lo, parts[1].lo], 1),
                     np.stack([parts[0].hi, parts[1].hi], 1))
    if _call(node, aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        v = env.get(args[0])
        if v is None or not v.kind.endswith("|stacked"):
            return None
        s_in, s_out = hinted_shape(args[0]), hinted_shape(node)
        if s_out != (s_in[0] * s_in[1], *s_in[2:]):
            return None
        return _Rows(v.kind.split("|")[0], v.lo.reshape(-1), v.hi.reshape(-1))
    if _call(node, aten.flip.default):
        v = env.get(args[0])
        if v is None or list(args[1]) not in ([0], [-_val(node).dim()]):
            return None
        return _Rows(v.kind, v.lo[::-1], v.hi[::-1])
    if _is_mul(node):
        x, y = (env.get(a) for a in args)
        if x is None or y is None or len(x) != len(y):
            return None
        if x.kind == "a" and y.kind == "a":
            lo, hi = np.minimum(x.lo, y.lo), np.maximum(x.hi, y.hi)
            ok = ((x.hi + 1 == y.lo) | (y.hi + 1 == x.lo)) & (x.lo >= 0) & (y.lo >= 0)
            return _Rows("a", np.where(ok, lo, -1), np.where(ok, hi, -1))
        if {x.kind, y.kind} == {"a", "b"}:
            a_, b_ = (x, y) if x.kind == "a" else (y, x)
            ok = (b_.hi + 1 == a_.lo) & (a_.lo >= 0) & (b_.lo >= 0)
            return _Rows("ab", np.where(ok, b_.lo, -1), np.where(ok, a_.hi, -1),
                         np.where(ok, a_.lo, -1))
        return None
    if _is_add(node):
        x, y = (env.get(a) for a in args)
        if x is None or y is None or len(x) != len(y) or {x.kind, y.kind} != {"ab", "b"}:
            return None
        ab, b_ = (x, y) if x.kind == "ab" else (y, x)
        # a2·b1 + b2: the b part must cover exactly the a part's interval
        ok = (ab.mid == b_.lo) & (ab.hi == b_.hi) & (ab.lo >= 0) & (b_.lo >= 0)
        return _Rows("b", np.where(ok, ab.lo, -1), np.where(ok, ab.hi, -1))
    return None


def tree_candidates(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(a, b) pairs the odd-even tree starts from: a first combine mul(a[1::2], b[::2])."""
    pairs = []
    for node in gm.graph.nodes:
        if not _is_mul(node):
            continue
        x, y = node.args
        sx, sy = _odd_even(x), _odd_even(y)
        if sx and sy and sx[1] != sy[1]:
            a, b = (sx[0], sy[0]) if sx[1] == 1 else (sy[0], sx[0])
            if (a is not b and _is_tensor(a) and hinted_shape(a) == hinted_shape(b) and (a, b) not in pairs
                    and not _combined(a) and not _combined(b)):
                pairs.append((a, b))
    return pairs


def _combined(node: Any) -> bool:
    """An inner level of a tree: a combine's output (a mul or add of odd-even slices)."""
    stack, seen = [node], 0
    while stack and seen < 8:
        n = stack.pop()
        seen += 1
        if _odd_even(n):
            return True
        if _is_mul(n) or _is_add(n):
            stack.extend(x for x in n.args if isinstance(x, fx.Node))
    return False


def _odd_even(node: Any) -> tuple[fx.Node, int] | None:
    """(X, start) for X[start::2] along axis 0."""
    if _call(node, aten.slice.Tensor) and len(node.args) == 5 and node.args[1] == 0 \
            and node.args[4] == 2 and node.args[2] in (0, 1):
        return node.args[0], node.args[2]
    return None


def match_tree(gm: fx.GraphModule, a: fx.Node, b: fx.Node) -> Recurrence:
    """The states node of the odd-even tree from leaves a, b (time on axis 0)."""
    length = hinted_shape(b)[0]
    reverse = False
    leaves = {a: "a", b: "b"}
    env = {x: _Rows(kind, np.arange(length), np.arange(length)) for x, kind in leaves.items()}
    region, found = [], None
    target = np.arange(length)
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(x in env for x in node.all_input_nodes):
            continue
        v = _interpret(node, env)
        if v is None:
            continue
        env[node] = v
        region.append(node)
        if (v.kind == "b" and len(v) == length and np.array_equal(v.hi, target)
                and np.array_equal(v.lo, np.zeros(length))):
            found = node
            break
    if found is None:
        raise NoMatch(f"{b.name}: the odd-even tree over {a.name}, {b.name} does not compute "
                      "the linear recurrence (its combine is not (a1·a2, a2·b1 + b2), or a "
                      "step is missing)")
    keep = _ancestors(found, set(region))
    return Recurrence(form="associative_scan", a=a, b=b, dim=0, length=length, reverse=reverse,
                      h0=None, anchor=found, region=[n for n in region if n in keep],
                      all_states=found)


def _ancestors(node: fx.Node, within: set[fx.Node]) -> set[fx.Node]:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in out or n not in within:
            continue
        out.add(n)
        stack.extend(n.all_input_nodes)
    return out


def _unmove(rec: Recurrence) -> None:
    """Read a and b before the wrapper's movedim(x, dim, 0) (and flip, for reverse=True),
    and the states after its flip and movedim back, so the scan runs on the caller's
    layout (no copies)."""
    flips = [x for x in (rec.a, rec.b) if _call(x, aten.flip.default) and list(x.args[1]) == [0]]
    users = list(rec.all_states.users)
    if (len(flips) == 2 and len(users) == 1 and _call(users[0], aten.flip.default)
            and list(users[0].args[1]) == [0]):
        rec.a, rec.b, rec.reverse = rec.a.args[0], rec.b.args[0], True
        rec.all_states = users[0]
        rec.region.append(users[0])
    srcs = []
    for x in (rec.a, rec.b):
        if _call(x, aten.movedim.intlist, aten.movedim.int):
            src, dst = x.args[1], x.args[2]
            src = src[0] if isinstance(src, (list, tuple)) else src
            dst = dst[0] if isinstance(dst, (list, tuple)) else dst
            if dst == 0:
                srcs.append((x.args[0], src % _val(x).dim()))
                continue
        srcs.append(None)
    out = rec.all_states
    back = [u for u in out.users if _call(u, aten.movedim.intlist, aten.movedim.int)]
    if None in srcs or srcs[0][1] != srcs[1][1] or len(back) != 1 or len(out.users) != 1:
        return
    dim = srcs[0][1]
    bsrc, bdst = back[0].args[1], back[0].args[2]
    bsrc = bsrc[0] if isinstance(bsrc, (list, tuple)) else bsrc
    bdst = bdst[0] if isinstance(bdst, (list, tuple)) else bdst
    if bsrc != 0 or bdst % _val(back[0]).dim() != dim:
        return
    rec.a, rec.b, rec.dim = srcs[0][0], srcs[1][0], dim
    rec.all_states = back[0]
    rec.region.append(back[0])


# ---------------------------------------------------------------------------------------
# matching: closed forms


def _cumulative_product(p: Any) -> tuple[Any, int, bool] | None:
    """(a or log a, dim, is_log) when p is Π_{s≤t} a_s along dim: exp(cumsum(x, dim)) (x is
    log a, or a's log is taken explicitly) or cumprod(a, dim)."""
    if _call(p, aten.cumprod.default) and not p.kwargs.get("dtype"):
        return p.args[0], p.args[1] % _val(p).dim(), False
    if _call(p, aten.exp.default) and _call(p.args[0], aten.cumsum.default):
        cs = p.args[0]
        if cs.kwargs.get("dtype"):
            return None
        x, dim = cs.args[0], cs.args[1] % _val(cs).dim()
        if _call(x, aten.log.default):
            return x.args[0], dim, False
        return x, dim, True
    return None


def closed_form_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """mul(P, cumsum(b / P)) nodes: h_t = P_t · Σ_{s≤t} b_s / P_s with P = Π a."""
    out = []
    for node in gm.graph.nodes:
        if _is_mul(node) and any(_call(x, aten.cumsum.default) for x in node.args):
            out.append(node)
    return out


def match_closed_form(node: fx.Node) -> Recurrence:
    """h = P · cumsum(b / P, dim), P = exp(cumsum(log a, dim)) or cumprod(a, dim): the
    recurrence h_t = a_t·h_{t-1} + b_t from h_{-1} = 0, without dividing by P (which
    underflows for long L; there eager gives inf or NaN and the scan the recurrence's
    value)."""
    for p, s in (node.args, reversed(node.args)):
        if not _call(s, aten.cumsum.default) or s.kwargs.get("dtype"):
            continue
        prod = _cumulative_product(p)
        inner = s.args[0]
        if prod is None or not _call(inner, aten.div.Tensor) or not _same(inner.args[1], p):
            continue
        a, dim, is_log = prod
        b = inner.args[0]
        if s.args[1] % _val(s).dim() != dim or not _is_tensor(b) or not _is_tensor(a):
            raise NoMatch(f"{node.name}: the cumulative product and sum run along different "
                          "axes")
        if _val(b).dim() != _val(node).dim() or _val(a).dim() != _val(node).dim():
            raise NoMatch(f"{node.name}: a and b of ranks {_val(a).dim()}, {_val(b).dim()} "
                          "broadcast into the state")
        region = [node, s, inner, p, *([p.args[0]] if _call(p, aten.exp.default) else [])]
        if _call(p, aten.exp.default) and _call(p.args[0].args[0], aten.log.default):
            region.append(p.args[0].args[0])
        if inner.args[1] is not p:
            region += [inner.args[1], inner.args[1].args[0]]
        return Recurrence(form="cumsum", a=a, b=b, dim=dim, length=hinted_shape(node)[dim],
                          reverse=False, h0=None, anchor=node, region=region,
                          all_states=node, a_is_log=is_log)
    raise NoMatch(f"{node.name}: a product with a cumsum that is not P·cumsum(b / P) with "
                  "P = exp(cumsum(log a)) or cumprod(a) on the same axis")


# ---------------------------------------------------------------------------------------
# matching: the producers of a selective scan


def _factors(node: Any, limit: int = 4) -> list[Any]:
    """Leaves of a tree of mul.Tensor whose inner nodes have one user."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if _is_mul(n) and (n is node or len(n.users) == 1) and len(out) + len(stack) < limit:
            stack.extend(n.args)
        else:
            out.append(n)
    return out


def _axes(f: Any, frame: tuple[int, ...]) -> set[int] | None:
    """Frame axes on which factor f varies (its shape aligned right), None if it does not
    broadcast to the frame."""
    if not _is_tensor(f):
        return None
    s = hinted_shape(f)
    if len(s) > len(frame):
        return None
    s = (1,) * (len(frame) - len(s)) + s
    if any(x not in (1, y) for x, y in zip(s, frame)):
        return None
    return {i for i, x in enumerate(s) if x != 1}


def match_selective(rec: Recurrence) -> Selective:
    """a = exp(Δ ⊗ A), b = Δ ⊗ B ⊗ u on the frame [b, d, n] with time at rec.dim."""
    if rec.a_const or rec.reverse:
        raise NoMatch("a is not exp(Δ·A)" if rec.a_const else "reverse scan")
    a, b = rec.a, rec.b
    if not ((rec.a_is_log or _call(a, aten.exp.default)) and _static(a) and _static(b)):
        raise NoMatch(f"{getattr(a, 'name', a)}: a is not exp(Δ·A) with static sizes")
    exponent = a if rec.a_is_log else a.args[0]
    frame = hinted_shape(b)
    if hinted_shape(a) != frame or len(frame) != 4:
        raise NoMatch(f"{a.name}: a, b of shapes {hinted_shape(a)}, {frame}; expected one 4-D "
                      "[Bt, Dc, L, N] frame")
    t_ax = rec.dim
    bax, _, nax = [i for i in range(4) if i != t_ax]
    fa = _factors(exponent, limit=2)
    fb = _factors(b, limit=3)
    if len(fa) != 2 or len(fb) != 3:
        raise NoMatch(f"{a.name}: a = exp of {len(fa)} factors, b = {len(fb)} factors; "
                      "expected exp(Δ·A) and Δ·B·u")
    axes_a = [_axes(f, frame) for f in fa]
    axes_b = [_axes(f, frame) for f in fb]
    if None in axes_a or None in axes_b:
        raise NoMatch(f"{a.name}: a factor does not broadcast to the frame {frame}")
    delta = A = None
    for i in (0, 1):
        d_, A_ = fa[i], fa[1 - i]
        if (any(_same(d_, f) for f in fb) and nax not in axes_a[i] and
                not axes_a[1 - i] & {bax, t_ax}):
            delta, A = d_, A_
            break
    if delta is None:
        raise NoMatch(f"{a.name}: exp(x·y) where neither factor is a Δ shared with b "
                      "(varying over batch, channel, time) times an A (channel, state)")
    rest = [f for f in fb if not _same(f, delta)]
    if len(rest) != 2:
        raise NoMatch(f"{b.name}: b is not Δ·B·u with the Δ of a")
    axes = {f: _axes(f, frame) for f in rest}
    u = [f for f in rest if nax not in axes[f]]
    B = [f for f in rest if nax in axes[f]]
    if len(u) != 1 or len(B) != 1:
        raise NoMatch(f"{b.name}: b is not Δ·B·u (one factor without the state axis, one "
                      "with it)")
    nodes = [a, exponent, b]
    nodes += [n for n in (exponent, b) for n in _mul_tree(n)]
    sel = Selective(delta=delta, A=A, B=B[0], u=u[0], frame=frame,
                    nodes=list(dict.fromkeys(nodes)))
    _match_softplus(sel, _insert("bdn", t_ax))
    return sel


def _match_softplus(sel: Selective, roles: str) -> None:
    """Δ = views(softplus(x + bias)): fuse the softplus, and the bias when it varies only
    along the channel axis (softplus with beta 1 and threshold 20, as the kernel's)."""
    chain, node = [], sel.delta
    while _call(node, *LAYOUT_OPS):
        chain.append(node)
        node = node.args[0]
    if not (_call(node, aten.softplus.default) and tuple(node.args[1:]) in ((), (1,), (1, 20))
            and not node.kwargs):
        return
    chain.reverse()
    pre = node.args[0]
    if not _is_tensor(pre) or _dtype(pre) not in DTYPES.values():
        return
    sel.softplus, sel.delta_pre, sel.chain = True, pre, chain
    if not _is_add(pre):
        return
    for x, bias in (pre.args, reversed(pre.args)):
        if not (_is_tensor(x) and _is_tensor(bias) and hinted_shape(x) == hinted_shape(pre)):
            continue
        bs = hinted_shape(bias)
        bs = (1,) * (len(hinted_shape(pre)) - len(bs)) + bs
        if len(bs) != len(hinted_shape(pre)) or _dtype(bias) not in DTYPES.values():
            continue
        # the bias's strides through the same views: which frame axes it varies on
        out = torch.empty(bs, device="meta").expand(hinted_shape(pre))
        for n in chain:
            out = _replay_on(out, n)
            if out is None:
                break
        if out is None or tuple(out.shape) != hinted_shape(sel.delta):
            continue
        pad = len(sel.frame) - out.dim()  # Δ's factor aligns right in the frame
        varies = {i + pad for i, (st, sz) in enumerate(zip(out.stride(), out.shape))
                  if st and sz > 1}
        if varies <= {roles.index("d")}:
            sel.delta_pre, sel.delta_bias = x, bias
            return


def _softplus_nodes(sel: Selective) -> list[fx.Node]:
    """The softplus (and bias add) the kernel takes over, when nothing else reads them."""
    if not sel.softplus:
        return []
    sp = sel.chain[0].args[0] if sel.chain else sel.delta
    out = [sp, *sel.chain]
    if sel.delta_bias is not None:
        out.append(sp.args[0])
    return out


def _replay_on(t: torch.Tensor, node: fx.Node) -> torch.Tensor | None:
    """One view op of a chain applied to the meta tensor t (None if it does not apply)."""
    from ioaware.passes.views import IDENTITY_OPS, _hint_arg

    if node.target in IDENTITY_OPS:
        return t
    target = node.target
    if target in (aten.reshape.default, aten._unsafe_view.default):
        target = aten.view.default
    try:
        return target(t, *[_hint_arg(a) for a in node.args[1:]])
    except RuntimeError:
        return None


def _mul_tree(node: fx.Node) -> list[fx.Node]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if _is_mul(n) and (n is node or len(n.users) == 1):
            out.append(n)
            stack.extend(n.args)
    return out


@dataclasses.dataclass
class Epilogue:
    """y ← (y + D ⊙ u) ⊙ silu(z) after the readout, each part optional.

    D: a node varying only along the channel axis of y's layout; z: a node of y's shape.
    output: the last node of the epilogue (the readout's output when there is none).
    """

    D: fx.Node | None
    z: fx.Node | None
    output: fx.Node
    nodes: list[fx.Node]

    @property
    def fused(self) -> list[str]:
        return ["skip"] * (self.D is not None) + ["gate"] * (self.z is not None)


def _index_map(node: Any) -> tuple[fx.Node, torch.Tensor] | None:
    """(root, meta view): which element of `root` each element of `node` is, by replaying
    its chain of views (casts pass through) on a contiguous meta tensor."""
    from ioaware.passes.views import replay

    chain = []
    while _call(node, *LAYOUT_OPS, *CAST_OPS, aten.select.int, aten.slice.Tensor):
        if node.target not in CAST_OPS:
            chain.append(node)
        node = node.args[0]
    if not _is_tensor(node):
        return None
    out = replay(list(reversed(chain)), hinted_shape(node))
    return None if out is None else (node, out)


def _same_elements(x: fx.Node, x_roles: str, y: fx.Node, y_roles: str, roles: str) -> bool:
    """x and y read the same elements of one tensor once both are laid out as `roles`
    (axes of x named x_roles, of y named y_roles; axes of size 1 not in `roles` are
    dropped)."""
    mx, my = _index_map(x), _index_map(y)
    if mx is None or my is None or mx[0] is not my[0]:
        return False

    def lay(t: torch.Tensor, names: str) -> torch.Tensor:
        for i in reversed(range(len(names))):
            if names[i] not in roles:
                t = t.select(i, 0)
        kept = [r for r in names if r in roles]
        return t.permute([kept.index(r) for r in roles])

    a, b = lay(mx[1], x_roles), lay(my[1], y_roles)
    return (a.shape == b.shape and a.storage_offset() == b.storage_offset()
            and all(sa == sb or n == 1 for sa, sb, n in zip(a.stride(), b.stride(), a.shape)))


def match_epilogue(rec: Recurrence, sel: Selective, ro: Readout) -> Epilogue:
    """The D·u skip and the silu(z) gate applied to the readout's output, when present."""
    frame_roles = _insert("bdn", rec.dim)
    y, D, z, nodes = ro.output, None, None, []
    user = next(iter(y.users)) if len(y.users) == 1 else None
    if _is_add(user):
        other = user.args[1] if user.args[0] is y else user.args[0]
        if _is_mul(other) and len(other.users) == 1:
            for x, dv in (other.args, reversed(other.args)):
                axes = _axes(dv, hinted_shape(y))
                d_axis = ro.out_roles.index("d")
                if (axes is not None and axes <= {d_axis} and _is_tensor(x)
                        and hinted_shape(x) == hinted_shape(y)
                        and _same_elements(x, ro.out_roles, sel.u, frame_roles, "bdt")):
                    D, nodes, y = dv, [user, other], user
                    break
    user = next(iter(y.users)) if len(y.users) == 1 else None
    if _is_mul(user):
        other = user.args[1] if user.args[0] is y else user.args[0]
        if (_call(other, aten.silu.default) and _is_tensor(other.args[0])
                and hinted_shape(other.args[0]) == hinted_shape(y)):
            z, nodes, y = other.args[0], [*nodes, user], user
    return Epilogue(D=D, z=z, output=y, nodes=nodes)


# ---------------------------------------------------------------------------------------
# costing


def _rows_features(shape: tuple[int, ...], dim: int) -> tuple[int, int]:
    rows = int(np.prod(shape[:dim])) if dim else 1
    feats = int(np.prod(shape[dim + 1:])) if dim + 1 < len(shape) else 1
    return rows, feats


def region_cost(nodes: list[fx.Node]) -> cost.Cost:
    """Modelled cost of the eager region (the "before" of a rewrite).

    An unrolled loop is one step L times over, and one matmul's cost takes ~10 ms of sympy
    (its L2-spill term): so nodes that price alike (_cost_key) are priced once and
    counted, Σ_k count_k · cost_k, which is the plain sum (k · cost adds k runs' traffic
    and work and keeps the footprint, as k additions would)."""
    groups: dict[Any, list] = {}
    for n in dict.fromkeys(nodes):
        group = groups.setdefault(_cost_key(n), [n, 0])
        group[1] += 1
    total = cost.Cost.zero()
    for n, count in groups.values():
        c = _hop_cost(n) if n.target in HOP_TARGETS else cost.node_cost(n)
        if c is not None:
            total = total + (c if count == 1 else c * count)
    return total


def _cost_key(n: fx.Node) -> Any:
    """Everything node_cost reads: the op, its non-tensor arguments, its value, and each
    input's value, storage root (through views) and which inputs share a root. Nodes
    with one key have one cost; a node that is not a call is its own key."""
    if n.op != "call_function":
        return n
    inputs = n.all_input_nodes
    roots = [cost._storage_root(x) for x in inputs]

    def meta(x: fx.Node) -> Any:
        v = _val(x)
        if isinstance(v, torch.Tensor):
            return repr(v.shape), repr(v.stride()), v.dtype, v.device.type
        return repr(v)

    args = repr(fx.node.map_arg((n.args, n.kwargs), lambda x: ("input", inputs.index(x))))
    return (n.target, args, meta(n), *(meta(x) for x in inputs), *(meta(r) for r in roots),
            tuple(roots.index(r) for r in roots))


def _hop_cost(node: fx.Node) -> cost.Cost:
    """associative_scan as Inductor runs it: read a, b, write Π a and h, whole tensors
    (the scan axis stays in one program; the fused kernel writes only h): per element
    2 reads, 2 writes, 3 FLOPs (a1·a2, a2·b1 + b2)."""
    xs = node.args[1]
    n = sum(int(np.prod(hinted_shape(x))) for x in xs) // max(len(xs), 1)
    it = _dtype(xs[0]).itemsize
    return cost.Cost(read_bytes=2 * n * it, write_bytes=2 * n * it, flops=3 * n)


# ---------------------------------------------------------------------------------------
# rewriting


def _to_rlf(g: fx.Graph, x: fx.Node, dim: int, rank: int) -> fx.Node:
    """[..., L (at dim), ...] → [R, L, F] by flattening the axes before and after."""
    if dim == 0:
        x = g.call_function(aten.unsqueeze.default, (x, 0))
    elif dim > 1:
        x = g.call_function(aten.flatten.using_ints, (x, 0, dim - 1))
    if dim == rank - 1:
        x = g.call_function(aten.unsqueeze.default, (x, -1))
    elif dim + 1 < rank - 1:
        x = g.call_function(aten.flatten.using_ints, (x, 2, -1))
    return x


def _state_rf(g: fx.Graph, h0: fx.Node, like_step: fx.Node, dim: int, rank: int) -> fx.Node:
    """h0 broadcast to one step's state and flattened to [R, F]."""
    x = g.call_function(aten.expand_as.default, (h0, like_step))
    x = g.call_function(aten.unsqueeze.default, (x, dim))
    x = _to_rlf(g, x, dim, rank)
    return g.call_function(aten.squeeze.dim, (x, 1))


def apply_linear(gm: fx.GraphModule, rec: Recurrence) -> None:
    """Replace the states by views of one ioaware::linear_scan on a and b."""
    from ioaware.codegen import scan_ops  # noqa: F401  (registers torch.ops.ioaware)

    g = gm.graph
    rank = _val(rec.b).dim()
    region = set(rec.region)
    with g.inserting_before(rec.anchor):
        b = rec.b
        if rec.a_const:
            a = rec.a
            if not isinstance(a, fx.Node):
                a = g.call_function(aten.scalar_tensor.default, (float(a),),
                                    {"dtype": _dtype(b)})
            else:  # a tensor without time: broadcast to one step's state, add the time axis
                for _ in range(rank - 1 - _val(a).dim()):
                    a = g.call_function(aten.unsqueeze.default, (a, 0))
                a = g.call_function(aten.unsqueeze.default, (a, rec.dim))
            a = g.call_function(aten.expand_as.default, (a, b))
        else:
            a = g.call_function(aten.exp.default, (rec.a,)) if rec.a_is_log else rec.a
            pair = g.call_function(aten.broadcast_tensors.default, ([a, b],))
            a = g.call_function(operator.getitem, (pair, 0))
            b = g.call_function(operator.getitem, (pair, 1))
        a3, b3 = _to_rlf(g, a, rec.dim, rank), _to_rlf(g, b, rec.dim, rank)
        h0 = None
        if rec.h0 is not None:
            if rec.keepdim:  # h keeps a time axis of size 1
                step0 = g.call_function(aten.slice.Tensor, (b, rec.dim, 0, 1))
                h0 = g.call_function(aten.expand_as.default, (rec.h0, step0))
                h0 = g.call_function(aten.squeeze.dim, (h0, rec.dim))
                step0 = g.call_function(aten.select.int, (b, rec.dim, 0))
            else:
                h0, step0 = rec.h0, g.call_function(aten.select.int, (b, rec.dim, 0))
            h0 = _state_rf(g, h0, step0, rec.dim, rank)
        h3 = g.call_function(torch.ops.ioaware.linear_scan.default, (a3, b3, h0, rec.reverse))
        h = g.call_function(aten.reshape_as.default, (h3, b))
        if rec.states is not None:
            for t, s in enumerate(rec.states):
                if rec.keepdim:
                    view = g.call_function(aten.slice.Tensor, (h, rec.dim, t, t + 1))
                else:
                    view = g.call_function(aten.select.int, (h, rec.dim, t))
                s.replace_all_uses_with(view, delete_user_cb=lambda u: u not in region)
        else:
            rec.all_states.replace_all_uses_with(h)
    _replace_products(g, rec)
    _erase(g, rec.region)
    gm.recompile()


def _replace_products(g: fx.Graph, rec: Recurrence) -> None:
    """Give the readers of associative_scan's Π a output torch.cumprod of a."""
    if rec.products is None:
        return
    with g.inserting_before(rec.anchor):
        prod = g.call_function(aten.cumprod.default, (rec.a, rec.dim))
    rec.products.replace_all_uses_with(prod)


def _replay_chain(g: fx.Graph, chain: list[fx.Node], start: fx.Node) -> fx.Node:
    """The view ops of `chain` applied to `start` instead of their own input."""
    x = start
    for n in chain:
        x = g.call_function(n.target, (x, *n.args[1:]), dict(n.kwargs))
    return x


def _frame_factor(g: fx.Graph, f: fx.Node, frame: tuple[int, ...], keep: list[int],
                  shape: tuple[int, ...] | None = None) -> fx.Node:
    """Factor f (broadcast to `frame`) as a view over the frame axes `keep` (in frame
    order); every other axis must be 1 in f, where it is selected away. `shape`: f's
    shape, for a node built by the rewrite (no meta yet)."""
    x = f
    shape = hinted_shape(f) if shape is None else shape
    for _ in range(len(frame) - len(shape)):
        x = g.call_function(aten.unsqueeze.default, (x, 0))
    shape = (1,) * (len(frame) - len(shape)) + shape
    target = [frame[i] if i in keep else 1 for i in range(len(frame))]
    if list(shape) != target:
        x = g.call_function(aten.expand.default, (x, target))
    for i in sorted((i for i in range(len(frame)) if i not in keep), reverse=True):
        x = g.call_function(aten.select.int, (x, i, 0))
    return x


def apply_selective(gm: fx.GraphModule, rec: Recurrence, sel: Selective, ro: Readout,
                    epi: Epilogue) -> None:
    """Replace producers, recurrence, readout and epilogue by one ioaware::selective_scan."""
    from ioaware.codegen import scan_ops  # noqa: F401

    g = gm.graph
    frame, t = sel.frame, rec.dim
    bax, dax, nax = [i for i in range(4) if i != t]
    with g.inserting_before(epi.output):
        def seq(f: fx.Node, shape: tuple[int, ...] | None = None) -> fx.Node:  # [Bt, Dc, L]
            x = _frame_factor(g, f, frame, [bax, dax, t], shape)
            pos = sorted([bax, dax, t]).index(t)
            return g.call_function(aten.movedim.int, (x, pos, 2)) if pos != 2 else x

        u, delta, delta_bias = seq(sel.u), seq(sel.delta), None
        if sel.softplus:
            # the replayed chain has the Δ factor's shape
            delta = seq(_replay_chain(g, sel.chain, sel.delta_pre), hinted_shape(sel.delta))
            if sel.delta_bias is not None:
                full = g.call_function(aten.expand.default,
                                       (sel.delta_bias, list(hinted_shape(sel.delta_pre))))
                x = _replay_chain(g, sel.chain, full)
                for _ in range(4 - len(hinted_shape(sel.delta))):
                    x = g.call_function(aten.unsqueeze.default, (x, 0))
                for i in reversed(range(4)):
                    if i != dax:
                        x = g.call_function(aten.select.int, (x, i, 0))
                delta_bias = x
        A = _frame_factor(g, sel.A, frame, [dax, nax])
        b_axes = _axes(sel.B, frame)
        grouped_b = dax in b_axes and frame[dax] != 1
        keep = [bax, dax, t, nax] if grouped_b else [bax, t, nax]
        B = _frame_factor(g, sel.B, frame, keep)
        pos = sorted(keep).index(t)
        B = g.call_function(aten.movedim.int, (B, pos, len(keep) - 2))
        if not grouped_b:
            B = g.call_function(aten.unsqueeze.default, (B, 1))
        # C by its roles → [Bt, G, L, N]
        if ro.grouped:
            C = g.call_function(aten.permute.default, (ro.c, [ro.c_roles.index(r)
                                                              for r in "bdtn"]))
        else:
            C = g.call_function(aten.permute.default, (ro.c, [ro.c_roles.index(r)
                                                              for r in "btn"]))
            C = g.call_function(aten.unsqueeze.default, (C, 1))
        if ro.grouped != grouped_b:
            # one side grouped per channel, the other shared: share by broadcasting
            if not ro.grouped:
                C = g.call_function(aten.expand.default, (C, [-1, frame[dax], -1, -1]))
            else:
                B = g.call_function(aten.expand.default, (B, [-1, frame[dax], -1, -1]))
        h0 = None
        if rec.h0 is not None:
            h0 = g.call_function(aten.expand.default, (rec.h0, [frame[bax], frame[dax],
                                                                 frame[nax]]))
        D = z = None
        if epi.D is not None:
            y_roles = ro.out_roles
            D = _frame_factor(g, epi.D, hinted_shape(ro.output), [y_roles.index("d")])
        if epi.z is not None:
            z = epi.z
            if ro.out_roles != "bdt":
                z = g.call_function(aten.permute.default, (z, [ro.out_roles.index(r)
                                                                for r in "bdt"]))
        res = g.call_function(torch.ops.ioaware.selective_scan.default,
                              (u, delta, A, B, C, D, z, delta_bias, sel.softplus, h0))
        y = g.call_function(operator.getitem, (res, 0))
        h_last = g.call_function(operator.getitem, (res, 1))
        out_dtype = _dtype(epi.output)
        if _dtype(sel.u) != out_dtype:
            y = g.call_function(aten._to_copy.default, (y,), {"dtype": out_dtype})
        if ro.out_roles != "bdt":
            y = g.call_function(aten.permute.default, (y, ["bdt".index(r) for r in ro.out_roles]))
        inside = set(rec.region) | set(ro.nodes)
        lasts = list(ro.last) + ([rec.states[-1]] if rec.states else [])
        for last in lasts:
            if not any(u not in inside for u in last.users):
                continue
            h = h_last
            if _dtype(last) != torch.float32:
                h = g.call_function(aten._to_copy.default, (h_last,), {"dtype": _dtype(last)})
            last.replace_all_uses_with(h, delete_user_cb=lambda u: u not in inside)
    epi.output.replace_all_uses_with(y)
    _replace_products(g, rec)
    _erase(g, [*sel.nodes, *rec.region, *ro.nodes, ro.output, *epi.nodes, *ro.last])
    gm.recompile()


def _erase(g: fx.Graph, nodes: list[fx.Node]) -> None:
    for n in sorted(set(nodes), key=_position, reverse=True):
        if not n.users and n.graph is g:
            g.erase_node(n)
    g.eliminate_dead_code()


# ---------------------------------------------------------------------------------------
# the pass


def _extra_state_users(rec: Recurrence, ro: Readout, epi: Epilogue) -> str | None:
    """Why the states cannot all stay in the kernel, or None. Only the last state may
    have other readers (they get h_last), and only after the fused region's output,
    where h_last is defined."""
    allowed = set(rec.region) | set(ro.nodes)
    readers = [u for n in ro.last for u in n.users]
    if rec.states is not None:
        for t, s in enumerate(rec.states[:-1]):
            extra = [u for u in s.users if u not in allowed]
            if extra:
                return (f"{s.name}: the state of step {t} is used outside the readout "
                        f"({extra[0].name})")
        readers = [u for u in rec.states[-1].users if u not in allowed]
    early = [u for u in readers if _position(u) < _position(epi.output)]
    if early:
        return f"{early[0].name}: reads the last state before the readout is complete"
    return None


def _detail(rec: Recurrence, fused: list[str], kind: str, dtype: torch.dtype, d_state: int
            ) -> dict:
    return {"form": rec.form, "length": rec.length, "d_state": d_state, "fused": fused,
            "op": kind, "dtype": dtype_name(dtype), "reverse": rec.reverse}


def _plan(rec: Recurrence, profile: Any = None
          ) -> tuple[str, Any, Any, list[fx.Node], cost.Cost, dict]:
    """Choose selective (fused producers and readout) or linear; cost of what is replaced.
    A selective scan is priced at the tile tiles.scan_tile gives on `profile`."""
    why_not = None
    if not rec.reverse:
        try:
            ro = match_readout(rec) if rec.states is not None else match_full_readout(rec)
            sel = match_selective(rec)
            epi = match_epilogue(rec, sel, ro)
            extra = _extra_state_users(rec, ro, epi)
            if extra:
                raise NoMatch(extra)
            u_dtype = _dtype(sel.u)
            if u_dtype not in DTYPES.values():
                raise NoMatch(f"{sel.u.name}: u is {u_dtype}")
            bt, dc, n = (sel.frame[i] for i in range(4) if i != rec.dim)
            spec = ScanSpec(kind="selective", dtype=dtype_name(u_dtype), d_state=n,
                            has_h0=rec.h0 is not None, has_D=epi.D is not None,
                            has_z=epi.z is not None, has_delta_bias=sel.delta_bias is not None,
                            delta_softplus=sel.softplus)
            dax = [i for i in range(4) if i != rec.dim][1]
            grouped = ro.grouped or (dax in _axes(sel.B, sel.frame) and dc != 1)
            has_bias = sel.delta_bias is not None
            tile = None if profile is None else tiles.scan_tile(profile, n, u_dtype.itemsize)
            after = cost.selective_scan_cost(
                bt, dc, rec.length, n, u_dtype.itemsize, groups=dc if grouped else 1,
                has_D=epi.D is not None, has_z=epi.z is not None,
                has_delta_bias=has_bias, delta_softplus=sel.softplus,
                block_d=tile and tile["block_d"], chunk=tile and tile["chunk"])
            nodes = [*sel.nodes, *rec.region, *ro.nodes, ro.output, *epi.nodes]
            nodes += _softplus_nodes(sel)
            fused = ["softplus"] * sel.softplus + ["delta_bias"] * has_bias
            detail = _detail(rec, ["discretize", *fused, "readout", *epi.fused],
                             "selective_scan", u_dtype, n)
            detail["spec"] = spec.key()
            if tile:
                detail["tiles"] = tile
            return "selective", sel, (ro, epi), nodes, after, detail
        except NoMatch as e:
            why_not = str(e)
    b_dtype = torch.promote_types(_dtype(rec.b), _dtype(rec.a) if isinstance(rec.a, fx.Node)
                                  and _is_tensor(rec.a) else _dtype(rec.b))
    if b_dtype not in DTYPES.values():
        raise NoMatch(f"{rec.b.name}: the recurrence is in {b_dtype}, not fp16/bf16/fp32")
    state_dtype = _dtype(rec.states[0]) if rec.states else _dtype(rec.all_states)
    if state_dtype != b_dtype:
        raise NoMatch(f"{rec.anchor.name}: the state is {state_dtype} but a, b promote to "
                      f"{b_dtype}")
    rows, feats = _rows_features(hinted_shape(rec.b), rec.dim)
    after = cost.linear_scan_cost(rows, rec.length, feats, b_dtype.itemsize,
                                  has_h0=rec.h0 is not None)
    detail = _detail(rec, [], "linear_scan", b_dtype, 1)
    if why_not:
        detail["not_fused"] = why_not
    return "linear", None, None, list(rec.region), after, detail


def _positions(gm: fx.GraphModule) -> None:
    _POSITIONS.clear()
    _POSITIONS.update({n: i for i, n in enumerate(gm.graph.nodes)})


def candidates(gm: fx.GraphModule) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("hop", n) for n in hop_candidates(gm)]
    out += [("tree", p) for p in tree_candidates(gm)]
    out += [("loop", c) for c in loop_candidates(gm)]
    out += [("matrix", n) for n in matrix_candidates(gm)]
    out += [("closed", n) for n in closed_form_candidates(gm)]
    return out


def _match(gm: fx.GraphModule, kind: str, cand: Any) -> Recurrence:
    if kind == "hop":
        rec = match_hop(gm, cand)
        _unmove(rec)
        return rec
    if kind == "matrix":
        mm = next(_through_views(x) for x in cand.args if _call(_through_views(x), *MATMUL_OPS))
        raise NoMatch(f"{cand.name}: the state goes through a matrix product ({mm.name}), "
                      "h = M·h + b; only diagonal recurrences h = a⊙h + b are rewritten")
    if kind == "closed":
        return match_closed_form(cand)
    if kind == "tree":
        rec = match_tree(gm, *cand)
        _unmove(rec)
        return rec
    return match_loop(cand)


def _alive(gm: fx.GraphModule, kind: str, cand: Any) -> bool:
    nodes = cand if kind in ("tree", "loop") else [cand]
    # _POSITIONS holds exactly the graph's nodes (refreshed after every rewrite); testing
    # `n in gm.graph.nodes` walks the graph, O(L·N) per unrolled loop of L steps
    return all(isinstance(n, fx.Node) and n.graph is gm.graph and n in _POSITIONS
               for n in nodes)


def _name(kind: str, cand: Any) -> str:
    return cand[0].name if kind in ("tree", "loop") else cand.name


def run(
    gm: fx.GraphModule, profile: Any, backend_name: str, hints: dict
) -> tuple[list[Rewrite], list[Fallback]]:
    """Find and rewrite every linear recurrence in `gm`; report what was done and why not."""
    rewrites: list[Rewrite] = []
    fallbacks: list[Fallback] = []
    _positions(gm)  # matching never edits the graph: refreshed only after a rewrite
    for kind, cand in candidates(gm):
        if not _alive(gm, kind, cand):
            continue
        try:
            rec = _match(gm, kind, cand)
            plan, sel, ro, nodes, after, detail = _plan(rec, profile)
            before = region_cost(nodes)
            pays, why = cost.rewrite_pays(before, after, profile, detail["dtype"], hints)
            if not pays:
                raise NoMatch(f"{rec.anchor.name}: rewrite would not pay ({why})")
        except (NoMatch, ValueError) as e:
            fallbacks.append(Fallback(kind="scan", reason=str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - a bug here must not cost the user a crash
            fallbacks.append(Fallback(
                kind="scan",
                reason=f"{_name(kind, cand)}: internal error while matching "
                       f"({type(e).__name__}: {e}); left to eager, please report"))
            continue
        ev_before, ev_after = before.evaluate(hints), after.evaluate(hints)
        if plan == "selective":
            apply_selective(gm, rec, sel, *ro)
        else:
            apply_linear(gm, rec)
        _positions(gm)
        rewrites.append(Rewrite(
            kind="scan", detail=detail,
            hbm_bytes_before=int(ev_before["hbm_bytes"]),
            hbm_bytes_after=int(ev_after["hbm_bytes"]),
            flops=int(ev_after["flops"]), flops_before=int(ev_before["flops"]),
            backend=backend_name, cost_before=before, cost_after=after,
        ))
    return rewrites, fallbacks


__all__ = [
    "NoMatch",
    "Readout",
    "Recurrence",
    "Selective",
    "candidates",
    "match_loop",
    "match_readout",
    "match_selective",
    "match_tree",
    "run",
]
