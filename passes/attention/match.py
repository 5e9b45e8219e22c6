"""Attention pass: exact attention written in plain PyTorch → one FlashAttention kernel.

Two entry shapes, both on the canonical ATen graph from `ioaware.capture`:

1. Softmax-anchored (what `@`, matmul, bmm, baddbmm and einsum spellings all become):

       bmm(Q3, Kt3) ─ layout ─ score chain ─ _softmax(-1) ─ prob chain ─ layout ─ bmm(P3, V3)

   score chain: scalar mul/div (the scale), masks (masked_fill, where, additive 0/fill
   tensors), additive biases, tanh (soft-capping), dtype casts; prob chain: casts,
   clone (dropout p=0 or eval), native_dropout (training). A scale on Q or K (mul by a
   scalar before their layout chains) is folded too.
2. `aten.scaled_dot_product_attention` (is_causal, enable_gqa, a bool or additive
   attn_mask, dropout_p).

The score chain is interpreted in order as a function of the raw product R = q·k: each
scalar factor scales it, each bias adds an expression (from `masks.index_tensor`:
index arithmetic, loads of data tensors), each mask records an allowed-keys predicate
with what a masked element becomes ("neg_inf", "fill" with a value, "add" a value).
With scale = the product of the scalar factors, score_mod(score) is the chain's
function at R = score / (chain factor), so a bias added before the scale is scaled.

The match is structural first (cheap), then precise: every intermediate must have one
user, softmax must run over the key axis, the layout chains must only regroup the
leading axes, the masks must combine into one Spec semantics, and the cost model must
say the rewrite pays. A failed check becomes a `Fallback` with the reason; the region
then stays exactly as it was. GQA: K/V repeated by expand+reshape or repeat_interleave
are read at their source with Hkv heads, never the copy.

IO (per batch·head, unfused, N = Nq = Nk, fp16): write S (2N²), read/write it once per
pointwise step and softmax, read P (2N²) — Θ(N²) bytes — against FlashAttention's
Q, O (2Nd each) plus K, V once per query block: Θ(N²d²/M). See docs/cost-model.md.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import sympy
import torch
from torch import fx

from ioaware import cost
from ioaware.codegen.attention import tiles
from ioaware.codegen.attention.price import flash_attention_cost
from ioaware.explain import Fallback, Rewrite
from ioaware.passes.attention import masks
from ioaware.passes.views import (
    LAYOUT_OPS,
    hinted_shape,
    is_batch_reshape,
    is_layout,
    shape_of,
)
from ioaware.spec import DTYPES, H_IDX, KV_IDX, Q_IDX, SCORE, AttentionSpec, dtype_name

aten = torch.ops.aten

CAST_OPS = {aten._to_copy.default}
WHERE_OPS = {aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}
MASKED_FILL_OPS = {aten.masked_fill.Scalar, aten.masked_fill.Tensor}
ADD_OPS = {aten.add.Tensor, aten.sub.Tensor}
QK_OPS = {aten.bmm.default, aten.baddbmm.default}
RESHAPE_OPS = {aten.reshape.default, aten.view.default, aten._unsafe_view.default}
# Block sizes the cost model assumes for the generated kernel (codegen autotunes around
# these on a GPU; the modelled K/V re-read count depends on block_m).
MODEL_BLOCK_M, MODEL_BLOCK_N = 128, 64

# The raw product q·k (before any scale) while the score chain is interpreted.
RAW = sympy.Symbol("raw", real=True)
# A fill at or below this is "huge": bias + fill rounds to the fill in fp32, and SDPA's
# CUDA backends (efficient, cuDNN) treat keys carrying it as masked (H100, torch 2.11).
HUGE_FILL = -1e30


class NoMatch(Exception):
    """A candidate region that is not rewritten; the message is the reason."""


@dataclasses.dataclass
class MaskTerm:
    """One mask on the scores: where `allowed` fails the logit becomes -inf ("neg_inf",
    "safe"), `fill` ("fill"), or gets `fill` added ("add")."""

    allowed: sympy.Basic
    semantics: str
    fill: float
    node: fx.Node


@dataclasses.dataclass
class Modifications:
    """What the region computes besides softmax(scale·QKᵀ)V, over (b, h, q_idx, kv_idx)."""

    causal: bool = False
    mask: sympy.Basic | None = None  # allowed-keys predicate besides `causal`
    score_mod: sympy.Basic | None = None  # in SCORE = scale·q·k
    semantics: str = "neg_inf"
    fill: float = float("-inf")
    data: masks.DataInputs = dataclasses.field(default_factory=masks.DataInputs)
    dropout_p: float = 0.0

    @property
    def general(self) -> bool:
        """True when only the general `ioaware::attention` op can express this."""
        return (self.mask is not None or self.score_mod is not None or self.dropout_p > 0
                or bool(self.data.nodes) or bool(self.data.sizes))


@dataclasses.dataclass
class AttentionMatch:
    """Everything the rewrite needs; q/k/v are graph nodes or builders of them."""

    q: Any  # fx.Node, or a callable(graph) -> fx.Node that builds it
    k: Any
    v: Any
    layout: str  # "bhnd"/"sdpa": q,k,v as 4-D [B,H,N,D]; "zkd": 3-D [Z,N,D] (k as Kᵀ [Z,D,N])
    scale: float
    mask: str  # the structure's name for explain: "none", "causal", "causal & padding", ...
    output: fx.Node  # the node whose value the kernel's output replaces
    region: list[fx.Node]  # nodes of the eager region (for costing and the report)
    source: str  # "matmul" | "sdpa"
    dims: dict[str, int]  # hinted B, Hq, Hkv, Nq, Nk, D, Dv
    dtype: torch.dtype
    mods: Modifications = dataclasses.field(default_factory=Modifications)


# ---------------------------------------------------------------------------------------
# small guards


def _val(node: fx.Node) -> Any:
    return node.meta.get("val")


def _single_user(node: fx.Node) -> bool:
    return len(node.users) == 1


def _scalar_arg(x: Any) -> float | None:
    """A Python number (not a tensor, not symbolic) or None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    return None


