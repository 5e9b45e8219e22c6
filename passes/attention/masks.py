"""Mask and bias inference: a mask / bias subgraph → a sympy expression over index axes.

A mask built from `ones(...).tril()`, `triu(full(-inf), 1)`, `arange(n)[:, None] >=
arange(n)[None, :]` and friends depends only on the position of each element. We
evaluate such a subgraph symbolically: every tensor becomes one sympy expression in the
index of each of its axes, named from the right (`a0` is the last axis, `a1` the one
before), because broadcasting aligns axes from the right. For a mask that meets the
scores `[..., Nq, Nk]`, `a1` is the query index and `a0` the key index.

Data enters as loads. With a `DataInputs` collector, a node that is not an index
expression (a placeholder such as a `[B, N]` padding mask, a `cumsum` of position
differences, a learned bias table) becomes `in0[i_{r-1}, ..., i_0]`, a sympy Indexed on
IndexedBase("in0") whose indices are its own axes (0 on a size-1 axis, so a broadcast
view costs nothing). Gathers (`x[batch_idx, kv_idx]`) substitute their index
expressions into those indices, so `padding[arange(B)[:, None, None, None],
arange(N)[None, None, None, :]]` becomes `in0[a3, a0]` and no N×N tensor is needed.

`to_attention_axes` then renames the axes to the symbols of `ioaware.spec` (b, h,
q_idx, kv_idx); `describe` names the structure of an allowed-keys predicate ("causal &
sliding_window(8) & padding") and `block_density` counts the key blocks an index-only
predicate leaves to visit, by interval reasoning over the offset t = kv_idx - q_idx.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

import sympy
import torch
from torch import fx

from ioaware.passes.views import IDENTITY_OPS, hint
from ioaware.spec import B_IDX, H_IDX, INPUT_DTYPES, KV_IDX, Q_IDX, TensorInput

aten = torch.ops.aten

Q, K, T = sympy.symbols("q_idx kv_idx t", integer=True)


SIZES = "sizes"  # the name of the runtime-sizes input
INDEX_SYMBOLS = {B_IDX, H_IDX, Q_IDX, KV_IDX}


class MaskError(Exception):
    """The subgraph is not an index-only expression this module understands."""


@dataclasses.dataclass
class DataInputs:
    """The data tensors a mask / bias expression loads from, in the order they are named.

    `nodes[i]` is the graph node whose value the kernel reads as `in{i}`; `inputs[i]` is
    its TensorInput (rank, dtype, whether the backward must produce its gradient).
    """

    nodes: list[fx.Node] = dataclasses.field(default_factory=list)
    inputs: list[TensorInput] = dataclasses.field(default_factory=list)
    # Runtime sizes (dynamo's size symbols) an expression uses, read as sizes[i] from an
    # int64 vector the rewritten graph builds: a bottom-right causal offset Nk - Nq.
    sizes: list[sympy.Symbol] = dataclasses.field(default_factory=list)

    def size_loads(self, expr: sympy.Basic) -> sympy.Basic:
        """`expr` with each size symbol replaced by its load `sizes[i]`."""
        names = {t.name for t in self.inputs}
        syms = sorted((s for s in expr.free_symbols if isinstance(s, sympy.Symbol)
                       and s not in INDEX_SYMBOLS and s.name not in names | {SIZES}),
                      key=lambda s: s.name)
        for s in syms:
            if s not in self.sizes:
                self.sizes.append(s)
        base = sympy.IndexedBase(SIZES)
        return expr.xreplace({s: base[self.sizes.index(s)] for s in syms})

    def all_inputs(self) -> list[TensorInput]:
        """The Spec's inputs: the data tensors, then the sizes vector if any."""
        sizes = [TensorInput(SIZES, 1, "int64")] if self.sizes else []
        return [*self.inputs, *sizes]

    def load(self, node: fx.Node) -> IndexTensor:
        """`node` as a load `in_i[a_{r-1}, ..., a_0]` (index 0 on its size-1 axes)."""
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise MaskError(f"{node.name} is not a tensor")
        dtype = next((k for k, d in INPUT_DTYPES.items() if d == val.dtype), None)
        if dtype is None:
            raise MaskError(f"{node.name} has dtype {val.dtype}; a kernel input must be one "
                            f"of {sorted(INPUT_DTYPES)}")
        if node in self.nodes:
            i = self.nodes.index(node)
        else:
            i = len(self.nodes)
            self.nodes.append(node)
            self.inputs.append(TensorInput(f"in{i}", max(val.dim(), 1), dtype,
                                           needs_grad(node)))
        r = val.dim()
        if r == 0:  # a 0-d tensor is read as a 1-element vector (the op passes a view)
            idx = [sympy.Integer(0)]
        else:
            idx = [sympy.Integer(0) if hint(s) == 1 else axis(r - 1 - d)
                   for d, s in enumerate(val.shape)]
        load = sympy.IndexedBase(f"in{i}")[tuple(idx)]
        if val.dtype == torch.bool:
            return IndexTensor(sympy.Ne(load, 0), r, True)
        return IndexTensor(load, r, False)


