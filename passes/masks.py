"""Mask inference: an index-only mask subgraph → a sympy expression over index axes.

A mask built from `ones(...).tril()`, `triu(full(-inf), 1)`, `arange(n)[:, None] >=
arange(n)[None, :]` and friends never depends on data, only on the position of each
element. We evaluate such a subgraph symbolically: every tensor becomes one sympy
expression in the index of each of its axes, named from the right (`a0` is the last
axis, `a1` the one before), because broadcasting aligns axes from the right. For a
mask that meets the scores `[..., Nq, Nk]`, `a1` is the query index and `a0` the key
index.

Then `classify` asks which known structure the *allowed* predicate is. Every
structure this version knows depends on the offset t = kv_idx - q_idx alone, so it
substitutes kv_idx = q_idx + t and compares truth tables over the integers t around
the constants that occur (outside them the predicate is constant).

v0 knows "causal" (t <= 0). Data-dependent masks (padding, documents) and other
index predicates are left to eager with the reason.
"""

from __future__ import annotations

import dataclasses
import math

import sympy
import torch
from torch import fx

from ioaware.passes.views import IDENTITY_OPS, hint

aten = torch.ops.aten

Q, K, T = sympy.symbols("q_idx kv_idx t", integer=True)


class MaskError(Exception):
    """The subgraph is not an index-only expression this module understands."""


@dataclasses.dataclass(frozen=True)
class IndexTensor:
    """A tensor whose element at index (..., a1, a0) is `expr` (bool or numeric)."""

    expr: sympy.Basic
    rank: int
    is_bool: bool


def axis(p: int) -> sympy.Symbol:
    """Index symbol of the axis p positions from the right."""
    return sympy.Symbol(f"a{p}", integer=True, nonnegative=True)


def _shift_axes(expr: sympy.Basic, from_right_at_least: int, by: int) -> sympy.Basic:
    repl = {s: axis(int(s.name[1:]) + by) for s in expr.free_symbols
            if s.name.startswith("a") and int(s.name[1:]) >= from_right_at_least}
    return expr.xreplace(repl)


def as_bool(v: IndexTensor) -> sympy.Basic:
    return v.expr if v.is_bool else sympy.Ne(v.expr, 0)


def _as_num(v: IndexTensor) -> sympy.Basic:
    return sympy.Piecewise((1, v.expr), (0, True)) if v.is_bool else v.expr


def _scalar(x: object) -> sympy.Basic:
    if isinstance(x, bool):
        return sympy.true if x else sympy.false
    if isinstance(x, float) and math.isinf(x):
        return sympy.oo if x > 0 else -sympy.oo
    if isinstance(x, (int, float)):
        # precision=53: the float's own binary precision, so float(expr) gives x back
        # exactly (finfo.min must stay finfo.min).
        return sympy.Integer(x) if isinstance(x, int) else sympy.Float(x, precision=53)
    raise MaskError(f"unsupported scalar {x!r}")


def _size(x: object) -> sympy.Basic:
    """An int, a SymInt or a graph node computing one, as a sympy expression."""
    if isinstance(x, fx.Node):
        x = x.meta["val"]
    if isinstance(x, torch.SymInt):
        return sympy.sympify(x.node.expr)
    return _scalar(x)


_COMPARE = {
    "eq": sympy.Eq, "ne": sympy.Ne, "lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge,
}