def _scale_of(node: fx.Node) -> float | None:
    """The factor of a `mul(x, c)` / `div(x, c)` by a Python scalar c, else None."""
    if node.op != "call_function":
        return None
    if node.target in (aten.mul.Tensor, aten.mul.Scalar):
        return _scalar_arg(node.args[1])
    if node.target in (aten.div.Tensor, aten.div.Scalar) and not node.kwargs.get("rounding_mode"):
        c = _scalar_arg(node.args[1])
        return None if not c else 1.0 / c
    return None


# ---------------------------------------------------------------------------------------
# matching: softmax-anchored


def candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """SDPA calls, and softmaxes shaped like attention: every place attention might be."""
    return [
        n for n in gm.graph.nodes
        if n.op == "call_function"
        and (n.target is aten.scaled_dot_product_attention.default
             or (n.target is aten._softmax.default and _attention_shaped(n)))
    ]


def _attention_shaped(sm: fx.Node) -> bool:
    """A softmax over scores from a bmm, or whose probabilities reach a bmm.

    Cheap and lenient: the precise checks are match_softmax's, and what fails them is a
    fallback with its reason. This only keeps softmaxes that are not attention at all
    (a mixture-of-experts router's softmax over `linear` logits feeding `topk`) out of
    the attention report. Backward, the walk follows the score operand through ops that
    keep the scores' element count (elementwise ops, casts, leading-axis reshapes).
    """
    try:
        return _scores_from_bmm(sm) or _probabilities_to_bmm(sm)
    except (KeyError, AttributeError, TypeError):  # a node without a tensor value:
        return True  # keep it, and let match_softmax say what it is


def _scores_from_bmm(sm: fx.Node) -> bool:
    numel = math.prod(hinted_shape(sm))
    node = sm.args[0]
    for _ in range(64):
        if not isinstance(node, fx.Node) or node.op != "call_function":
            break
        if math.prod(hinted_shape(node)) != numel:
            break
        if node.target in QK_OPS:
            return True
        node = _score_input(node)
    return False


def _probabilities_to_bmm(sm: fx.Node) -> bool:
    node = sm
    for _ in range(8):
        users = list(node.users)
        if node.target is aten.native_dropout.default:  # follow the output, not the mask
            users = [u for u in users if u.target is operator.getitem and u.args[1] == 0]
        if len(users) != 1:
            return False
        node = users[0]
        if node.target is aten.bmm.default:
            return True
        if node.target not in CAST_OPS and node.target not in LAYOUT_OPS and \
                node.target not in (operator.getitem, aten.native_dropout.default):
            return False
    return False


def _dropout_of(node: fx.Node) -> tuple[float, list[fx.Node]] | None:
    """(p, nodes) for `native_dropout(x, p, train)[0]`; p = 0 when it is the identity."""
    if node.target is not aten.native_dropout.default:
        return None
    outs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    unused = [u for u in node.users if u.target is operator.getitem and not u.users
              and u.args[1] == 1]
    if len(outs) != 1 or len(outs) + len(unused) != len(node.users):
        raise NoMatch(f"{node.name}: the dropout keep mask is used elsewhere")
    p, train = node.args[1], node.args[2] if len(node.args) > 2 else True
    if not isinstance(p, (int, float)) or isinstance(train, fx.Node):
        raise NoMatch(f"{node.name}: dropout p={p}, train={train} are not constants")
    return (float(p) if train else 0.0), [node, outs[0], *unused]


