"""Rewriting a scan region: the graph edits that call `ioaware::linear_scan` on a and b,
or `ioaware::selective_scan` in place of the producers, recurrence, readout and epilogue.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ioaware.codegen.scan.spec import ScanKind
from ioaware.passes.scan.fusion import Epilogue, frame_axes
from ioaware.passes.scan.order import NodeOrder
from ioaware.passes.scan.plan import ScanPlan
from ioaware.passes.scan.record import Readout, Recurrence, Selective, aten, dtype_of, fake_value
from ioaware.passes.views import hinted_shape


def apply(gm: fx.GraphModule, plan: ScanPlan) -> None:
    """Rewrite the region `plan` describes, then take the graph's new node order."""
    if plan.kind is ScanKind.SELECTIVE:
        apply_selective(gm, plan.rec, plan.selective, plan.readout, plan.epilogue, plan.order)
    else:
        apply_linear(gm, plan.rec, plan.order)
    plan.order.refresh(gm)


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


def apply_linear(gm: fx.GraphModule, rec: Recurrence, order: NodeOrder) -> None:
    """Replace the states by views of one ioaware::linear_scan on a and b."""
    from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers torch.ops.ioaware)

    g = gm.graph
    rank = fake_value(rec.b).dim()
    region = set(rec.region)
    with g.inserting_before(rec.anchor):
        b = rec.b
        if rec.a_const:
            a = rec.a
            if not isinstance(a, fx.Node):
                a = g.call_function(aten.scalar_tensor.default, (float(a),),
                                    {"dtype": dtype_of(b)})
            else:  # a tensor without time: broadcast to one step's state, add the time axis
                for _ in range(rank - 1 - fake_value(a).dim()):
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
    _erase(g, rec.region, order)
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
                    epi: Epilogue, order: NodeOrder) -> None:
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
        b_axes = frame_axes(sel.B, frame)
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
        out_dtype = dtype_of(epi.output)
        if dtype_of(sel.u) != out_dtype:
            y = g.call_function(aten._to_copy.default, (y,), {"dtype": out_dtype})
        if ro.out_roles != "bdt":
            y = g.call_function(aten.permute.default, (y, ["bdt".index(r) for r in ro.out_roles]))
        inside = set(rec.region) | set(ro.nodes)
        lasts = list(ro.last) + ([rec.states[-1]] if rec.states else [])
        for last in lasts:
            if not any(u not in inside for u in last.users):
                continue
            h = h_last
            if dtype_of(last) != torch.float32:
                h = g.call_function(aten._to_copy.default, (h_last,), {"dtype": dtype_of(last)})
            last.replace_all_uses_with(h, delete_user_cb=lambda u: u not in inside)
    epi.output.replace_all_uses_with(y)
    _replace_products(g, rec)
    _erase(g, [*sel.nodes, *rec.region, *ro.nodes, ro.output, *epi.nodes, *ro.last], order)
    gm.recompile()


def _erase(g: fx.Graph, nodes: list[fx.Node], order: NodeOrder) -> None:
    for n in sorted(set(nodes), key=order, reverse=True):
        if not n.users and n.graph is g:
            g.erase_node(n)
    g.eliminate_dead_code()
