"""Matching the producers and consumers a selective scan fuses: the discretisation
(exp(Δ·A), Δ·B·u, softplus of Δ plus its bias) and the epilogue (D·u skip, silu(z) gate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx

from ioaware.passes.driver import NoMatch
from ioaware.passes.scan.readout import (
    insert_role,
)
from ioaware.passes.scan.record import (
    CAST_OPS,
    Readout,
    Recurrence,
    Selective,
    aten,
    dtype_of,
    is_add,
    is_call,
    is_mul,
    is_static,
    is_tensor,
    same_structure,
)
from ioaware.passes.views import LAYOUT_OPS, hinted_shape
from ioaware.spec import DTYPES

# ---------------------------------------------------------------------------------------
# matching: the producers of a selective scan


def _factors(node: Any, limit: int = 4) -> list[Any]:
    """Leaves of a tree of mul.Tensor whose inner nodes have one user."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if is_mul(n) and (n is node or len(n.users) == 1) and len(out) + len(stack) < limit:
            stack.extend(n.args)
        else:
            out.append(n)
    return out


def frame_axes(f: Any, frame: tuple[int, ...]) -> set[int] | None:
    """Frame axes on which factor f varies (its shape aligned right), None if it does not
    broadcast to the frame."""
    if not is_tensor(f):
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
    if not ((rec.a_is_log or is_call(a, aten.exp.default)) and is_static(a) and is_static(b)):
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
    axes_a = [frame_axes(f, frame) for f in fa]
    axes_b = [frame_axes(f, frame) for f in fb]
    if None in axes_a or None in axes_b:
        raise NoMatch(f"{a.name}: a factor does not broadcast to the frame {frame}")
    delta = A = None
    for i in (0, 1):
        d_, A_ = fa[i], fa[1 - i]
        if (any(same_structure(d_, f) for f in fb) and nax not in axes_a[i] and
                not axes_a[1 - i] & {bax, t_ax}):
            delta, A = d_, A_
            break
    if delta is None:
        raise NoMatch(f"{a.name}: exp(x·y) where neither factor is a Δ shared with b "
                      "(varying over batch, channel, time) times an A (channel, state)")
    rest = [f for f in fb if not same_structure(f, delta)]
    if len(rest) != 2:
        raise NoMatch(f"{b.name}: b is not Δ·B·u with the Δ of a")
    axes = {f: frame_axes(f, frame) for f in rest}
    u = [f for f in rest if nax not in axes[f]]
    B = [f for f in rest if nax in axes[f]]
    if len(u) != 1 or len(B) != 1:
        raise NoMatch(f"{b.name}: b is not Δ·B·u (one factor without the state axis, one "
                      "with it)")
    nodes = [a, exponent, b]
    nodes += [n for n in (exponent, b) for n in _mul_tree(n)]
    sel = Selective(delta=delta, A=A, B=B[0], u=u[0], frame=frame,
                    nodes=list(dict.fromkeys(nodes)))
    _match_softplus(sel, insert_role("bdn", t_ax))
    return sel


def _match_softplus(sel: Selective, roles: str) -> None:
    """Δ = views(softplus(x + bias)): fuse the softplus, and the bias when it varies only
    along the channel axis (softplus with beta 1 and threshold 20, as the kernel's)."""
    chain, node = [], sel.delta
    while is_call(node, *LAYOUT_OPS):
        chain.append(node)
        node = node.args[0]
    if not (is_call(node, aten.softplus.default) and tuple(node.args[1:]) in ((), (1,), (1, 20))
            and not node.kwargs):
        return
    chain.reverse()
    pre = node.args[0]
    if not is_tensor(pre) or dtype_of(pre) not in DTYPES.values():
        return
    sel.softplus, sel.delta_pre, sel.chain = True, pre, chain
    if not is_add(pre):
        return
    for x, bias in (pre.args, reversed(pre.args)):
        if not (is_tensor(x) and is_tensor(bias) and hinted_shape(x) == hinted_shape(pre)):
            continue
        bs = hinted_shape(bias)
        bs = (1,) * (len(hinted_shape(pre)) - len(bs)) + bs
        if len(bs) != len(hinted_shape(pre)) or dtype_of(bias) not in DTYPES.values():
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


def softplus_nodes(sel: Selective) -> list[fx.Node]:
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
        if is_mul(n) and (n is node or len(n.users) == 1):
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
    while is_call(node, *LAYOUT_OPS, *CAST_OPS, aten.select.int, aten.slice.Tensor):
        if node.target not in CAST_OPS:
            chain.append(node)
        node = node.args[0]
    if not is_tensor(node):
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
    frame_roles = insert_role("bdn", rec.dim)
    y, D, z, nodes = ro.output, None, None, []
    user = next(iter(y.users)) if len(y.users) == 1 else None
    if is_add(user):
        other = user.args[1] if user.args[0] is y else user.args[0]
        if is_mul(other) and len(other.users) == 1:
            for x, dv in (other.args, reversed(other.args)):
                axes = frame_axes(dv, hinted_shape(y))
                d_axis = ro.out_roles.index("d")
                if (axes is not None and axes <= {d_axis} and is_tensor(x)
                        and hinted_shape(x) == hinted_shape(y)
                        and _same_elements(x, ro.out_roles, sel.u, frame_roles, "bdt")):
                    D, nodes, y = dv, [user, other], user
                    break
    user = next(iter(y.users)) if len(y.users) == 1 else None
    if is_mul(user):
        other = user.args[1] if user.args[0] is y else user.args[0]
        if (is_call(other, aten.silu.default) and is_tensor(other.args[0])
                and hinted_shape(other.args[0]) == hinted_shape(y)):
            z, nodes, y = other.args[0], [*nodes, user], user
    return Epilogue(D=D, z=z, output=y, nodes=nodes)