def match_softmax(sm: fx.Node) -> AttentionMatch:
    x, dim = sm.args[0], sm.args[1]
    rank = len(shape_of(sm))
    if dim % rank != rank - 1:
        raise NoMatch(f"{sm.name}: softmax over axis {dim}, not the key (last) axis")
    if sm.args[2]:
        raise NoMatch(f"{sm.name}: half_to_float softmax is not handled")

    # --- forward from softmax to the PV bmm -------------------------------------------
    node, prob_chain, extra, dropout_p = sm, [], [], 0.0
    while True:
        if not _single_user(node):
            users = ", ".join(u.name for u in node.users) or "nothing"
            raise NoMatch(f"{node.name}: the probabilities are used elsewhere ({users})")
        user = next(iter(node.users))
        if user.target is aten.bmm.default:
            break
        if user.target in CAST_OPS or user.target in LAYOUT_OPS:
            prob_chain.append(user)
            node = user
            continue
        drop = _dropout_of(user)
        if drop is not None:
            if dropout_p:
                raise NoMatch(f"{user.name}: a second dropout on the probabilities")
            dropout_p, (nd, out, *unused) = drop[0], drop[1]
            if not 0.0 <= dropout_p < 1.0:
                raise NoMatch(f"{user.name}: dropout p={dropout_p} is not in [0, 1)")
            prob_chain += [nd, out]
            extra += unused
            node = out
            continue
        raise NoMatch(f"{user.name}: softmax output feeds {user.target}, not a matmul with V")
    pv = user
    if pv.args[0] is not node:
        raise NoMatch(f"{pv.name}: probabilities are the right operand of the matmul")
    p3, v3 = pv.args
    layout_after = [n for n in prob_chain if n.target in LAYOUT_OPS]
    if not is_batch_reshape(layout_after, hinted_shape(sm)):
        raise NoMatch(f"{pv.name}: probabilities reach the matmul through a re-layout that "
                      "mixes the query/key axes")

    # --- backward from softmax to the QK bmm ------------------------------------------
    score_chain = []
    node = x
    while node.target not in QK_OPS:
        if node.op != "call_function":
            raise NoMatch(f"{sm.name}: scores come from {node.name}, not from a matmul")
        if not _single_user(node):
            users = ", ".join(u.name for u in node.users)
            raise NoMatch(f"{node.name}: the scores are used elsewhere ({users})")
        score_chain.append(node)
        node = _score_input(node)
    qk = node
    if not _single_user(qk):
        raise NoMatch(f"{qk.name}: the raw scores QKᵀ are used elsewhere")
    score_chain.reverse()
    layout_before = [n for n in score_chain if n.target in LAYOUT_OPS]
    if not is_batch_reshape(layout_before, hinted_shape(qk)):
        raise NoMatch(f"{qk.name}: scores reach softmax through a re-layout that mixes the "
                      "query/key axes")
    for n in score_chain:
        if n.target not in LAYOUT_OPS and tuple(shape_of(n)) != tuple(shape_of(_score_input(n))):
            raise NoMatch(f"{n.name}: broadcasts the scores to a larger shape")

    q3, kt3 = (qk.args[1], qk.args[2]) if qk.target is aten.baddbmm.default else qk.args
    # fold a scalar scale applied to Q or K before their layout chains
    q_op, q_scale = _fold_operand_scale(q3)
    k_op, k_scale = _fold_operand_scale(kt3)

    dtype = _val(q3).dtype
    for name, t in (("q", q3), ("k", kt3), ("v", v3), ("probabilities", p3)):
        if _val(t).dtype != dtype:
            raise NoMatch(f"{pv.name}: {name} is {_val(t).dtype}, q is {dtype} (mixed dtypes)")
    if dtype not in DTYPES.values():
        raise NoMatch(f"{qk.name}: dtype {dtype} is not fp16/bf16/fp32")

    z, nq, d = hinted_shape(q3)
    nk = hinted_shape(kt3)[2]
    dv = hinted_shape(v3)[2]
    layout, q_node, k_node, v_node, b, hq, hkv = "zkd", q_op, k_op, v3, 1, z, z
    q4, k4, v4 = (_unflatten_source(t) for t in (q3, kt3, v3))
    if q_op is q3 and k_op is kt3 and q4 is not None and k4 is not None and v4 is not None:
        lead = {hinted_shape(t)[:2] for t in (q4, k4, v4)}
        if len(lead) == 1:
            b, hq = next(iter(lead))
            k_bhnd = _untranspose(k4)
            (k_src, k_groups), (v_src, v_groups) = _kv_source(k_bhnd), _kv_source(v4)
            if k_groups != v_groups:  # read the copies: correct, just not shared
                (k_src, k_groups), (v_src, v_groups) = (k_bhnd, 1), (v4, 1)
            layout, q_node, k_node, v_node = "bhnd", q4, k_src, v_src
            hkv = hq // k_groups

    split = _split_heads(score_chain, z, nq, nk) if layout == "zkd" else None
    if split is not None:
        # bmm/baddbmm over [B·H] whose scores are viewed as [B, H, Nq, Nk] (to mask them by
        # batch): hand the kernel [B, H] views, so masks and biases can name b and h.
        b, hq = split
        hkv = hq
        layout = "bhnd"
        q_node = _reshaped(q_op, [b, hq, nq, d])
        k_node = _reshaped(k_op, [b, hq, d, nk], transpose=True)
        v_node = _reshaped(v3, [b, hq, nk, dv])
    heads = hq if layout == "bhnd" and isinstance(shape_of(q3)[0], int) else None
    mods, factor = _score_function(qk, score_chain, layout, heads)
    mods.dropout_p = dropout_p
    scale = factor * q_scale * k_scale
    if not scale > 0:
        raise NoMatch(f"{qk.name}: scale {scale} is not positive")
    region = [qk, *score_chain, sm, *prob_chain, pv, *extra]
    return AttentionMatch(
        q=q_node, k=k_node, v=v_node, layout=layout, scale=scale,
        mask=masks.describe(mods.mask, mods.causal), output=pv, region=region,
        source="matmul",
        dims={"B": b, "Hq": hq, "Hkv": hkv, "Nq": nq, "Nk": nk, "D": d, "Dv": dv},
        dtype=dtype, mods=mods,
    )


def _split_heads(chain: list[fx.Node], z: int, nq: int, nk: int) -> tuple[int, int] | None:
    """(B, H) when the score chain views [Z, Nq, Nk] as [B, H, Nq, Nk] with static sizes."""
    for n in chain:
        if n.target in RESHAPE_OPS:
            shape = shape_of(n)
            if (len(shape) == 4 and all(isinstance(x, int) for x in shape)
                    and tuple(shape[2:]) == (nq, nk) and shape[0] * shape[1] == z):
                return shape[0], shape[1]
    return None