def index_tensor(node: fx.Node | object, memo: dict | None = None) -> IndexTensor:
    """Evaluate `node` (a mask or bias subgraph) into an IndexTensor, or raise MaskError."""
    memo = {} if memo is None else memo
    if not isinstance(node, fx.Node):
        return IndexTensor(_scalar(node), 0, isinstance(node, bool))
    if node in memo:
        return memo[node]
    meta = node.meta.get("val")
    if isinstance(meta, (torch.SymInt, int)) and not isinstance(meta, bool):
        # A size (sym_size, or arithmetic on sizes): keep it symbolic, so that a mask
        # depending on it is never classified for one size and reused for another.
        expr = sympy.sympify(meta.node.expr) if isinstance(meta, torch.SymInt) else meta
        return IndexTensor(sympy.Integer(expr) if isinstance(expr, int) else expr, 0, False)
    if node.op == "get_attr":
        # A constant the graph holds (dynamo lifts torch.tensor(...) literals): fixed at
        # compile time, so a one-element constant is just a number.
        value = getattr(node.graph.owning_module, node.target, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            scalar = value.item()
            return IndexTensor(_scalar(scalar), value.dim(), value.dtype == torch.bool)
    if node.op != "call_function":
        raise MaskError(f"{node.name} is a {node.op} (data, not an index expression)")
    expr = _evaluate(node, memo)
    meta = node.meta.get("val")
    is_bool = isinstance(meta, torch.Tensor) and meta.dtype == torch.bool
    rank = meta.dim() if isinstance(meta, torch.Tensor) else 0
    if is_bool and not isinstance(expr, sympy.logic.boolalg.Boolean):
        expr = sympy.Ne(expr, 0)
    val = IndexTensor(expr, rank, is_bool)
    memo[node] = val
    return val


def _evaluate(node: fx.Node, memo: dict) -> sympy.Basic:
    op, args = node.target, node.args
    rank = len(node.meta["val"].shape) if "val" in node.meta else 0

    def arg(i: int) -> IndexTensor:
        return index_tensor(args[i], memo)

    if op in (aten.ones.default, aten.zeros.default, aten.full.default,
              aten.scalar_tensor.default):
        if op is aten.full.default:
            value = args[1]
        elif op is aten.scalar_tensor.default:
            value = args[0]
        else:
            value = 1 if op is aten.ones.default else 0
        dtype = node.kwargs.get("dtype")
        if dtype == torch.bool:
            value = bool(value)
        return _scalar(value)
    if op in (aten.arange.default, aten.arange.start, aten.arange.start_step):
        start, step = 0, 1
        if op is aten.arange.start:
            start = args[0]
        elif op is aten.arange.start_step:
            start, step = args[0], args[2]
        return _size(start) + _size(step) * axis(0)
    if op in IDENTITY_OPS or op in (aten.lift_fresh_copy.default, aten.detach_.default,
                                    aten.expand.default):
        # expand only adds broadcast axes on the left or widens size-1 axes, neither of
        # which changes the from-right naming.
        return arg(0).expr
    if op is aten.unsqueeze.default:
        x = arg(0)
        d = args[1] if args[1] >= 0 else args[1] + x.rank + 1
        at = x.rank - d  # from-right position of the new axis
        return _shift_axes(x.expr, at, 1)
    if op in (aten.view.default, aten.reshape.default, aten._unsafe_view.default,
              aten.squeeze.dim, aten.squeeze.default, aten.squeeze.dims):
        return _regroup(node, arg(0), rank)
    if op is aten.slice.Tensor:
        # x[..., start::step, ...]: output index i reads input index start + step·i
        x = arg(0)
        dim = args[1] if len(args) > 1 else 0
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        step = args[4] if len(args) > 4 else 1
        p = x.rank - 1 - (dim % x.rank)
        return x.expr.xreplace({axis(p): _size(start) + _size(step) * axis(p)})
    if op in (aten.transpose.int, aten.permute.default, aten.t.default):
        return _permute(node, arg(0))
    if op in (aten.tril.default, aten.triu.default):
        x = arg(0)
        diag = args[1] if len(args) > 1 else node.kwargs.get("diagonal", 0)
        offset = axis(0) - axis(1)
        keep = sympy.Le(offset, diag) if op is aten.tril.default else sympy.Ge(offset, diag)
        if x.is_bool:
            return sympy.And(x.expr, keep)
        return sympy.Piecewise((x.expr, keep), (0, True))
    if op in (aten.logical_not.default, aten.bitwise_not.default):
        return sympy.Not(as_bool(arg(0)))
    if op in (aten.bitwise_and.Tensor, aten.logical_and.default, aten.__and__.Tensor):
        return sympy.And(as_bool(arg(0)), as_bool(arg(1)))
    if op in (aten.bitwise_or.Tensor, aten.logical_or.default, aten.__or__.Tensor):
        return sympy.Or(as_bool(arg(0)), as_bool(arg(1)))
    name = getattr(op, "__name__", "").split(".")[0]
    if name in _COMPARE and op.__module__ == aten.eq.default.__module__:
        a, b = arg(0), arg(1)
        if a.is_bool and b.expr in (0, 1, sympy.true, sympy.false) and name in ("eq", "ne"):
            truth = b.expr in (1, sympy.true)
            same = (name == "eq") == truth
            return a.expr if same else sympy.Not(a.expr)
        return _COMPARE[name](_as_num(a), _as_num(b))
    if op in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar):
        alpha = _scalar(node.kwargs.get("alpha", 1))
        sign = 1 if op in (aten.add.Tensor, aten.add.Scalar) else -1
        return _as_num(arg(0)) + sign * alpha * _as_num(arg(1))
    if op in (aten.mul.Tensor, aten.mul.Scalar):
        return _as_num(arg(0)) * _as_num(arg(1))
    if op is aten.neg.default:
        return -_as_num(arg(0))
    if op is aten._to_copy.default:
        x = arg(0)
        dtype = node.kwargs.get("dtype")
        if dtype == torch.bool:
            return as_bool(x)
        return _as_num(x)
    if op in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf):
        c, a, b = as_bool(arg(0)), arg(1), arg(2)
        if a.is_bool and b.is_bool:
            return sympy.Or(sympy.And(c, a.expr), sympy.And(sympy.Not(c), b.expr))
        return sympy.Piecewise((_as_num(a), c), (_as_num(b), True))
    if op in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        x, m, v = arg(0), as_bool(arg(1)), arg(2)
        if x.is_bool and v.is_bool:
            return sympy.Or(sympy.And(m, v.expr), sympy.And(sympy.Not(m), x.expr))
        return sympy.Piecewise((_as_num(v), m), (_as_num(x), True))
    raise MaskError(f"{node.name} ({op}) is not an index-only op this version understands")


