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

The matchers live beside this file: scan_record.py (the match record and guards),
scan_spellings.py (loops, associative_scan, closed forms), scan_readout.py (the readout
with C) and scan_fusion.py (the selective scan's producers and epilogue); this file
prices, rewrites and runs them.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware import cost
from ioaware.codegen.scan import tiles
from ioaware.codegen.scan.price import linear_scan_cost, selective_scan_cost
from ioaware.explain import Fallback, Rewrite
from ioaware.passes.scan.fusion import (
    Epilogue,
    _axes,
    _softplus_nodes,
    match_epilogue,
    match_selective,
)
from ioaware.passes.scan.readout import (
    _POSITIONS,
    _position,
    match_full_readout,
    match_readout,
)
from ioaware.passes.scan.record import (
    NoMatch,
    Readout,
    Recurrence,
    Selective,
    _call,
    _dtype,
    _is_tensor,
    _val,
    aten,
)
from ioaware.passes.scan.spellings import (
    HOP_TARGETS,
    MATMUL_OPS,
    _through_views,
    _unmove,
    closed_form_candidates,
    hop_candidates,
    loop_candidates,
    match_closed_form,
    match_hop,
    match_loop,
    match_tree,
    matrix_candidates,
    tree_candidates,
)
from ioaware.passes.views import hinted_shape
from ioaware.spec import DTYPES, ScanSpec, dtype_name

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
    roots = [cost.storage_root(x) for x in inputs]

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
    from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers torch.ops.ioaware)

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
    from ioaware.codegen.scan import op as scan_ops  # noqa: F401

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
            after = selective_scan_cost(
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
    after = linear_scan_cost(rows, rec.length, feats, b_dtype.itemsize,
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