def _reshaped(x: Any, shape: list[int], transpose: bool = False) -> Any:
    """A builder of reshape(x, shape) (then Kᵀ → K), x a node or a builder."""
    def build(g: fx.Graph) -> fx.Node:
        src = x if isinstance(x, fx.Node) else x(g)
        out = g.call_function(aten.reshape.default, (src, shape))
        return g.call_function(aten.transpose.int, (out, -2, -1)) if transpose else out

    return build


def _score_input(node: fx.Node) -> fx.Node:
    """The operand of a score-chain op that carries the scores (not the mask)."""
    if node.target in WHERE_OPS:
        # where(mask, scores, fill) or where(mask, fill, scores)
        a, b = node.args[1], node.args[2]
        if isinstance(a, fx.Node) and _on_score_path(a):
            return a
        return b
    if node.target in ADD_OPS:
        a, b = node.args[0], node.args[1]
        return a if isinstance(a, fx.Node) and _on_score_path(a) else b
    return node.args[0]


def _on_score_path(node: fx.Node) -> bool:
    """True when a bmm is reachable from `node` through score-chain ops."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 64:
        if node.target in QK_OPS:
            return True
        if node.op != "call_function" or not node.args:
            return False
        if node.target in WHERE_OPS or node.target in ADD_OPS:
            return any(_on_score_path(a) for a in node.args if isinstance(a, fx.Node))
        node = node.args[0]
        seen += 1
    return False


# ---------------------------------------------------------------------------------------
# the score chain as a function: scale, biases, masks, soft-capping


def _term(x: Any, rank: int, layout: str, data: masks.DataInputs, node: fx.Node,
          heads: int | None = None) -> masks.IndexTensor:
    """A mask / bias operand that meets scores of `rank`, in b, h, q_idx, kv_idx.

    heads: the (static) head count when the kernel sees [B, H] and a term meets the
    flattened [B·H, N, N] scores (a bmm's or baddbmm's own axis)."""
    if layout == "zkd" and rank >= 4:
        rank = 2  # the kernel sees [B·H, N, N]: only q_idx, kv_idx can be named
    try:
        t = masks.index_tensor(x, {}, data)
        expr = masks.to_attention_axes(t.expr, rank, heads_axis=layout == "zkd", heads=heads)
    except masks.MaskError as e:
        raise NoMatch(f"{node.name}: mask or bias operand: {e}") from None
    expr = data.size_loads(expr)
    missing = [s.name for s in data.sizes if _size_source(node.graph, s) is None]
    if missing:
        raise NoMatch(f"{node.name}: mask or bias depends on the runtime sizes {missing}, "
                      "which no graph input's shape provides")
    return masks.IndexTensor(expr, t.rank, t.is_bool)


def _size_source(graph: fx.Graph, sym: sympy.Symbol) -> tuple[fx.Node, int | None] | None:
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


def _fill_semantics(fill: float, dtype: torch.dtype) -> tuple[str, float]:
    """("neg_inf", -inf) when the fill is -inf in the scores' dtype, else ("fill", fill
    rounded to that dtype), converted as masked_fill converts its scalar (so
    masked_fill(-1e9) on fp16 scores is -inf)."""
    stored = torch.full((), fill, dtype=dtype).item()
    if math.isinf(stored) and stored < 0:
        return "neg_inf", float("-inf")
    return "fill", stored


def _mask_values(expr: sympy.Basic) -> tuple[sympy.Basic, float, sympy.Basic] | None:
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


def _score_function(qk: fx.Node, chain: list[fx.Node], layout: str,
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
            expr = expr + beta * _term(qk.args[0], 3, layout, data, qk, heads).expr
    for node in chain:
        rank = len(shape_of(node))
        c = _scale_of(node)
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
            scores_first = isinstance(a, fx.Node) and _on_score_path(a)
            other = b if scores_first else a
            if node.target is aten.sub.Tensor and not scores_first:
                raise NoMatch(f"{node.name}: scores subtracted from a tensor")
            sign = -1 if node.target is aten.sub.Tensor else 1
            alpha = node.kwargs.get("alpha", 1)
            x = sign * alpha * masks.as_num(_term(other, rank, layout, data, node, heads))
            values = _mask_values(x)
            if values is not None:
                allowed, fill, x = values
                sem, fill = _fill_semantics(fill, _val(node).dtype)
                terms.append(MaskTerm(allowed, "add" if sem == "fill" else sem, fill, node))
                if x == 0:
                    continue
            if any(t.semantics == "fill" for t in terms):
                raise NoMatch(f"{node.name}: a bias added after a masked_fill with a finite "
                              "value (the Spec cannot order them)")
            expr = expr + x
            continue
        if node.target in MASKED_FILL_OPS:
            m = masks.as_bool(_term(node.args[1], rank, layout, data, node, heads))
            sem, fill = _fill_semantics(_constant(node.args[2], node), _val(node).dtype)
            terms.append(MaskTerm(sympy.Not(m), sem, fill, node))
            continue
        if node.target in WHERE_OPS:
            cond, a, b = node.args
            scores_first = isinstance(a, fx.Node) and _on_score_path(a)
            m = masks.as_bool(_term(cond, rank, layout, data, node, heads))
            sem, fill = _fill_semantics(_constant(b if scores_first else a, node),
                                        _val(node).dtype)
            terms.append(MaskTerm(m if scores_first else sympy.Not(m), sem, fill, node))
            continue
        if node.target is aten.tanh.default:
            if terms:
                raise NoMatch(f"{node.name}: tanh of masked scores (a masked -inf becomes -1)")
            expr = sympy.tanh(expr)
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
        raise NoMatch(f"masks {names} mix -inf and finite fills; one Spec holds one kind")
    kind = kinds.pop()
    if kind == "add" and len(terms) > 1:
        raise NoMatch(f"{terms[1].node.name}: a second additive mask (masked elements would "
                      "get the sum of the fills)")
    if len({t.fill for t in terms}) > 1:
        raise NoMatch(f"{terms[1].node.name}: masks fill different values "
                      f"{sorted({t.fill for t in terms})}")
    allowed = sympy.And(*[t.allowed for t in terms])
    _set_mask(mods, allowed, kind, terms[0].fill)


def _set_mask(mods: Modifications, allowed: sympy.Basic, semantics: str, fill: float) -> None:
    """Split a causal conjunct off `allowed` (the kernel's fast path) and keep the rest.

    A predicate that is exactly causal never leaves a row without keys (top-left aligned,
    row i sees key 0), so its semantics cannot show and the plain causal kernel serves,
    provided the masked keys weigh exactly 0 (a fill of -inf or near finfo.min).
    """
    rest = []
    # A finite fill (masked_fill(-1.0), an additive -1e4) still takes part in softmax:
    # only a fill that exp() turns into exactly 0 lets the causal kernel drop those keys.
    drops = semantics in ("neg_inf", "safe") or fill <= HUGE_FILL
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


def _fold_operand_scale(operand: fx.Node) -> tuple[Any, float]:
    """If `operand` = layout(mul(x, c)) with single users, return (rebuilder, c)."""
    chain, node = [], operand
    while is_layout(node) and _single_user(node):
        chain.append(node)
        node = node.args[0]
    c = _scale_of(node) if isinstance(node, fx.Node) else None
    if c is None or not _single_user(node) or not isinstance(node.args[0], fx.Node):
        return operand, 1.0
    chain.reverse()
    src = node.args[0]

    def rebuild(graph: fx.Graph) -> fx.Node:
        cur = src
        for n in chain:
            cur = graph.call_function(n.target, (cur, *n.args[1:]), dict(n.kwargs))
        return cur

    return rebuild, c


def _unflatten_source(t3: fx.Node) -> fx.Node | None:
    """The 4-D [B,H,...] tensor that matmul's decomposition flattened into `t3`, if any.

    matmul on 4-D tensors becomes reshape(expand(x, x.shape), [B*H, n, d]); reading x
    directly lets the kernel use its strides instead of the reshape's copy.
    """
    if t3.target not in RESHAPE_OPS:
        return None
    inner = t3.args[0]
    if inner.target is aten.expand.default and hinted_shape(inner) == hinted_shape(inner.args[0]):
        inner = inner.args[0]
    s4, s3 = hinted_shape(inner), hinted_shape(t3)
    if len(s4) != 4 or s4[2:] != s3[1:] or s4[0] * s4[1] != s3[0]:
        return None
    return inner


def _untranspose(kt4: fx.Node) -> Any:
    """K as [B, H, N, D] from Kᵀ [B, H, D, N]: the transpose's input, or a builder of one."""
    if kt4.target is aten.transpose.int and {d % 4 for d in kt4.args[1:3]} == {2, 3}:
        return kt4.args[0]
    return lambda g: g.call_function(aten.transpose.int, (kt4, -2, -1))


def _kv_source(x: Any) -> tuple[Any, int]:
    """(K or V with its own Hkv heads, Hq // Hkv) when `x` repeats heads for GQA, else (x, 1).

    Recognised: reshape(expand(unsqueeze(kv, 2), [B, Hkv, g, N, D]), [B, Hkv·g, N, D])
    (transformers' repeat_kv) and repeat_interleave(kv, g, dim=1); query head h then
    reads key/value head h // g, as the kernel does, so no copy is needed.
    """
    if not isinstance(x, fx.Node):
        return x, 1
    if x.target is aten.repeat_interleave.self_int:
        reps = x.args[1]
        dim = x.args[2] if len(x.args) > 2 else x.kwargs.get("dim")
        src = x.args[0]
        if isinstance(reps, int) and dim is not None and dim % 4 == 1 and \
                len(hinted_shape(src)) == 4:
            return src, reps
        return x, 1
    if x.target in RESHAPE_OPS and x.args[0].target is aten.expand.default:
        ex = x.args[0]
        un = ex.args[0]
        if un.target is aten.unsqueeze.default and un.args[1] % 5 == 2:
            src = un.args[0]
            s, e, o = hinted_shape(src), hinted_shape(ex), hinted_shape(x)
            if len(s) == 4 and len(e) == 5 and e[:2] == s[:2] and e[3:] == s[2:] and \
                    o == (s[0], s[1] * e[2], *s[2:]):
                return src, e[2]
    return x, 1


# ---------------------------------------------------------------------------------------
# matching: SDPA


_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                  "enable_gqa": False}