@dataclasses.dataclass(frozen=True)
class IndexTensor:
    """A tensor whose element at index (..., a1, a0) is `expr` (bool or numeric)."""

    expr: sympy.Basic
    rank: int
    is_bool: bool


_NO_GRAD_OPS = {aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default}


def needs_grad(node: fx.Node) -> bool:
    """Whether autograd wants the gradient of `node`: a floating-point value computed,
    not through detach, from a graph input that requires grad (a learned bias, a
    relative-position table). The canonical graph's FakeTensors cannot say it (the trace
    runs without grad), so capture records each input's flag in meta["requires_grad"]."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        return False
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            if n.meta.get("requires_grad", False):
                return True
            continue
        if n.op == "call_function" and n.target in _NO_GRAD_OPS:
            continue
        stack += n.all_input_nodes
    return False


def axis(p: int) -> sympy.Symbol:
    """Index symbol of the axis p positions from the right."""
    return sympy.Symbol(f"a{p}", integer=True, nonnegative=True)


def _shift_axes(expr: sympy.Basic, from_right_at_least: int, by: int) -> sympy.Basic:
    repl = {s: axis(int(s.name[1:]) + by) for s in expr.free_symbols
            if s.name.startswith("a") and int(s.name[1:]) >= from_right_at_least}
    return expr.xreplace(repl)


def as_bool(v: IndexTensor) -> sympy.Basic:
    return v.expr if v.is_bool else sympy.Ne(v.expr, 0)


def as_num(v: IndexTensor) -> sympy.Basic:
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


def index_tensor(node: fx.Node | object, memo: dict | None = None,
                 data: DataInputs | None = None) -> IndexTensor:
    """Evaluate `node` (a mask or bias subgraph) into an IndexTensor, or raise MaskError.

    Without `data` every leaf must be an index expression; with it, a node that is not
    one (a placeholder, an op this module does not evaluate, an axis-merging view)
    becomes a load from a kernel input recorded in `data`.
    """
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
        if data is not None:
            return data.load(node)
        raise MaskError(f"{node.name} is a {node.op} (data, not an index expression)")
    try:
        expr = _evaluate(node, memo, data)
    except MaskError:
        if data is None or not isinstance(meta, torch.Tensor):
            raise
        # Not an index expression this module evaluates: read its value at runtime.
        val = data.load(node)
        memo[node] = val
        return val
    meta = node.meta.get("val")
    is_bool = isinstance(meta, torch.Tensor) and meta.dtype == torch.bool
    rank = meta.dim() if isinstance(meta, torch.Tensor) else 0
    if is_bool and not isinstance(expr, sympy.logic.boolalg.Boolean):
        expr = sympy.Ne(expr, 0)
    val = IndexTensor(expr, rank, is_bool)
    memo[node] = val
    return val


def _evaluate(node: fx.Node, memo: dict, data: DataInputs | None) -> sympy.Basic:
    op, args = node.target, node.args
    rank = len(node.meta["val"].shape) if "val" in node.meta else 0

    def arg(i: int) -> IndexTensor:
        return index_tensor(args[i], memo, data)

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
    if op in (aten.new_ones.default, aten.new_zeros.default, aten.new_full.default):
        value = {aten.new_ones.default: 1, aten.new_zeros.default: 0}.get(op)
        value = args[2] if value is None else value
        return _scalar(bool(value) if node.kwargs.get("dtype") == torch.bool else value)
    if op in (aten.full_like.default, aten.zeros_like.default, aten.ones_like.default):
        value = {aten.zeros_like.default: 0, aten.ones_like.default: 1}.get(op, None)
        value = args[1] if value is None else value
        return _scalar(bool(value) if node.kwargs.get("dtype") == torch.bool else value)
    if op is aten.embedding.default:  # weight[indices, :]: a table read at an index
        return _gather(node, arg(0), [arg(1)], wrap=False)
    if op in (aten.minimum.default, aten.maximum.default, aten.min.other, aten.max.other):
        fn = sympy.Min if op in (aten.minimum.default, aten.min.other) else sympy.Max
        return fn(as_num(arg(0)), as_num(arg(1)))
    if op in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default):
        x = as_num(arg(0))
        lo = args[1] if op is not aten.clamp_max.default else None
        hi = args[2] if op is aten.clamp.default and len(args) > 2 else (
            args[1] if op is aten.clamp_max.default else None)
        if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
            raise MaskError(f"{node.name}: clamp with tensor bounds")
        x = x if lo is None else sympy.Max(x, _scalar(lo))
        return x if hi is None else sympy.Min(x, _scalar(hi))
    if op is aten.index.Tensor:
        return _gather(node, arg(0), [None if i is None else index_tensor(i, memo, data)
                                      for i in args[1]])
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
        diag = _size(args[1] if len(args) > 1 else node.kwargs.get("diagonal", 0))
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
        return _COMPARE[name](as_num(a), as_num(b))
    if op in (aten.add_.Tensor, aten.sub_.Tensor) and not (
            isinstance(args[0], fx.Node) and len(args[0].users) == 1):
        raise MaskError(f"{node.name}: in-place update of a tensor read elsewhere")
    if op in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar,
              aten.add_.Tensor, aten.sub_.Tensor):
        alpha = _scalar(node.kwargs.get("alpha", 1))
        sign = 1 if op in (aten.add.Tensor, aten.add.Scalar, aten.add_.Tensor) else -1
        return as_num(arg(0)) + sign * alpha * as_num(arg(1))
    if op in (aten.mul.Tensor, aten.mul.Scalar):
        return as_num(arg(0)) * as_num(arg(1))
    if op is aten.neg.default:
        return -as_num(arg(0))
    if op in (aten.div.Tensor, aten.div.Scalar) and not node.kwargs.get("rounding_mode"):
        return as_num(arg(0)) / as_num(arg(1))
    if op in _UNARY:
        return _UNARY[op](as_num(arg(0)))
    if op is aten._to_copy.default:
        x = arg(0)
        dtype = node.kwargs.get("dtype")
        if dtype == torch.bool:
            return as_bool(x)
        src = args[0].meta.get("val") if isinstance(args[0], fx.Node) else None
        if (dtype is not None and not dtype.is_floating_point and src is not None
                and src.dtype.is_floating_point):
            # float → integer truncates toward zero
            v = as_num(x)
            return sympy.Piecewise((sympy.floor(v), v >= 0), (-sympy.floor(-v), True))
        return as_num(x)
    if op in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar):
        c, a, b = as_bool(arg(0)), arg(1), arg(2)
        if a.is_bool and b.is_bool:
            return sympy.Or(sympy.And(c, a.expr), sympy.And(sympy.Not(c), b.expr))
        return sympy.Piecewise((as_num(a), c), (as_num(b), True))
    if op in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        x, m, v = arg(0), as_bool(arg(1)), arg(2)
        if x.is_bool and v.is_bool:
            return sympy.Or(sympy.And(m, v.expr), sympy.And(sympy.Not(m), x.expr))
        return sympy.Piecewise((as_num(v), m), (as_num(x), True))
    raise MaskError(f"{node.name} ({op}) is not an index-only op this version understands")


_UNARY = {
    aten.abs.default: sympy.Abs, aten.exp.default: sympy.exp, aten.log.default: sympy.log,
    aten.tanh.default: sympy.tanh, aten.floor.default: sympy.floor,
}


def _gather(node: fx.Node, x: IndexTensor, indices: list[IndexTensor | None],
            wrap: bool = True) -> sympy.Basic:
    """x[i0, i1, ...] with index tensors on the leading axes of x (advanced indexing).

    The indexed axes of x take the broadcast index expressions, which sit left of the
    axes of x that are not indexed. `wrap`: a negative index counts from the end, as
    Python indexing does (`table[kv_idx - q_idx]`), unless it is provably nonnegative
    (embedding rejects negative indices, so it does not wrap).
    """
    if any(i is None for i in indices):
        raise MaskError(f"{node.name}: indexing with a slice between index tensors")
    if any(i.is_bool for i in indices):
        raise MaskError(f"{node.name}: boolean-mask indexing (its shape depends on data)")
    rest = x.rank - len(indices)  # trailing axes of x that keep their from-right position
    shape = node.args[0].meta["val"].shape
    repl = {}
    for d, i in enumerate(indices):
        e = _shift_axes(as_num(i), 0, rest)
        if wrap and not (e.is_nonnegative or _least_index(node.args[1][d], as_num(i)) >= 0):
            e = sympy.Piecewise((e + _size(shape[d]), e < 0), (e, True))
        repl[axis(x.rank - 1 - d)] = e
    return x.expr.xreplace(repl)


def _least_index(index: fx.Node, e: sympy.Basic) -> int | float:
    """The least value of `e`, the index tensor `index` as an expression in its own axes,
    over that tensor's elements: exact when `e` is linear in the axes with integer
    coefficients and the sizes are static (a relative position `j - i + N - 1` is never
    negative, so it needs no wrap-around select per score); -inf otherwise."""
    shape = index.meta["val"].shape
    sizes = {axis(len(shape) - 1 - d): s for d, s in enumerate(shape)}
    if not e.free_symbols <= set(sizes) or not all(isinstance(s, int) for s in sizes.values()):
        return -math.inf
    if not e.free_symbols:
        return int(e) if e.is_Integer else -math.inf
    try:
        poly = sympy.Poly(e, *sizes)
    except sympy.PolynomialError:
        return -math.inf
    if poly.total_degree() > 1 or not all(c.is_Integer for c in poly.coeffs()):
        return -math.inf
    # a linear form is least at a corner: each axis at 0 or at its last index
    least = e.xreplace({a: 0 if poly.coeff_monomial(a) >= 0 else size - 1
                        for a, size in sizes.items()})
    return int(least)


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


# Widest offset range classified at compile time (a sliding window up to ~32k keys).
MAX_OFFSET_TABLE = 1 << 16


def offset_truth_table(allowed: sympy.Basic) -> dict[int, bool] | None:
    """allowed(q, k) as a function of t = k - q, or None if it depends on anything else."""
    expr = allowed.xreplace({axis(1): Q, axis(0): Q + T})
    expr = sympy.simplify(expr) if expr.free_symbols - {T} else expr
    if expr.free_symbols - {T}:
        return None
    # an edge sits at ±c for a constant c (t < c, or -t < c after moving terms)
    consts = [s * int(sympy.floor(c)) for c in expr.atoms(sympy.Number) if c.is_finite
              for s in (1, -1)] + [0]
    lo, hi = min(consts) - 2, max(consts) + 2
    if hi - lo > MAX_OFFSET_TABLE:
        return None  # a window this wide is left unnamed (the expression still holds)
    for t in (lo, hi):  # the predicate must be a plain truth value of t
        if expr.xreplace({T: t}) not in (sympy.true, sympy.false):
            return None
    try:
        fn = sympy.lambdify(T, expr, modules="math")
        return {t: bool(fn(t)) for t in range(lo, hi + 1)}
    except Exception:  # noqa: BLE001 - fall back to sympy's own evaluation
        table = {}
        for t in range(lo, hi + 1):
            v = expr.xreplace({T: t})
            if v not in (sympy.true, sympy.false):
                return None
            table[t] = bool(v)
        return table


# ---------------------------------------------------------------------------------------
# From index axes to the attention symbols, and the names of structures


def to_attention_axes(expr: sympy.Basic, rank: int, heads_axis: bool = True,
                      heads: int | None = None) -> sympy.Basic:
    """Rename the axes of a term that meets scores of rank `rank` to b, h, q_idx, kv_idx.

    Scores [B, H, Nq, Nk]: a3 → b, a2 → h. Scores [Z, Nq, Nk] (a bmm over Z = B·H
    flattened): a2 → h when the kernel sees Z as its heads (`heads_axis`), else
    a2 → b·heads + h when the head count is a known constant; otherwise an expression
    in a2 cannot be written in b and h and MaskError says so.
    """
    names: dict[int, sympy.Basic] = {0: KV_IDX, 1: Q_IDX}
    if rank >= 4:
        names.update({2: H_IDX, 3: B_IDX})
    elif rank == 3 and heads_axis:
        names[2] = H_IDX
    elif rank == 3 and heads is not None:
        names[2] = B_IDX * heads + H_IDX
    free = {s for s in expr.free_symbols if s.name.startswith("a") and s.name[1:].isdigit()}
    unknown = sorted(s.name for s in free if int(s.name[1:]) not in names)
    if unknown:
        raise MaskError(f"the expression depends on the flattened batch·head axis ({unknown})")
    return expr.xreplace({axis(p): names[p] for p in names})


def loads(expr: sympy.Basic) -> set[sympy.Indexed]:
    """The tensor reads in `expr` (runtime sizes excluded: they are index arithmetic)."""
    return {ld for ld in expr.atoms(sympy.Indexed) if str(ld.base) != SIZES}


def reads_sizes(expr: sympy.Basic) -> bool:
    return any(str(ld.base) == SIZES for ld in expr.atoms(sympy.Indexed))


def conjuncts(pred: sympy.Basic) -> list[sympy.Basic]:
    return list(pred.args) if isinstance(pred, sympy.And) else [pred]


def _offset_table(pred: sympy.Basic) -> dict[int, bool] | None:
    """pred(q_idx, kv_idx) as a function of t = kv_idx - q_idx alone, or None."""
    if pred.free_symbols - {Q_IDX, KV_IDX} or pred.atoms(sympy.Indexed):
        return None
    return offset_truth_table(pred.xreplace({Q_IDX: axis(1), KV_IDX: axis(0)}))


def _name_offset(table: dict[int, bool]) -> str | None:
    """causal (t <= 0), sliding_window(W) (-W < t), or their conjunction; else None."""
    ts = sorted(table)
    allowed = [t for t in ts if table[t]]
    if not allowed:
        return "empty"
    lo, hi = min(allowed), max(allowed)
    contiguous = all(table[t] for t in range(lo, hi + 1))
    if not contiguous:
        return None
    upper = None if hi == ts[-1] else hi  # allowed t ≤ hi
    lower = None if lo == ts[0] else lo  # allowed t ≥ lo
    parts = []
    if upper is not None:
        parts.append("causal" if upper == 0 else f"causal(offset={upper})")
    if lower is not None:
        parts.append(f"sliding_window({-lower + 1})" if upper == 0 or upper is None
                     else f"band({lower}..{upper})")
    return " & ".join(parts) if parts else "none"


def describe(pred: sympy.Basic | None, causal: bool = False) -> str:
    """A short name for an allowed-keys predicate over (b, h, q_idx, kv_idx).

    e.g. "causal & sliding_window(4096) & padding"; data-dependent conjuncts are named
    "padding" (a load indexed by b and kv_idx only), "document" (two loads compared,
    one at q_idx and one at kv_idx), "query_key_padding" (other predicates of loads
    each at q_idx or at kv_idx) or "data"; other index predicates "index".
    """
    names = ["causal"] if causal else []
    for c in ([] if pred is None else conjuncts(pred)):
        if c is sympy.true:
            continue
        table = _offset_table(c)
        name = _name_offset(table) if table is not None else None
        if name is None:
            lds = loads(c)
            if not lds:
                name = "index(runtime sizes)" if reads_sizes(c) else "index"
            elif all(set(ld.indices) <= {B_IDX, KV_IDX, sympy.Integer(0)} for ld in lds):
                name = "padding"
            elif _same_id(c, lds):
                name = "document"
            elif all(set(ld.indices) <= {B_IDX, Q_IDX, KV_IDX, sympy.Integer(0)}
                     and not {Q_IDX, KV_IDX} <= set(ld.indices) for ld in lds):
                # per-token vectors at the query and at the key, not compared for
                # equality: DeBERTa's mask[b, q]·mask[b, kv] != 0
                name = "query_key_padding"
            else:
                name = "data"
        names.append(name)
    return " & ".join(dict.fromkeys(n for n in names if n != "none")) or "none"


def _same_id(c: sympy.Basic, lds: set[sympy.Indexed]) -> bool:
    """ids[.., q_idx] == ids[.., kv_idx]: a comparison of one vector at the query and
    at the key (document / segment masks)."""
    if not isinstance(c, (sympy.Eq, sympy.Ne)) or len(lds) != 2:
        return False
    first, second = lds
    if sympy.expand(c.lhs - c.rhs) not in (first - second, second - first):
        return False  # e.g. a product of the two vectors compared with 0
    a, b = (ld.free_symbols for ld in lds)
    return (Q_IDX in a and KV_IDX in b or Q_IDX in b and KV_IDX in a) and not (
        Q_IDX in a and KV_IDX in a or Q_IDX in b and KV_IDX in b)


def block_density(pred: sympy.Basic | None, causal: bool, nq: int, nk: int,
                  block_m: int, block_n: int) -> float | None:
    """Fraction of key blocks a block-sparse kernel visits, at sizes nq × nk.

    Counted over the blocks the dense kernel visits (all of them, or those up to the
    diagonal when `causal`). A block (rows [q0, q1], keys [k0, k1]) is visited when the
    predicate holds somewhere in it; for a predicate of the offset t = kv_idx - q_idx
    that is "some t in [k0 - q1, k1 - q0] is allowed" (interval reasoning, exact). None
    when the predicate reads data ("runtime") or is not a function of t alone.
    """
    full = sympy.true if pred is None else pred
    if causal:
        full = sympy.And(full, sympy.Le(KV_IDX, Q_IDX))
    table = _offset_table(full)
    if table is None:
        return None
    ts = sorted(table)
    allowed_t = [t for t in ts if table[t]]

    def any_allowed(lo: int, hi: int) -> bool:
        # outside the table the predicate is constant, equal to its edge values
        if lo < ts[0] and table[ts[0]] or hi > ts[-1] and table[ts[-1]]:
            return True
        i = bisect.bisect_left(allowed_t, lo)  # the first allowed t >= lo
        return i < len(allowed_t) and allowed_t[i] <= hi

    if -(-nq // block_m) * -(-nk // block_n) > 1 << 20:
        return None  # too many blocks to count at compile time
    visited = dense = 0
    for q0 in range(0, nq, block_m):
        q1 = min(q0 + block_m, nq) - 1
        for k0 in range(0, nk, block_n):
            k1 = min(k0 + block_n, nk) - 1
            if causal and k0 > q1:
                continue  # the dense causal kernel skips this block too
            dense += 1
            visited += any_allowed(k0 - q1, k1 - q0)
    return visited / dense if dense else 1.0
