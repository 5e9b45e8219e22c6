"""Matching the chunked SSD spelling (transformers' `mamba2_chunk_scan`, the PyTorch
`torch_forward` of Mamba-2 and of every hybrid that copies its mixer) in the canonical
graph, and finding the region's operands.

What the canonical graph holds (transformers 5.25, CPU, fp32 and bf16):

    dt'  = clamp(softplus(dt + dt_bias), 0, inf)            [Bt, L, H]
    xdt  = x · dt'[..., None];  dA = A · dt'                 then pad L to the chunk, view
    Bh, Ch = repeat_interleave(B, C, H / G, dim=2)           as [Bt, c, Q, ...]
    cs   = cumsum(permute(dA), -1)                          <- the anchor
    exp(segment_sum(·)) (cumsum, masked_fill ±, exp), bmm chains for the einsums,
    cat([h0[:, None] or zeros, states]), the inter-chunk exp(segment_sum), bmm,
    y = (Y_diag + Y_off) + D[..., None] · pad(x), sliced to L;  final = new_states[:, -1]

The matcher finds the anchor's producers structurally (dt, its bias, softplus and
clamp; A; x; D through the output's residual add; h0 through the cat) and B and C as
the inputs of the two `repeat_interleave`s the region reads. It does not check the
einsum chain node by node: `probe.py` evaluates the region on random operands and
compares it with the SSD reference, which any other computation fails.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import fx

from ioaware.passes.driver import NoMatch
from ioaware.passes.views import hint

aten = torch.ops.aten

# Ops that only move, cast or pad data between the anchor and what feeds it.
_LAYOUT = {aten.permute.default, aten.reshape.default, aten.view.default, aten.pad.default,
           aten.constant_pad_nd.default, aten._to_copy.default, aten.clone.default,
           aten.contiguous.default, aten.unsqueeze.default, aten.transpose.int}
_CASTS = {aten._to_copy.default, aten.clone.default, aten.contiguous.default}
# Ops that make constants (the segment_sum masks): no operand. (zeros_like, the missing
# h0, reads the region's own states for its shape: an ordinary node of the region.)
_CONSTANT = {aten.ones.default, aten.zeros.default, aten.full.default, aten.arange.default,
             aten.arange.start, aten.arange.start_step, aten.scalar_tensor.default,
             aten.empty.memory_format}


@dataclasses.dataclass
class ChunkedSSD:
    """One matched region: its operands (graph nodes), its outputs and its nodes."""

    anchor: fx.Node  # the cumsum of dt·A inside chunks
    x: fx.Node
    dt: fx.Node  # before the bias and softplus when those are fused
    A: fx.Node
    B: fx.Node
    C: fx.Node
    D: fx.Node | None
    dt_bias: fx.Node | None
    dt_softplus: bool
    dt_limit: tuple[float, float]  # the clamp after softplus; (-inf, inf): none
    h0: fx.Node | None
    y: fx.Node | None  # the region's output [Bt, L, H, P]; None when unused
    final: fx.Node | None  # the final state [Bt, H, P, N], when the region returns it
    chunk: int
    nodes: list[fx.Node]  # every node of the region, in graph order
    spelling: str = "chunked (segment_sum, einsum chain)"  # for explain


def val(node: object) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def shape(node: object) -> tuple | None:
    v = val(node)
    return tuple(v.shape) if v is not None else None


def is_call(node: object, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def strip(node: fx.Node, ops=_CASTS) -> fx.Node:
    """The node under a chain of `ops` (casts by default)."""
    while is_call(node, *ops) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def is_size(node: fx.Node) -> bool:
    """A graph input that is a symbolic size (dynamo's SymInt placeholders): what a
    graph recompiled with automatic dynamic shapes reads for, e.g., the batch."""
    return node.op == "placeholder" and isinstance(node.meta.get("val"), torch.SymInt)


def live(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    """Whether the node's value reaches the graph's output or a side effect (what dead
    code, e.g. an output nobody reads, does not)."""
    if node not in memo:
        memo[node] = True  # cycles cannot occur; this only guards re-entry
        memo[node] = (node.op == "output" or node.is_impure()
                      or any(live(u, memo) for u in node.users))
    return memo[node]


def candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """cumsum nodes over the last axis whose input, under layout ops, is a product of a
    3-D tensor and a 1-D one (dt·A): where a chunked SSD may be."""
    out = []
    for n in gm.graph.nodes:
        if not is_call(n, aten.cumsum.default) or val(n) is None:
            continue
        src = strip(n.args[0], _LAYOUT)
        if is_call(src, aten.mul.Tensor) and sorted(
                len(shape(a) or ()) for a in src.args[:2]) == [1, 3]:
            out.append(n)
    return out


def dt_producers(dt: fx.Node
                  ) -> tuple[fx.Node, fx.Node | None, bool, tuple[float, float], fx.Node]:
    """(raw dt, dt_bias or None, softplus?, (dt_min, dt_max), the node x is multiplied
    by) from dt' = clamp(softplus(dt + dt_bias), dt_min, dt_max), each part optional."""
    used = dt
    node = strip(dt)
    limit = (-math.inf, math.inf)
    if is_call(node, aten.clamp.default):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
            raise NoMatch(f"{node.name}: dt clamped to tensor bounds; only numbers are fused")
        limit = (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
        node = strip(node.args[0])
    softplus = False
    if is_call(node, aten.softplus.default):
        beta = node.args[1] if len(node.args) > 1 else 1
        threshold = node.args[2] if len(node.args) > 2 else 20
        if beta != 1 or threshold != 20:
            raise NoMatch(f"{node.name}: softplus(beta={beta}, threshold={threshold}); the "
                          f"kernel fuses beta=1, threshold=20")
        softplus = True
        node = strip(node.args[0])
    bias = None
    if is_call(node, aten.add.Tensor) and len(node.args) == 2:
        a, b = node.args
        # the bias has fewer axes than dt: [H] + [Bt, L, H] here, [H, P] + [Bt, H, P]
        # in the decode step (decode.py)
        rank = len(shape(node) or ())
        if 0 < len(shape(b) or ()) < rank == len(shape(a) or ()):
            bias, node = strip(b), a
        elif 0 < len(shape(a) or ()) < rank == len(shape(b) or ()):
            bias, node = strip(a), b
    return node, bias, softplus, limit, used


def match(gm: fx.GraphModule, anchor: fx.Node) -> ChunkedSSD:
    """The region around the cumsum `anchor`, or NoMatch naming what differs."""
    dA = strip(anchor.args[0], _LAYOUT)
    a0, a1 = dA.args[:2]
    A, dt_used = (a0, a1) if len(shape(a0)) == 1 else (a1, a0)
    A = strip(A)
    dt, dt_bias, softplus, dt_limit, dt_used = dt_producers(dt_used)
    batch, length, heads = shape(dt_used)
    if shape(A) != (heads,):
        raise NoMatch(f"{dA.name}: the decay {A.name} has shape {shape(A)}, not one "
                      f"scalar per head [{heads}]")
    # the source's chunk (for explain and the probe's lengths; the kernel picks its own):
    # under a symbolic length it is padded_len // n_chunks, whose value is its example's
    chunk = hint(shape(anchor)[-1])
    x = _x_of(dt_used, dA, batch, length, heads)
    y, D = _output(gm, anchor, x)
    final, h0 = _final_state(gm, anchor, y)
    if y is None and final is None:
        raise NoMatch(f"{anchor.name}: neither the output nor the final state is used")
    known = {x, dt, A} | {n for n in (D, dt_bias, h0) if n is not None}
    nodes, leaves = region(gm, [n for n in (y, final) if n is not None], known)
    bc = [n for n in leaves if n not in known]
    if y is None and len(bc) == 1:  # only the final state: C is never read; any will do
        bc = bc * 2
    if len(bc) != 2:
        raise NoMatch(f"{anchor.name}: the region reads {[n.name for n in bc]} besides "
                      f"x, dt, A, D, dt_bias, h0; expected B and C only")
    for n in bc:
        s = shape(n)
        if s is None or len(s) != 4 or s[:2] != (batch, length) or heads % s[2]:
            raise NoMatch(f"{n.name}: shape {s} is not [Bt, L, G, N] with G | H for B/C")
    return ChunkedSSD(anchor, x, dt, A, bc[0], bc[1], D, dt_bias, softplus, dt_limit, h0,
                      y, final, chunk, nodes)


def _x_of(dt_used: fx.Node, dA: fx.Node, batch: int, length: int, heads: int) -> fx.Node:
    """x from x·dt'[..., None] (the other use of dt', through casts and unsqueezes)."""
    base = strip(dt_used)
    todo, seen = [base], set()
    while todo:
        node = todo.pop()
        for user in node.users:
            if user is dA or user in seen:
                continue
            seen.add(user)
            if is_call(user, *_CASTS, aten.unsqueeze.default):
                todo.append(user)
            elif is_call(user, aten.mul.Tensor):
                for operand in user.args[:2]:
                    s = shape(operand)
                    if (operand is not node and s is not None and len(s) == 4
                            and s[:3] == (batch, length, heads)):
                        return strip(operand)
    raise NoMatch(f"{dt_used.name}: no x·dt[..., None] of shape [Bt, L, H, P] uses dt")


def _forward(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def _output(gm: fx.GraphModule, anchor: fx.Node, x: fx.Node
            ) -> tuple[fx.Node | None, fx.Node | None]:
    """(y, D): the first node after the anchor shaped like x, past the D residual add
    (D[..., None] · x, padded or not) and a slice back to L (and slices that keep all)."""
    x_shape = shape(x)
    after = _forward(anchor)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    shaped = sorted((n for n in after if shape(n) is not None and len(shape(n)) == 4
                     and shape(n)[0] == x_shape[0] and shape(n)[2:] == x_shape[2:]
                     and shape(n)[1] >= x_shape[1]), key=order.get)
    if not shaped:
        raise NoMatch(f"{anchor.name}: no output shaped like x {x_shape} follows")
    y, D = shaped[0], None
    while True:
        users = list(y.users)
        if len(users) != 1:
            break
        user = users[0]
        if is_call(user, aten.add.Tensor) and D is None:
            other = user.args[1] if user.args[0] is y else user.args[0]
            D = _residual_D(other, x)
            if D is None:
                break
            y = user
        elif is_call(user, aten.slice.Tensor) and (user.args[1] == 1 or _whole(user)):
            y = user
        else:
            break
    if shape(y) != x_shape and not y.users:
        return None, D  # y unused (only the final state is): dead code, left out
    if shape(y) != x_shape:
        raise NoMatch(f"{y.name}: the output has shape {shape(y)}, not x's {x_shape}")
    return y, D


def _whole(node: fx.Node) -> bool:
    """A slice that keeps everything (`t[:, :L]` at symbolic sizes also slices dim 0
    from 0 to the end, which a static trace drops)."""
    start, end, step = (list(node.args[2:]) + [0, None, 1][len(node.args) - 2:])[:3]
    return start == 0 and step == 1 and (end is None or end >= 2**62)


def _residual_D(term: object, x: fx.Node) -> fx.Node | None:
    """D when `term` is D[:, None] · x (x padded along L, cast or not)."""
    if not is_call(term, aten.mul.Tensor):
        return None
    a, b = term.args[:2]
    for d, xx in ((a, b), (b, a)):
        if strip(xx, _CASTS | {aten.pad.default, aten.constant_pad_nd.default}) is x:
            d = strip(d, _CASTS | {aten.unsqueeze.default})
            if len(shape(d) or ()) == 1:
                return d
    return None


def _final_state(gm: fx.GraphModule, anchor: fx.Node, y: fx.Node
                 ) -> tuple[fx.Node | None, fx.Node | None]:
    """(the final state node, h0): the first `cat([h0[:, None] or zeros, chunk states],
    1)` after the anchor gives h0; the first `select(·, 1, -1)` of what follows it, before
    y, the final state (later ones belong to the next layer's region)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    end = order[y] if y is not None else len(order)
    cats = sorted((n for n in _forward(anchor) if is_call(n, aten.cat.default)
                   and len(n.args[0]) == 2 and n.args[1] in (1, -4)), key=order.get)
    if not cats or order[cats[0]] > end:
        raise NoMatch(f"{anchor.name}: no cat of the initial and the chunk states follows")
    cat = cats[0]
    first = strip(cat.args[0][0])
    h0 = strip(first.args[0]) if is_call(first, aten.unsqueeze.default) else None
    selects = sorted((m for m in _forward(cat) if is_call(m, aten.select.int)
                      and m.args[1:] == (1, -1) and len(shape(m) or ()) == 4
                      and order[m] < end), key=order.get)
    return (selects[0] if selects else None), h0


def region(gm: fx.GraphModule, outputs: list[fx.Node], known: set[fx.Node],
           inputs_are_leaves: bool = False) -> tuple[list[fx.Node], list[fx.Node]]:
    """The nodes the outputs are computed from, back to the known operands and the
    inputs of `repeat_interleave` (B and C before their expansion to heads); and the
    leaves (operands) reached. Another graph input is a leaf where `inputs_are_leaves`,
    else NoMatch."""
    nodes, leaves, todo = set(), [], list(outputs)
    while todo:
        n = todo.pop()
        if n in nodes or n in leaves or is_size(n):
            continue
        if n in known or (inputs_are_leaves and n.op != "call_function"):
            leaves.append(n)
            continue
        if n.op != "call_function":
            raise NoMatch(f"{n.name}: the region reads {n.op} {n.target}, not an SSD operand")
        nodes.add(n)
        if is_call(n, aten.repeat_interleave.self_int):
            leaf = strip(n.args[0])
            for c in _chain(n.args[0], leaf):
                nodes.add(c)
            if leaf not in leaves:
                leaves.append(leaf)
            continue
        if is_call(n, *_CONSTANT):
            continue
        todo.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(nodes, key=order.get), sorted(dict.fromkeys(leaves), key=order.get)


def _chain(top: fx.Node, bottom: fx.Node) -> list[fx.Node]:
    out = []
    while top is not bottom:
        out.append(top)
        top = top.args[0]
    return out