def match_sdpa(node: fx.Node) -> AttentionMatch:
    names = ["query", "key", "value", *_SDPA_DEFAULTS]
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    shapes = [hinted_shape(t) for t in (q, k, v)]
    if any(len(s) != 4 for s in shapes):
        raise NoMatch(f"{node.name}: SDPA inputs of rank {[len(s) for s in shapes]}, "
                      "expected 4-D [B, H, N, D]")
    (b, hq, nq, d), (bk, hkv, nk, dk), (bv, hv, nv, dv) = shapes
    if not (b == bk == bv and hkv == hv and nk == nv and d == dk):
        raise NoMatch(f"{node.name}: SDPA shapes {shapes} need broadcasting (not handled)")
    if hq != hkv and not (bound["enable_gqa"] and hq % hkv == 0):
        raise NoMatch(f"{node.name}: {hq} query heads vs {hkv} key heads without enable_gqa")
    dtype = _val(q).dtype
    if {_val(t).dtype for t in (q, k, v)} != {dtype} or dtype not in DTYPES.values():
        raise NoMatch(f"{node.name}: dtypes {[_val(t).dtype for t in (q, k, v)]} "
                      "are mixed or not fp16/bf16/fp32")
    p = bound["dropout_p"]
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise NoMatch(f"{node.name}: SDPA dropout_p={p} is not a constant in [0, 1)")
    mods = Modifications(causal=bool(bound["is_causal"]), dropout_p=float(p))
    if bound["attn_mask"] is not None:
        if mods.causal:
            raise NoMatch(f"{node.name}: SDPA with both attn_mask and is_causal (eager raises)")
        _sdpa_mask(node, bound["attn_mask"], dtype, (b, hq, nq, nk), mods)
    (k_src, k_groups), (v_src, v_groups) = _kv_source(k), _kv_source(v)
    if k_groups == v_groups and k_groups > 1:
        k, v, hkv = k_src, v_src, hkv // k_groups
    scale = bound["scale"] if bound["scale"] is not None else 1.0 / math.sqrt(d)
    return AttentionMatch(
        q=q, k=k, v=v, layout="sdpa", scale=float(scale),
        mask=masks.describe(mods.mask, mods.causal), output=node, region=[node],
        source="sdpa", dtype=dtype, mods=mods,
        dims={"B": b, "Hq": hq, "Hkv": hkv, "Nq": nq, "Nk": nk, "D": d, "Dv": dv},
    )


