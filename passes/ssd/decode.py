"""The SSD decode step: Mamba-2's single-step state update (L = 1, what transformers runs
as `mamba2_selective_state_update` when a cache holds the state) becomes one
`ioaware::ssd_step`, which updates the state in place (codegen/ssd/step.py).

What the canonical graph holds per mixer and step (transformers 5.25; older versions
copy into the cache's state directly, without the clone):

    S   = clone(S0)                                 the cache's state, [Bt, H, P, N]
    dt' = unsqueeze(softplus(expand(dt) + expand(dt_bias)), -1)         [Bt, H, P, 1]
    S'  = S · exp(dt' · expand(A)) + (dt' · Bh) · x[..., None]          <- the anchor
    S.copy_(S');  y = bmm(S', Ch) + x · expand(D)   (Bh, Ch: B, C [Bt, G, N] repeated
    S0.copy_(S)                                      to heads by reshape/expand/clone)

Per head parameters reach the step broadcast along head_dim (and d_state): each is
taken from under its `expand` and must be constant there (one dt per batch and head).
The region is checked by evaluation (as probe.py does for the chunked form): its nodes
run on random operands and must give the reference step's S' and y.

In place: the op writes S' where eager's last copy puts it, S0 when the clone's only
purpose is to be copied back, else the clone. Eager semantics are kept exactly: any other
reader of that tensor runs wholly before or wholly after the update, as in eager, or
the step stays eager with the reason. A step whose values need gradients stays eager
(the in-place step has no backward).

HBM traffic per step: eager moves the [Bt, H, P, N] state about twelve times (clone,
the decay, the update, their sum, both copies, the bmm) in as many kernels; the fused
step reads and writes it once.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import fx

from ioaware import cost
from ioaware.codegen.ssd import reference
from ioaware.codegen.ssd.price import ssd_step_cost
from ioaware.codegen.ssd.step_op import check_ssd_step
from ioaware.passes.attention.masks import needs_grad
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext
from ioaware.passes.views import hint
from ioaware.spec import dtype_name
from ioaware.verify import TOLERANCE, relative_error

from .chunked import _CASTS, dt_producers, is_call, is_size, live, shape, strip, val
from .probe import _random

aten = torch.ops.aten

# Ops that only reshape, broadcast, cast or copy B and C on their way to the heads.
_GROUP_LAYOUT = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                 aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
                 aten.clone.default, aten.contiguous.default, aten._to_copy.default}
_FORWARD_LAYOUT = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                   aten._to_copy.default, aten.clone.default, aten.contiguous.default}
OPERANDS = ("state", "x", "dt", "dt_bias", "A", "D", "B", "C")


@dataclasses.dataclass
class DecodeStep:
    """One matched step: operand nodes (per-head ones as found, before their reshape to
    [H] or [Bt, H]), the outputs, the tensor updated in place and what to drop."""

    anchor: fx.Node  # S' = decay · S + update
    state: fx.Node  # the S the anchor decays (a clone of the cache's state, or it)
    target: fx.Node  # the tensor the op updates in place
    operands: dict[str, fx.Node | None]  # OPERANDS, D and dt_bias optional
    dt_softplus: bool
    dt_limit: tuple[float, float]
    y: fx.Node  # [Bt, H, P]
    copies: list[fx.Node]  # the copy_ nodes the in-place op replaces, in graph order
    nodes: list[fx.Node]  # the region: from the operands to S' and y, in graph order


def candidates(gm: fx.GraphModule, ctx: PassContext | None = None) -> list[fx.Node]:
    """4-D adds S·exp(·) + (·) whose result is copied into a state: decode steps."""
    out = []
    for n in gm.graph.nodes:
        if not is_call(n, aten.add.Tensor) or len(shape(n) or ()) != 4:
            continue
        decays = [a for a in n.args[:2] if is_call(a, aten.mul.Tensor)
                  and any(is_call(strip(b), aten.exp.default) for b in a.args[:2])]
        if decays and _copy_of(n) is not None:
            out.append(n)
    return out


def _copy_of(node: fx.Node) -> fx.Node | None:
    """The copy_(dest, node) (through a cast) that stores `node` in a state, if any."""
    for u in node.users:
        if is_call(u, aten.copy_.default) and u.args[1] is node:
            return u
        if is_call(u, *_CASTS) and len(u.users) == 1:
            (w,) = u.users
            if is_call(w, aten.copy_.default) and w.args[1] is u:
                return w
    return None


def _factors(node: object) -> list[object]:
    """The factors of a product (nested muls, through casts)."""
    base = strip(node) if isinstance(node, fx.Node) else node
    if is_call(base, aten.mul.Tensor):
        return _factors(base.args[0]) + _factors(base.args[1])
    return [node]


def _per_head(node: fx.Node, name: str, target: tuple[int, ...]) -> fx.Node:
    """The tensor `node` broadcasts along its trailing axes: the base of its `expand`
    when that has shape `target` + (1, ...), or the node itself at shape `target`."""
    base = strip(node)
    if shape(base) == target:
        return base
    if is_call(base, aten.expand.default):
        inner = base.args[0]
        extra = len(shape(base)) - len(target)
        if shape(inner) == target + (1,) * extra:
            return inner
    raise NoMatch(f"{node.name}: {name} of shape {shape(node)} is not one value per "
                  f"{'(batch, head)' if len(target) == 2 else 'head'} {list(target)} "
                  f"broadcast along head_dim; the fused step takes one")


def _group_source(node: fx.Node, batch: int, heads: int, d_state: int) -> fx.Node:
    """B or C before their repetition to heads: the deepest [Bt, G, N] (G | H) node
    under `node` through reshapes, broadcasts and copies."""
    found, n = None, node
    while True:
        s = shape(n)
        if (s is not None and len(s) == 3 and s[0] == batch and s[2] == d_state
                and s[1] and heads % s[1] == 0):
            found = n
        if not is_call(n, *_GROUP_LAYOUT) or not isinstance(n.args[0], fx.Node):
            break
        n = n.args[0]
    if found is None:
        raise NoMatch(f"{node.name}: no [Bt, G, N] = [{batch}, G, {d_state}] tensor "
                      f"(G | {heads}) under this operand of the step")
    return found


def _follow(node: fx.Node, ops: set) -> fx.Node:
    """Down a chain of single-user `ops` from `node`: the last node of the chain."""
    while len(node.users) == 1 and is_call(next(iter(node.users)), *ops):
        node = next(iter(node.users))
    return node


def _output(anchor: fx.Node, copy: fx.Node, x: fx.Node, batch: int, heads: int,
            head_dim: int, d_state: int) -> tuple[fx.Node, fx.Node, fx.Node | None]:
    """(y, C, D): y = (S' contracted with C by a bmm) + x · D, past its casts."""
    paths = [u for u in anchor.users if u is not copy and u is not copy.args[1]]
    if len(paths) != 1:
        raise NoMatch(f"{anchor.name}: the new state is read by {len(paths)} nodes besides "
                      f"its copy into the state; expected one contraction with C")
    bmm = paths[0]
    while is_call(bmm, *_FORWARD_LAYOUT) and len(bmm.users) == 1:
        bmm = next(iter(bmm.users))
    if not is_call(bmm, aten.bmm.default):
        raise NoMatch(f"{anchor.name}: the new state is not contracted with C by a bmm")
    C = _group_source(bmm.args[1], batch, heads, d_state)
    y = _follow(bmm, _FORWARD_LAYOUT)
    if shape(y) != (batch, heads, head_dim):
        raise NoMatch(f"{bmm.name}: the contraction gives {shape(y)}, not [Bt, H, P]")
    D = None
    if len(y.users) == 1 and is_call(add := next(iter(y.users)), aten.add.Tensor):
        other = add.args[1] if add.args[0] is y else add.args[0]
        factors = [strip(f) for f in _factors(other)]
        if len(factors) == 2 and x in factors:
            d = factors[1 - factors.index(x)]
            D = _per_head(d, "D", (heads,))
            y = _follow(add, _CASTS)
    return y, C, D


def _region(outputs: list[fx.Node], leaves: set[fx.Node]) -> list[fx.Node]:
    """The nodes from `leaves` (and symbolic sizes) to `outputs`."""
    nodes, todo = set(), list(outputs)
    while todo:
        n = todo.pop()
        if n in nodes or n in leaves or is_size(n):
            continue
        if n.op != "call_function":
            raise NoMatch(f"{n.name}: the step reads {n.op} {n.target}, not one of its "
                          f"operands {list(OPERANDS)}")
        nodes.add(n)
        todo.extend(n.all_input_nodes)
    return list(nodes)


def match_step(gm: fx.GraphModule, anchor: fx.Node) -> DecodeStep:
    """The decode step around `anchor`, or NoMatch naming what differs."""
    copy = _copy_of(anchor)
    decayed, update = None, None
    for a, b in (anchor.args[:2], anchor.args[1::-1]):
        fs = _factors(a)
        if len(fs) == 2 and any(is_call(strip(f), aten.exp.default) for f in fs):
            decayed, update = a, b
            break
    if decayed is None:
        raise NoMatch(f"{anchor.name}: not S · exp(dt·A) + update")
    exp_f, S = sorted(_factors(decayed), key=lambda f: not is_call(strip(f), aten.exp.default))
    if S is not copy.args[0] or shape(S) != shape(anchor):
        raise NoMatch(f"{anchor.name}: the decayed state {S.name} is not the one the new "
                      f"state is copied into ({copy.args[0].name})")
    batch, heads, head_dim, d_state = shape(anchor)
    e = _factors(strip(exp_f).args[0])
    dt4 = [f for f in e if shape(f) == (batch, heads, head_dim, 1)]
    a3 = [f for f in e if len(shape(f) or ()) == 3]
    if len(e) != 2 or len(dt4) != 1 or len(a3) != 1:
        raise NoMatch(f"{exp_f.name}: the decay is not exp(dt[..., None] · A)")
    unsq = strip(dt4[0])
    if not is_call(unsq, aten.unsqueeze.default):
        raise NoMatch(f"{dt4[0].name}: dt is not unsqueezed along d_state")
    raw, dt_bias, softplus, dt_limit, _ = dt_producers(unsq.args[0])
    dt = _per_head(raw, "dt", (batch, heads))
    dt_bias = _per_head(dt_bias, "dt_bias", (heads,)) if dt_bias is not None else None
    A = _per_head(a3[0], "A", (heads,))
    fs = _factors(update)
    rest = [f for f in fs if strip(f) is not unsq]
    x4 = [f for f in rest if shape(f) == (batch, heads, head_dim, 1)]
    b4 = [f for f in rest if shape(f) == (batch, heads, 1, d_state)]
    if len(fs) != 3 or len(rest) != 2 or len(x4) != 1 or len(b4) != 1:
        raise NoMatch(f"{anchor.name}: the update is not dt · B · x[..., None]")
    x = strip(strip(x4[0]).args[0]) if is_call(strip(x4[0]), aten.unsqueeze.default) \
        else None
    if x is None or shape(x) != (batch, heads, head_dim):
        raise NoMatch(f"{x4[0].name}: x is not a [Bt, H, P] tensor unsqueezed")
    B = _group_source(b4[0], batch, heads, d_state)
    y, C, D = _output(anchor, copy, x, batch, heads, head_dim, d_state)
    # (grad mode as the user runs the graph: generate() runs without it)
    if torch.is_grad_enabled() and (needs_grad(anchor) or needs_grad(y)):
        raise NoMatch(f"{anchor.name}: the decode step needs gradients here; the fused "
                      f"step updates its state in place and has no backward")
    operands = {"state": S, "x": x, "dt": dt, "dt_bias": dt_bias, "A": A, "D": D,
                "B": B, "C": C}
    leaves = {n for n in operands.values() if n is not None}
    outputs = [anchor, y] + ([copy.args[1]] if copy.args[1] is not anchor else [])
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes = sorted(_region(outputs, leaves), key=order.get)
    if copy in nodes:
        raise NoMatch(f"{copy.name}: y reads the state after its copy; expected the new "
                      f"state itself")
    _check_private(nodes, {anchor: {copy, copy.args[1]}, copy.args[1]: {copy}, y: None})
    target, copies = _in_place_target(S, copy, nodes, order,
                                      max(order[n] for n in leaves))
    return DecodeStep(anchor, S, target, operands, softplus, dt_limit, y, copies, nodes)


def _check_private(nodes: list[fx.Node], allowed: dict[fx.Node, set | None]) -> None:
    """Every intermediate is read only inside the region (dead readers aside); the
    outputs in `allowed` may also be read by the nodes given (None: by anything)."""
    inside, memo = set(nodes), {}
    for n in nodes:
        extra = allowed.get(n, set())
        if extra is None or val(n) is None:  # (size arithmetic may be shared: it stays)
            continue
        outside = [u for u in n.users if u not in inside and u not in extra
                   and live(u, memo)]
        if outside:
            raise NoMatch(f"{n.name}: an intermediate of the decode step is also read by "
                          f"{outside[0].name}")


def _in_place_target(S: fx.Node, copy: fx.Node, nodes: list[fx.Node],
                     order: dict[fx.Node, int], last_leaf: int
                     ) -> tuple[fx.Node, list[fx.Node]]:
    """(the tensor to update in place, the copy_ nodes that become redundant)."""
    target, copies = S, [copy]
    back = [u for u in copy.users if is_call(u, aten.copy_.default) and u.args[1] is copy]
    if (is_call(S, aten.clone.default) and len(S.users) == 2 and len(copy.users) == 1
            and len(back) == 1 and back[0].args[0] is S.args[0] and not back[0].users
            and isinstance(S.args[0], fx.Node)):
        target, copies = S.args[0], [copy, back[0]]  # clone, update, copy back: in S0
    final = copies[-1]
    at = max(last_leaf, order[target])  # the op runs right after its last operand
    mine = {S, *copies, *nodes}
    for u in target.users:
        if u in mine:
            continue
        if not (order[u] < min(at, order[copies[0]]) or order[u] > max(at, order[final])):
            raise NoMatch(f"{u.name}: reads the state {target.name} between the step and "
                          f"its copy; updating it in place would change what it reads")
    return target, copies


def probe(step: DecodeStep) -> None:
    """NoMatch unless the region, run on random operands, gives the reference step.

    Symbolic sizes (a graph dynamo recompiled with automatic dynamic shapes, e.g. after
    a call at another group count) are probed at dynamo's example values; the region's
    ops are the same at every value, so a spelling that is the step there is the step
    at the others, except where the example hides the grouping (one head per group:
    head h → group h // (H/G) and h % G agree), which is refused."""
    batch, heads = (hint(s) for s in shape(step.operands["x"])[:2])
    heads_size, groups = shape(step.operands["x"])[1], shape(step.operands["B"])[1]
    same = isinstance(heads_size, torch.SymInt) and heads_size.node.expr == groups.node.expr
    if isinstance(groups, torch.SymInt) and heads == hint(groups) and not same:
        raise NoMatch(f"{step.operands['B'].name}: the group count is symbolic and equals "
                      f"the heads ({heads}) in the example; probing there cannot tell "
                      f"which group each head reads")
    g = fx.Graph()
    env = {}
    names = [k for k in OPERANDS if step.operands[k] is not None]
    for k in names:
        env[step.operands[k]] = g.placeholder(k)
    for n in step.nodes:
        for a in n.all_input_nodes:
            if is_size(a):
                env[a] = hint(a.meta["val"])
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output((env[step.anchor], env[step.y]))
    module = fx.GraphModule(torch.nn.Module(), g)
    gen = torch.Generator().manual_seed(0)
    args = {k: _random(step.operands[k], "dt" if k == "dt_bias" else k, gen)
            for k in names}
    with torch.no_grad():
        # the region may update its state in place (a copy_ inside it): a fresh copy
        new, y = module(*(args[k].clone() for k in names))
        y_ref, new_ref = reference.ssd_step(
            args["state"], args["x"], args["dt"].reshape(batch, heads),
            args["A"].reshape(heads), args["B"], args["C"],
            args["D"].reshape(heads) if "D" in args else None,
            args["dt_bias"].reshape(heads) if "dt_bias" in args else None,
            step.dt_softplus, step.dt_limit)
    tol = max(TOLERANCE.get(val(step.y).dtype, 1e-4),
              TOLERANCE.get(val(step.operands["x"]).dtype, 1e-4))
    err = max(relative_error(new.float(), new_ref), relative_error(y.float(), y_ref))
    if not err <= tol:
        raise NoMatch(f"{step.anchor.name}: the region does not compute the SSD step "
                      f"(relative error {err:.3g} against it on random operands)")


def _match(gm: fx.GraphModule, anchor: fx.Node, ctx: PassContext) -> Match:
    step = match_step(gm, anchor)
    probe(step)
    ops = {k: val(n) for k, n in step.operands.items() if n is not None}
    x, B, state = ops["x"], ops["B"], ops["state"]
    batch, heads, head_dim = x.shape
    groups, d_state = B.shape[1], B.shape[2]
    # the op's own checks, at the shapes it will be called with (ValueError: fallback)
    check_ssd_step(state, x, ops["dt"].reshape(batch, heads), ops["A"].reshape(heads), B,
                   ops["C"], *(ops[k].reshape(heads) if k in ops else None
                               for k in ("D", "dt_bias")))
    before = sum((c for c in map(cost.node_cost, [*step.nodes, *step.copies])
                  if c is not None), cost.Cost.zero())
    after = ssd_step_cost(batch, heads, head_dim, d_state, groups, x.dtype.itemsize,
                          state.dtype.itemsize)
    fused = [name for name, present in (
        ("dt_bias", step.operands["dt_bias"] is not None), ("softplus", step.dt_softplus),
        ("dt_clamp", step.dt_limit != (-math.inf, math.inf)),
        ("D", step.operands["D"] is not None)) if present]
    detail = {"spelling": "decode step (L = 1 state update)", "heads": heads,
              "groups": groups, "head_dim": head_dim, "d_state": d_state, "fused": fused,
              "in_place": step.target.name, "dtype": dtype_name(x.dtype),
              "state_dtype": dtype_name(state.dtype)}
    return Match(plan=step, anchor=anchor.name, before=before, after=after,
                 dtype=dtype_name(x.dtype), detail=detail)


def _squeezed(g: fx.Graph, node: fx.Node | None, ndim: int) -> fx.Node | None:
    """`node` without its trailing size-1 axes past the first `ndim` (what _per_head
    found under the broadcast): a squeeze, so no size, symbolic or not, is spelt."""
    if node is None or val(node).dim() == ndim:
        return node
    dims = list(range(ndim, val(node).dim()))
    out = g.call_function(aten.squeeze.dims, (node, dims))
    out.meta["val"] = val(node).squeeze(dims)
    return out


def _apply(gm: fx.GraphModule, step: DecodeStep) -> None:
    g = gm.graph
    order = {n: i for i, n in enumerate(g.nodes)}
    ops = step.operands
    last = max([n for n in ops.values() if n is not None] + [step.target], key=order.get)
    with g.inserting_before(last.next):  # (inserting_after would reverse their order)
        A, D, dt_bias = (_squeezed(g, ops[k], 1) for k in ("A", "D", "dt_bias"))
        dt = _squeezed(g, ops["dt"], 2)
        call = g.call_function(torch.ops.ioaware.ssd_step.default, (
            step.target, ops["x"], dt, A, ops["B"], ops["C"], D, dt_bias,
            step.dt_softplus, *step.dt_limit))
        call.meta["val"] = val(ops["x"])
        y = call
        if val(step.y).dtype != val(ops["x"]).dtype:  # (the same dtype: no copy)
            y = g.call_function(aten._to_copy.default, (call,), {"dtype": val(step.y).dtype})
            y.meta["val"] = val(step.y)
    step.y.replace_all_uses_with(y)
    for c in reversed(step.copies):  # eager's copies: the state is updated in place now
        c.replace_all_uses_with(step.target)
        g.erase_node(c)
    for n in reversed(step.nodes):
        if not n.users:
            g.erase_node(n)
    if step.state is not step.target and not step.state.users:
        g.erase_node(step.state)  # the clone that only carried the update
    g.lint()


SSD_DECODE = Pass(
    name="ssd_decode",
    why="Mamba-2's decode step (L = 1 state update) becomes one in-place SSD step kernel",
    candidates=candidates,
    match=_match,
    apply=_apply,
)
