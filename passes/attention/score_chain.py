"""The score chain as a function: scale, biases, masks, soft-capping.

The ops between QKᵀ and softmax are interpreted in order as a function of the raw
product R = q·k: each scalar factor scales it (and any fill already applied), each bias
adds an expression (from `masks.index_tensor`: index arithmetic, loads of data
tensors), `tanh` wraps it (soft-capping), each mask records an allowed-keys predicate
with what a masked element becomes (a `MaskSemantics`). With scale = the product of the
scalar factors, score_mod(score) is the chain's function at R = score / (chain factor),
so a bias added before the scale is scaled and one added after is not. An additive term
that takes only 0 and one constant is a mask, anything else a bias.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.spec import MaskSemantics
from ioaware.passes.attention import masks
from ioaware.passes.attention.record import (
    ADD_OPS,
    CAST_OPS,
    MASKED_FILL_OPS,
    QK_OPS,
    WHERE_OPS,
    Layout,
    Modifications,
    aten,
    fake_value,
    scale_of,
)
from ioaware.passes.driver import NoMatch
from ioaware.passes.views import LAYOUT_OPS, shape_of
from ioaware.spec import SCORE

# The raw product q·k (before any scale) while the score chain is interpreted.
RAW = sympy.Symbol("raw", real=True)
# A fill at or below this is "huge": bias + fill rounds to the fill in fp32, and SDPA's
# CUDA backends (efficient, cuDNN) treat keys carrying it as masked (H100, torch 2.11).
HUGE_FILL = -1e30
HALF = (torch.float16, torch.bfloat16)


@dataclasses.dataclass
class MaskTerm:
    """One mask on the scores: where `allowed` fails the logit becomes -inf (NEG_INF,
    SAFE), `fill` (FILL), or gets `fill` added (ADD)."""

    allowed: sympy.Basic
    semantics: MaskSemantics
    fill: float
    node: fx.Node


def score_input(node: fx.Node) -> fx.Node:
    """The operand of a score-chain op that carries the scores (not the mask)."""
    if node.target in WHERE_OPS:
        # where(mask, scores, fill) or where(mask, fill, scores)
        a, b = node.args[1], node.args[2]
        if isinstance(a, fx.Node) and on_score_path(a):
            return a
        return b
    if node.target in ADD_OPS:
        a, b = node.args[0], node.args[1]
        return a if isinstance(a, fx.Node) and on_score_path(a) else b
    return node.args[0]


def on_score_path(node: fx.Node) -> bool:
    """True when a bmm is reachable from `node` through score-chain ops."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 64:
        if node.target in QK_OPS:
            return True
        if node.op != "call_function" or not node.args:
            return False
        if node.target in WHERE_OPS or node.target in ADD_OPS:
            return any(on_score_path(a) for a in node.args if isinstance(a, fx.Node))
        node = node.args[0]
        seen += 1
    return False


def index_term(x: Any, rank: int, layout: Layout, data: masks.DataInputs, node: fx.Node,
          heads: int | None = None) -> masks.IndexTensor:
    """A mask / bias operand that meets scores of `rank`, in b, h, q_idx, kv_idx.

    heads: the (static) head count when the kernel sees [B, H] and a term meets the
    flattened [B·H, N, N] scores (a bmm's or baddbmm's own axis)."""
    if layout is Layout.ZKD and rank >= 4:
        rank = 2  # the kernel sees [B·H, N, N]: only q_idx, kv_idx can be named
    try:
        t = masks.index_tensor(x, {}, data)
        expr = masks.to_attention_axes(t.expr, rank, heads_axis=layout is Layout.ZKD, heads=heads)
    except masks.MaskError as e:
        raise NoMatch(f"{node.name}: mask or bias operand: {e}") from None
    expr = data.size_loads(expr)
    missing = [s.name for s in data.sizes if size_source(node.graph, s) is None]
    if missing:
        raise NoMatch(f"{node.name}: mask or bias depends on the runtime sizes {missing}, "
                      "which no graph input's shape provides")
    return masks.IndexTensor(expr, t.rank, t.is_bool)


def size_source(graph: fx.Graph, sym: sympy.Symbol) -> tuple[fx.Node, int | None] | None:
    """(placeholder, dim) whose size is `sym`, or (SymInt placeholder, None), or None."""
    for n in graph.nodes:
        if n.op != "placeholder":
            continue
        val = n.meta.get("val")
        if isinstance(val, torch.SymInt) and sympy.sympify(val.node.expr) == sym:
            return n, None
        if isinstance(val, torch.Tensor):
            for d, size in enumerate(val.shape):
                if isinstance(size, torch.SymInt) and sympy.sympify(size.node.expr) == sym:
                    return n, d
    return None