def _cuda_semantics(node: fx.Node) -> bool:
    """Whether SDPA at `node` runs on CUDA, whose backends mask huge finite fills."""
    return _val(node).device.type == "cuda"


def _sdpa_mask(node: fx.Node, attn_mask: Any, dtype: torch.dtype, shape: tuple[int, ...],
               mods: Modifications) -> None:
    """SDPA's attn_mask: bool (True keeps a key) or additive, added to the scaled scores.

    SDPA gives a row whose keys are all masked (False, or -inf) the output 0 (torch 2.5+,
    checked on 2.13 CPU and 2.11 CUDA; cuDNN's is arbitrary at N % 128 == 64, a bug:
    pytorch/pytorch#196678): "safe". An additive mask of 0 and a finite fill is "add"
    (on CUDA "safe" when the fill is huge, as the backends there do); any other
    additive tensor is a bias in score_mod, with its -inf entries (on CUDA: its huge
    ones) as a "safe" mask.
    """
    val = _val(attn_mask)
    if not isinstance(val, torch.Tensor):
        raise NoMatch(f"{node.name}: attn_mask is not a tensor")
    on_cuda = _cuda_semantics(node)
    if val.dtype != torch.bool and val.dtype != dtype:
        raise NoMatch(f"{node.name}: attn_mask dtype {val.dtype} is neither bool nor the "
                      f"query dtype {dtype} (left to eager, which decides)")
    mshape = hinted_shape(attn_mask)
    if len(mshape) > 4 or any(m not in (1, s) for m, s in zip(mshape[::-1], shape[::-1])):
        raise NoMatch(f"{node.name}: attn_mask shape {list(mshape)} does not broadcast to "
                      f"{list(shape)} (left to eager)")
    t = _term(attn_mask, 4, "sdpa", mods.data, node)
    if t.is_bool:
        _set_mask(mods, t.expr, "safe", float("-inf"))
        return
    values = _mask_values(t.expr)
    if values is not None:
        allowed, fill, bias = values
        sem, fill = _fill_semantics(fill, dtype)
        if sem == "fill" and fill <= HUGE_FILL and on_cuda:
            # On CUDA the efficient and cuDNN backends (SDPA's picks for masked attention)
            # give a row whose keys all carry a huge finite fill 0, as for -inf; only the
            # math backend averages it uniformly (H100, torch 2.11: scripts/diag_gpu.py sdpa).
            sem, fill = "neg_inf", float("-inf")
        _set_mask(mods, allowed, "safe" if sem == "neg_inf" else "add", fill)
        if bias != 0:
            mods.score_mod = SCORE + bias
        return
    mods.score_mod = SCORE + t.expr
    if masks.loads(t.expr):
        # A data bias may hold -inf: those keys are masked, safely. On CUDA so are keys
        # whose bias is huge (finfo.min padding handed in as a tensor): a row of only
        # such keys is 0 there, as for a constant huge fill, not the uniform average.
        kept = sympy.Gt(t.expr, HUGE_FILL) if on_cuda else sympy.Ne(t.expr, -sympy.oo)
        _set_mask(mods, kept, "safe", float("-inf"))


# ---------------------------------------------------------------------------------------
# costing and rewriting


def priced_tile(m: AttentionMatch, profile: Any = None) -> dict[str, int]:
    """The forward tile the cost model prices: tiles.attention_tile on `profile` (the
    autotuner's first candidate), else MODEL_BLOCK_M x MODEL_BLOCK_N."""
    tile = None if profile is None else tiles.attention_tile(
        profile, m.dims["D"], m.dims["Dv"], m.dtype.itemsize)
    return tile or {"block_m": MODEL_BLOCK_M, "block_n": MODEL_BLOCK_N, "num_stages": 2}