def _regroup(node: fx.Node, x: IndexTensor, rank: int) -> sympy.Basic:
    """view/reshape/squeeze that only add or drop size-1 axes: rename axes from the right."""
    old = [hint(s) for s in node.args[0].meta["val"].shape]
    new = [hint(s) for s in node.meta["val"].shape]
    old_axes = [len(old) - 1 - i for i, s in enumerate(old) if s != 1]
    new_axes = [len(new) - 1 - i for i, s in enumerate(new) if s != 1]
    if [s for s in old if s != 1] != [s for s in new if s != 1]:
        raise MaskError(f"{node.name} merges or splits axes of an index expression")
    repl = {axis(p): sympy.Integer(0) for p, s in zip(range(len(old) - 1, -1, -1), old) if s == 1}
    repl.update({axis(o): axis(n) for o, n in zip(old_axes, new_axes)})
    return x.expr.xreplace(repl)


def _permute(node: fx.Node, x: IndexTensor) -> sympy.Basic:
    r = x.rank
    if node.target is aten.t.default:
        perm = list(range(r))[::-1] if r == 2 else list(range(r))
    elif node.target is aten.transpose.int:
        d0, d1 = (d % r for d in node.args[1:3])
        perm = list(range(r))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = [d % r for d in node.args[1]]
    # new axis i (from left) is old axis perm[i]; convert both to from-right positions.
    repl = {axis(r - 1 - perm[i]): axis(r - 1 - i) for i in range(r)}
    return x.expr.xreplace(repl)


# ---------------------------------------------------------------------------------------
# Classification of the allowed-keys predicate


def offset_truth_table(allowed: sympy.Basic) -> dict[int, bool] | None:
    """allowed(q, k) as a function of t = k - q, or None if it depends on anything else."""
    expr = allowed.xreplace({axis(1): Q, axis(0): Q + T})
    expr = sympy.simplify(expr) if expr.free_symbols - {T} else expr
    if expr.free_symbols - {T}:
        return None
    consts = [int(c) for c in expr.atoms(sympy.Integer)] + [0]
    lo, hi = min(consts) - 2, max(consts) + 2
    table = {}
    for t in range(lo, hi + 1):
        v = expr.xreplace({T: t})
        if v not in (sympy.true, sympy.false):
            return None
        table[t] = bool(v)
    return table


def classify(allowed: sympy.Basic) -> str | None:
    """Name of the structure of `allowed` ("causal", "none"), or None if unknown."""
    if allowed is sympy.true:
        return "none"
    table = offset_truth_table(allowed)
    if table is None:
        return None
    if all(v == (t <= 0) for t, v in table.items()):
        return "causal"
    return None