def _constant(x: Any, node: fx.Node) -> float:
    """A fill value: a Python number or a 0-d constant the graph builds."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    try:
        v = masks.index_tensor(x)
    except masks.MaskError:
        v = None
    if v is None or not v.expr.is_number:
        raise NoMatch(f"{node.name}: fill value {x} is not a constant")
    return float(v.expr)


def fill_semantics(fill: float, dtype: torch.dtype) -> tuple[MaskSemantics, float]:
    """(NEG_INF, -inf) when the fill is -inf in the scores' dtype, else (FILL, fill
    rounded to that dtype), converted as masked_fill converts its scalar (so
    masked_fill(-1e9) on fp16 scores is -inf)."""
    stored = torch.full((), fill, dtype=dtype).item()
    if math.isinf(stored) and stored < 0:
        return MaskSemantics.NEG_INF, float("-inf")
    return MaskSemantics.FILL, stored


def mask_values(expr: sympy.Basic) -> tuple[sympy.Basic, float, sympy.Basic] | None:
    """(allowed, fill, bias) when an additive term is a mask, maybe with a bias.

    A term that takes only 0 and one constant c is the mask "add c where not allowed"
    (bias 0). A bias plus such a mask (`bias + where(m, 0, finfo.min)`), or a bias
    replaced by the constant where masked (`where(m, bias, -inf)`), splits into the
    bias and the mask when c is -inf or below -1e30: then bias + c rounds to c in fp32
    as it does in eager, so the split is exact. Anything else is None (a plain bias).
    """
    parts = sympy.Add.make_args(expr)
    pure = [(i, _pure_mask(p)) for i, p in enumerate(parts)]
    pure = [(i, m) for i, m in pure if m is not None]
    if len(pure) == 1:
        i, (allowed, fill) = pure[0]
        bias = sympy.Add(*(p for j, p in enumerate(parts) if j != i))
    elif not pure:
        split = _masked_bias(expr) or _masked_bias(sympy.piecewise_fold(expr))
        if split is None:
            return None
        allowed, fill, bias = split
    else:
        return None  # several masks added: their fills would sum
    if bias != 0 and not (math.isinf(fill) or fill <= HUGE_FILL):
        return None
    return allowed, fill, bias


def _pure_mask(expr: sympy.Basic) -> tuple[sympy.Basic, float] | None:
    """(allowed, c) when `expr` takes only the values 0 and one constant c."""
    pw = sympy.piecewise_fold(expr)
    if not isinstance(pw, sympy.Piecewise):
        return None
    values = {v for v, _ in pw.args}
    if not all(v.is_number for v in values):
        return None
    nonzero = {float(v) for v in values if not v.is_zero}
    if len(nonzero) != 1:
        return None
    return _piecewise_zero(pw), nonzero.pop()


def _masked_bias(pw: sympy.Basic) -> tuple[sympy.Basic, float, sympy.Basic] | None:
    """(allowed, c, bias) for Piecewise((bias, cond), (c, True)) and its mirror."""
    if not isinstance(pw, sympy.Piecewise) or len(pw.args) != 2:
        return None
    (v0, c0), (v1, _) = pw.args
    if v1.is_number and not v0.is_number:
        return c0, float(v1), v0
    if v0.is_number and not v1.is_number:
        return sympy.Not(c0), float(v0), v1
    return None


def score_function(qk: fx.Node, chain: list[fx.Node], layout: Layout,
                    heads: int | None = None) -> tuple[Modifications, float]:
    """Interpret QKᵀ → chain → softmax: (the modifications, the product of scalar factors)."""
    mods = Modifications()
    data = mods.data
    expr, factor, terms = RAW, 1.0, []
    if qk.target is aten.baddbmm.default:  # beta·bias + alpha·(Q Kᵀ)
        beta = qk.kwargs.get("beta", 1)
        alpha = qk.kwargs.get("alpha", 1)
        if not (isinstance(alpha, (int, float)) and isinstance(beta, (int, float)) and alpha > 0):
            raise NoMatch(f"{qk.name}: baddbmm alpha={alpha}, beta={beta} are not constants > 0")
        expr, factor = RAW * alpha, float(alpha)
        if beta:
            expr = expr + beta * index_term(qk.args[0], 3, layout, data, qk, heads).expr
    for node in chain:
        rank = len(shape_of(node))
        c = scale_of(node)
        if c is not None:
            if not c > 0:
                raise NoMatch(f"{node.name}: scores multiplied by {c} (not positive)")
            expr, factor = expr * c, factor * c
            for t in terms:
                t.fill = t.fill * c
            continue
        if node.target in CAST_OPS or node.target in LAYOUT_OPS:
            continue
        if node.target in ADD_OPS:
            a, b = node.args[0], node.args[1]
            scores_first = isinstance(a, fx.Node) and on_score_path(a)
            other = b if scores_first else a
            if node.target is aten.sub.Tensor and not scores_first:
                raise NoMatch(f"{node.name}: scores subtracted from a tensor")
            sign = -1 if node.target is aten.sub.Tensor else 1
            alpha = node.kwargs.get("alpha", 1)
            x = sign * alpha * masks.as_num(index_term(other, rank, layout, data, node, heads))
            values = mask_values(x)
            if values is not None:
                allowed, fill, x = values
                sem, fill = fill_semantics(fill, fake_value(node).dtype)
                # a finite fill added is ADD: the score still reaches softmax; -inf
                # added lets an empty row's NaN reach the score's gradient
                added = {MaskSemantics.FILL: MaskSemantics.ADD,
                         MaskSemantics.NEG_INF: MaskSemantics.NEG_INF_ADD}[sem]
                terms.append(MaskTerm(allowed, added, fill, node))
                mods.fill_rounded |= fake_value(node).dtype in HALF
                if x == 0:
                    continue
            if any(t.semantics is MaskSemantics.FILL for t in terms):
                raise NoMatch(f"{node.name}: a bias added after a masked_fill with a finite "
                              "value (the Spec cannot order them)")
            expr = expr + x
            mods.rounded |= fake_value(node).dtype in HALF
            continue
        if node.target in MASKED_FILL_OPS:
            m = masks.as_bool(index_term(node.args[1], rank, layout, data, node, heads))
            sem, fill = fill_semantics(_constant(node.args[2], node), fake_value(node).dtype)
            terms.append(MaskTerm(sympy.Not(m), sem, fill, node))
            continue
        if node.target in WHERE_OPS:
            cond, a, b = node.args
            scores_first = isinstance(a, fx.Node) and on_score_path(a)
            m = masks.as_bool(index_term(cond, rank, layout, data, node, heads))
            sem, fill = fill_semantics(_constant(b if scores_first else a, node),
                                        fake_value(node).dtype)
            terms.append(MaskTerm(m if scores_first else sympy.Not(m), sem, fill, node))
            continue
        if node.target is aten.tanh.default:
            if terms:
                raise NoMatch(f"{node.name}: tanh of masked scores (a masked -inf becomes -1)")
            expr = sympy.tanh(expr)
            mods.rounded |= fake_value(node).dtype in HALF
            continue
        raise NoMatch(f"{node.name}: {node.target} on the scores is not handled")
    _combine_masks(terms, mods)
    score_mod = sympy.expand(expr.xreplace({RAW: SCORE / factor}))
    if sympy.expand(score_mod - SCORE) != 0:
        mods.score_mod = score_mod
    return mods, factor


def _combine_masks(terms: list[MaskTerm], mods: Modifications) -> None:
    """One predicate and one semantics for every mask on the chain, or NoMatch."""
    if not terms:
        return
    kinds = {t.semantics for t in terms}
    if len(kinds) > 1:
        names = ", ".join(f"{t.node.name} ({t.semantics})" for t in terms)
        raise NoMatch(f"masks {names} mix kinds (-inf or finite, filled or added: they "
                      "differ in a row with no visible key); one Spec holds one kind")
    kind = kinds.pop()
    if kind is MaskSemantics.ADD and len(terms) > 1:
        raise NoMatch(f"{terms[1].node.name}: a second additive mask (masked elements would "
                      "get the sum of the fills)")
    if len({t.fill for t in terms}) > 1:
        raise NoMatch(f"{terms[1].node.name}: masks fill different values "
                      f"{sorted({t.fill for t in terms})}")
    allowed = sympy.And(*[t.allowed for t in terms])
    set_mask(mods, allowed, kind, terms[0].fill)


def set_mask(mods: Modifications, allowed: sympy.Basic, semantics: MaskSemantics,
             fill: float) -> None:
    """Split a causal conjunct off `allowed` (the kernel's fast path) and keep the rest.

    A predicate that is exactly causal never leaves a row without keys (top-left aligned,
    row i sees key 0), so its semantics cannot show and the plain causal kernel serves,
    provided the masked keys weigh exactly 0 (a fill of -inf or near finfo.min).
    """
    rest = []
    # A finite fill (masked_fill(-1.0), an additive -1e4) still takes part in softmax:
    # only a fill that exp() turns into exactly 0 lets the causal kernel drop those keys.
    drops = semantics in (MaskSemantics.NEG_INF, MaskSemantics.NEG_INF_ADD,
                          MaskSemantics.SAFE) or fill <= HUGE_FILL
    for c in masks.conjuncts(allowed):
        if drops and masks.describe(c) == "causal":
            mods.causal = True
        elif c is not sympy.true:
            rest.append(c)
    mods.mask = sympy.And(*rest) if rest else None
    if mods.mask is not None:
        mods.semantics, mods.fill = semantics, fill


def _piecewise_zero(expr: sympy.Piecewise) -> sympy.Basic:
    """Condition under which a Piecewise is 0."""
    keep, taken = sympy.false, sympy.false
    for value, cond in expr.args:
        here = sympy.And(cond, sympy.Not(taken))
        if value.is_zero:
            keep = sympy.Or(keep, here)
        taken = sympy.Or(taken, cond)
    return keep