def region_costs(m: AttentionMatch, profile: Any = None) -> tuple[cost.Cost, cost.Cost]:
    """Modelled cost of the eager region and of the generated kernel (forward), the
    kernel at `priced_tile`."""
    d = m.dims
    itemsize = m.dtype.itemsize
    density = _density(m, index_part=True)
    tile = priced_tile(m, profile)
    after = flash_attention_cost(
        d["B"], d["Hq"], d["Hkv"], d["Nq"], d["Nk"], d["D"], d["Dv"], itemsize,
        m.mods.causal, tile["block_m"], tile["block_n"], block_density=density or 1.0,
        num_stages=tile["num_stages"],
    )
    if m.source == "sdpa":
        return after, after  # SDPA is already a fused kernel: same model either way
    before = cost.Cost.zero()
    for n in m.region:
        c = cost.node_cost(n)
        if c is not None:
            before = before + c
    return before, after


def _density(m: AttentionMatch, index_part: bool = False) -> float | None:
    """Block density of the mask at the hint sizes (None: data-dependent or unknown).

    index_part: of the index-only conjuncts alone (a sliding window with padding): an
    upper bound the cost model can use where the data decides the rest at runtime.
    """
    mask = m.mods.mask
    if mask is not None and index_part:
        kept = [c for c in masks.conjuncts(mask) if not c.atoms(sympy.Indexed)]
        mask = sympy.And(*kept) if kept else None
    if mask is None:
        return 1.0
    return masks.block_density(mask, m.mods.causal, m.dims["Nq"], m.dims["Nk"],
                               MODEL_BLOCK_M, MODEL_BLOCK_N)


def _exact(expr: sympy.Basic) -> sympy.Basic:
    """Floats at 17 digits, so `str()` round-trips every bit of the double (finfo.min
    included; sympy's default 15 digits would round it past the fp32 range)."""
    return expr.xreplace({f: sympy.Float(repr(float(f)), 17)
                          for f in expr.atoms(sympy.Float)})


def spec_of(m: AttentionMatch) -> AttentionSpec:
    mods = m.mods
    return AttentionSpec(
        head_dim=m.dims["D"], head_dim_v=m.dims["Dv"], dtype=dtype_name(m.dtype),
        causal=mods.causal, scale=m.scale,
        mask=None if mods.mask is None else str(_exact(mods.mask)),
        score_mod=None if mods.score_mod is None else str(_exact(mods.score_mod)),
        inputs=tuple(mods.data.all_inputs()), mask_semantics=mods.semantics,
        mask_fill=mods.fill,
        dropout_p=mods.dropout_p,
    )


def _check_inputs_outside(m: AttentionMatch) -> None:
    """Every tensor the kernel reads must be computed without the region's own nodes."""
    region = set(m.region)
    for leaf in m.mods.data.nodes:
        stack, seen = [leaf], set()
        while stack:
            n = stack.pop()
            if n in region:
                raise NoMatch(f"{leaf.name}: a mask or bias computed from the scores")
            if n in seen or len(seen) > 10_000:
                continue
            seen.add(n)
            stack += [a for a in n.all_input_nodes]


def apply(gm: fx.GraphModule, m: AttentionMatch) -> None:
    """Replace the region by a call to ioaware::flash_attention, or ioaware::attention
    when it has a mask, score modification, extra inputs or dropout."""
    from ioaware.codegen.attention import op as ops  # noqa: F401  (registers torch.ops.ioaware)

    g = gm.graph
    out = m.output

    def build(x: Any) -> fx.Node:
        return x if isinstance(x, fx.Node) else x(g)

    with g.inserting_before(out):
        # q and k are nodes, or builders that replay their layout chain without a
        # folded scale (see _fold_operand_scale) or transpose Kᵀ back.
        q, k, v = build(m.q), build(m.k), build(m.v)
        if m.layout == "zkd":
            q = g.call_function(aten.unsqueeze.default, (q, 0))
            k = g.call_function(aten.unsqueeze.default, (k, 0))
            k = g.call_function(aten.transpose.int, (k, -2, -1))
            v = g.call_function(aten.unsqueeze.default, (v, 0))
        if m.mods.general:
            res = _general_call(g, m, q, k, v)
        else:
            res = g.call_function(torch.ops.ioaware.flash_attention.default,
                                  (q, k, v, m.scale, m.mods.causal))
        o = g.call_function(operator.getitem, (res, 0))
        if m.layout == "zkd":
            o = g.call_function(aten.squeeze.dim, (o, 0))
        elif m.layout == "bhnd":
            o = g.call_function(aten.flatten.using_ints, (o, 0, 1))
    out.replace_all_uses_with(o)
    # The region's nodes go explicitly: DCE keeps ops it deems impure (SDPA is
    # nondeterministic-seeded because of its dropout argument).
    for n in reversed(m.region):
        if not n.users:
            g.erase_node(n)
    g.eliminate_dead_code()
    gm.recompile()


def _general_call(g: fx.Graph, m: AttentionMatch, q: fx.Node, k: fx.Node, v: fx.Node
                  ) -> fx.Node:
    inputs = []
    for n in m.mods.data.nodes:
        if _val(n).dim() == 0:  # read as a 1-element vector
            n = g.call_function(aten.reshape.default, (n, [1]))
        inputs.append(n)
    if m.mods.data.sizes:  # the runtime sizes the expressions read, as int64 [n]
        device = _val(m.output).device
        scalars = []
        for sym in m.mods.data.sizes:
            src, dim = _size_source(g, sym)
            size = src if dim is None else g.call_function(aten.sym_size.int, (src, dim))
            scalars.append(g.call_function(aten.scalar_tensor.default, (size,),
                                           {"dtype": torch.int64, "device": device}))
        inputs.append(g.call_function(aten.stack.default, (scalars,)))
    seed = None
    if m.mods.dropout_p > 0:
        # Drawn from torch's generator in the graph, so every call differs as in eager
        # and torch.manual_seed makes a run reproducible.
        device = _val(m.output).device
        seed = g.call_function(aten.randint.low, (0, 2**31 - 1, [2]),
                               {"dtype": torch.int64, "device": device})
    return g.call_function(torch.ops.ioaware.attention.default,
                           (q, k, v, inputs, spec_of(m).to_json(), seed))


def _detail(m: AttentionMatch) -> dict[str, Any]:
    mods = m.mods
    detail: dict[str, Any] = {"mask": m.mask, "source": m.source, "scale": round(m.scale, 6),
                              "dtype": dtype_name(m.dtype), "layout": m.layout}
    if mods.score_mod is not None:
        detail["score_mod"] = _describe_score_mod(mods.score_mod)
    if m.dims["Hq"] != m.dims["Hkv"]:
        detail["gqa_groups"] = m.dims["Hq"] // m.dims["Hkv"]
    if mods.mask is not None:
        density = _density(m)
        detail["block_density"] = "runtime" if density is None else round(density, 4)
        detail["mask_semantics"] = mods.semantics
    if mods.dropout_p:
        detail["dropout_p"] = mods.dropout_p
    return detail


def _describe_score_mod(expr: sympy.Basic) -> list[str]:
    """Names of the parts of a score_mod: softcap, alibi, relative_bias, bias, index_bias."""
    names = ["softcap"] if expr.atoms(sympy.tanh) else []
    plain = {*masks.INDEX_SYMBOLS, sympy.Integer(0)}
    for term in sympy.Add.make_args(expr):
        if SCORE in term.free_symbols or term.is_number:
            continue
        lds = masks.loads(term)
        if not lds:
            names.append("index_bias")
        elif any(i not in plain and i.free_symbols & {Q_IDX, KV_IDX}
                 for ld in lds for i in ld.indices):
            names.append("relative_bias")  # a table read at a computed position index
        else:
            names.append("alibi" if _is_alibi(term) else "bias")
    return list(dict.fromkeys(names))


def _is_alibi(term: sympy.Basic) -> bool:
    """slope[h] · (affine in kv_idx, q_idx): a per-head slope times a distance."""
    lds = masks.loads(term)
    if len(lds) != 1:
        return False
    ld = next(iter(lds))
    if not set(ld.indices) <= {H_IDX, sympy.Integer(0)}:
        return False
    rest = sympy.simplify(term / ld)
    syms = rest.free_symbols
    return bool(syms) and syms <= {Q_IDX, KV_IDX} and rest.is_polynomial(*syms) and \
        sympy.Poly(rest, *syms).total_degree() == 1


def run(
    gm: fx.GraphModule, profile: Any, backend_name: str, hints: dict
) -> tuple[list[Rewrite], list[Fallback]]:
    """Find and rewrite every attention region in `gm`; report what was done and why not.

    hints: values for the graph's size symbols (dynamo's), to evaluate modelled costs.
    """
    from ioaware.codegen.attention import op as ops  # noqa: F401  (registers torch.ops.ioaware)

    rewrites: list[Rewrite] = []
    fallbacks: list[Fallback] = []
    for node in candidates(gm):
        if node.graph is not gm.graph or node not in gm.graph.nodes:
            continue  # removed by an earlier rewrite
        try:
            if node.target is aten._softmax.default:
                m = match_softmax(node)
            else:
                m = match_sdpa(node)
            spec_of(m)  # validates head dims, dtype, scale
            _check_inputs_outside(m)
            if m.mods.general and not hasattr(torch.ops.ioaware, "attention"):
                raise NoMatch(f"{m.output.name}: needs the general ioaware::attention op, "
                              "which this build does not register")
            before, after = region_costs(m, profile)
            pays, why = cost.rewrite_pays(before, after, profile, dtype_name(m.dtype), hints)
            # An SDPA call is already one fused kernel: same model before and after, so
            # the rewrite never loses; it pays in the backward and in explainability.
            if not pays and m.source != "sdpa":
                raise NoMatch(f"{m.output.name}: rewrite would not pay ({why})")
        except (NoMatch, ValueError) as e:
            fallbacks.append(Fallback(kind="attention", reason=str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - a bug here must not cost the user a crash
            fallbacks.append(Fallback(
                kind="attention",
                reason=f"{node.name}: internal error while matching ({type(e).__name__}: {e}); "
                       "left to eager, please report",
            ))
            continue
        ev_before, ev_after = before.evaluate(hints), after.evaluate(hints)
        rewrites.append(Rewrite(
            kind="attention", detail={**_detail(m), "tiles": priced_tile(m, profile)},
            hbm_bytes_before=int(ev_before["hbm_bytes"]), hbm_bytes_after=int(ev_after["hbm_bytes"]),
            flops=int(ev_after["flops"]), flops_before=int(ev_before["flops"]),
            backend=backend_name, cost_before=before, cost_after=after,
        ))
        apply(gm, m)
    return rewrites, fallbacks


__all__ = [
    "AttentionMatch",
    "Modifications",
    "NoMatch",
    "candidates",
    "match_sdpa",
    "match_softmax",
    "run",
    "spec_of",
]
