"""Attention pass: exact attention written in plain PyTorch → one FlashAttention kernel.

Two entry shapes, both on the canonical ATen graph from `ioaware.capture`:

1. Softmax-anchored (what `@`, matmul, bmm and einsum spellings all become):

       bmm(Q3, Kt3) ─ layout ─ score chain ─ _softmax(-1) ─ prob chain ─ layout ─ bmm(P3, V3)

   score chain: scalar mul/div (the scale), a mask by masked_fill / where / an additive
   index-only tensor, dtype casts; prob chain: casts, clone (dropout p=0 or eval).
   A scale on Q or K (mul by a scalar before their layout chains) is folded too.
2. `aten.scaled_dot_product_attention` without a mask tensor (is_causal, enable_gqa).

The match is structural first (cheap), then precise: every intermediate must have one
user, softmax must run over the key axis, the layout chains must only regroup the
leading axes, the mask must be index-only and a structure `masks.classify` names, and
the cost model must say the rewrite pays. A failed check becomes a `Fallback` with the
reason; the region then stays exactly as it was.

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
from ioaware.explain import Fallback, Rewrite
from ioaware.passes import masks
from ioaware.passes.views import (
    LAYOUT_OPS,
    hinted_shape,
    is_batch_reshape,
    is_layout,
    shape_of,
)
from ioaware.spec import DTYPES, AttentionSpec, dtype_name

aten = torch.ops.aten

CAST_OPS = {aten._to_copy.default}
WHERE_OPS = {aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}
# Block sizes the cost model assumes for the generated kernel (codegen autotunes around
# these on a GPU; the modelled K/V re-read count depends on block_m).
MODEL_BLOCK_M, MODEL_BLOCK_N = 128, 64


class NoMatch(Exception):
    """A candidate region that is not rewritten; the message is the reason."""


@dataclasses.dataclass
class AttentionMatch:
    """Everything the rewrite needs; q/k/v are graph nodes or builders of them."""

    q: Any  # fx.Node, or a callable(graph) -> fx.Node that rebuilds it unscaled
    k: Any
    v: Any
    layout: str  # "bhnd": q,k,v are 4-D [B,H,N,D]; "zkd": 3-D [Z,N,D] (k as Kᵀ [Z,D,N])
    scale: float
    mask: str  # "none" | "causal"
    output: fx.Node  # the node whose value the kernel's output replaces
    region: list[fx.Node]  # nodes of the eager region (for costing and the report)
    source: str  # "matmul" | "sdpa"
    dims: dict[str, int]  # hinted B, Hq, Hkv, Nq, Nk, D, Dv
    dtype: torch.dtype


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
        c = _scalar_arg(node.args[1])
        return c
    if node.target in (aten.div.Tensor, aten.div.Scalar) and not node.kwargs.get("rounding_mode"):
        c = _scalar_arg(node.args[1])
        return None if not c else 1.0 / c
    return None


# ---------------------------------------------------------------------------------------
# matching: softmax-anchored


def candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """Softmax nodes and SDPA calls: every place attention might be."""
    return [
        n for n in gm.graph.nodes
        if n.op == "call_function"
        and n.target in (aten._softmax.default, aten.scaled_dot_product_attention.default)
    ]


def match_softmax(sm: fx.Node) -> AttentionMatch:
    x, dim = sm.args[0], sm.args[1]
    rank = len(shape_of(sm))
    if dim % rank != rank - 1:
        raise NoMatch(f"{sm.name}: softmax over axis {dim}, not the key (last) axis")
    if sm.args[2]:
        raise NoMatch(f"{sm.name}: half_to_float softmax is not handled")

    # --- forward from softmax to the PV bmm -------------------------------------------
    node, prob_chain = sm, []
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
        if user.target is aten.native_dropout.default:
            raise NoMatch(f"{user.name}: dropout p={user.args[1]} in training (not in v0)")
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
    scale, mask_terms, score_chain = 1.0, [], []
    node = x
    while node.target is not aten.bmm.default:
        if node.op != "call_function":
            raise NoMatch(f"{sm.name}: scores come from {node.name}, not from a matmul")
        if not _single_user(node):
            users = ", ".join(u.name for u in node.users)
            raise NoMatch(f"{node.name}: the scores are used elsewhere ({users})")
        score_chain.append(node)
        c = _scale_of(node)
        if c is not None:
            scale *= c
        elif node.target in CAST_OPS or node.target in LAYOUT_OPS:
            pass
        elif node.target in (aten.masked_fill.Scalar, aten.add.Tensor) or node.target in WHERE_OPS:
            mask_terms.append(node)
        else:
            raise NoMatch(f"{node.name}: {node.target} on the scores is not handled in v0")
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

    mask = _infer_mask(mask_terms)
    q3, kt3 = qk.args

    # fold a scalar scale applied to Q or K before their layout chains
    q_op, q_scale = _fold_operand_scale(q3)
    k_op, k_scale = _fold_operand_scale(kt3)
    scale *= q_scale * k_scale
    if not scale > 0:
        raise NoMatch(f"{qk.name}: scale {scale} is not positive")

    dtype = _val(q3).dtype
    for name, t in (("q", q3), ("k", kt3), ("v", v3), ("probabilities", p3)):
        if _val(t).dtype != dtype:
            raise NoMatch(f"{pv.name}: {name} is {_val(t).dtype}, q is {dtype} (mixed dtypes)")
    if dtype not in DTYPES.values():
        raise NoMatch(f"{qk.name}: dtype {dtype} is not fp16/bf16/fp32")

    z, nq, d = hinted_shape(q3)
    nk = hinted_shape(kt3)[2]
    dv = hinted_shape(v3)[2]
    layout, q_node, k_node, v_node, b, h = "zkd", q_op, k_op, v3, 1, z
    q4, k4, v4 = (_unflatten_source(t) for t in (q3, kt3, v3))
    if q_op is q3 and k_op is kt3 and q4 is not None and k4 is not None and v4 is not None:
        lead = {hinted_shape(t)[:2] for t in (q4, k4, v4)}
        if len(lead) == 1:
            layout, q_node, k_node, v_node = "bhnd", q4, k4, v4
            b, h = next(iter(lead))
    region = [qk, *score_chain, sm, *prob_chain, pv]
    return AttentionMatch(
        q=q_node, k=k_node, v=v_node, layout=layout, scale=scale, mask=mask, output=pv,
        region=region, source="matmul",
        dims={"B": b, "Hq": h, "Hkv": h, "Nq": nq, "Nk": nk, "D": d, "Dv": dv}, dtype=dtype,
    )


def _score_input(node: fx.Node) -> fx.Node:
    """The operand of a score-chain op that carries the scores (not the mask)."""
    if node.target in WHERE_OPS:
        # where(mask, scores, fill) or where(mask, fill, scores)
        a, b = node.args[1], node.args[2]
        if isinstance(a, fx.Node) and _on_score_path(a):
            return a
        return b
    if node.target is aten.add.Tensor:
        a, b = node.args[0], node.args[1]
        return a if _on_score_path(a) else b
    return node.args[0]


def _on_score_path(node: fx.Node) -> bool:
    """True when a bmm is reachable from `node` through score-chain ops."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 64:
        if node.target is aten.bmm.default:
            return True
        if node.op != "call_function" or not node.args:
            return False
        if node.target in WHERE_OPS or node.target is aten.add.Tensor:
            return any(_on_score_path(a) for a in node.args if isinstance(a, fx.Node))
        node = node.args[0]
        seen += 1
    return False


def _infer_mask(terms: list[fx.Node]) -> str:
    """Combine every mask term on the score chain into one allowed-keys predicate."""
    allowed = sympy.true
    for node in terms:
        try:
            if node.target is aten.masked_fill.Scalar:
                fill = node.args[2]
                if not _is_minus_inf(fill, node):
                    raise NoMatch(f"{node.name}: masked_fill value {fill} is not -inf")
                m = masks.index_tensor(node.args[1])
                allowed = sympy.And(allowed, sympy.Not(masks.as_bool(m)))
            elif node.target in WHERE_OPS:
                cond, a, b = node.args
                scores_first = isinstance(a, fx.Node) and _on_score_path(a)
                fill = b if scores_first else a
                if not _is_minus_inf(fill, node):
                    raise NoMatch(f"{node.name}: where() fill {fill} is not -inf")
                c = masks.as_bool(masks.index_tensor(cond))
                allowed = sympy.And(allowed, c if scores_first else sympy.Not(c))
            else:  # add: an additive mask of 0 and -inf
                a, b = node.args
                bias = b if _on_score_path(a) else a
                value = masks.index_tensor(bias)
                allowed = sympy.And(allowed, _additive_allowed(value.expr, node))
        except masks.MaskError as e:
            raise _data_dependent(f"{node.name}: mask", e) from None
    return _named_structure(allowed, f"{terms[-1].name}: mask" if terms else "mask")


def _data_dependent(what: str, error: masks.MaskError) -> NoMatch:
    return NoMatch(f"{what} is not an index-only expression ({error}); "
                   "data-dependent masks are not in v0")


def _named_structure(allowed: sympy.Basic, what: str) -> str:
    """The structure `masks.classify` names for `allowed`, or NoMatch saying it has none."""
    kind = masks.classify(allowed)
    if kind is None:
        raise NoMatch(f"{what} is index-only but not causal (not in v0)")
    return kind


def _additive_allowed(expr: sympy.Basic, node: fx.Node) -> sympy.Basic:
    """An additive mask must take only the values 0 (keep) and -inf (drop)."""
    if expr.is_zero:
        return sympy.true
    if isinstance(expr, sympy.Piecewise):
        values = {e for e, _ in expr.args}
        if all(v.is_zero or (v.is_number and _is_minus_inf(float(v), node)) for v in values):
            return _piecewise_zero(expr)
    raise NoMatch(f"{node.name}: additive term is not a 0/-inf mask (score biases are not in v0)")


def _piecewise_zero(expr: sympy.Piecewise) -> sympy.Basic:
    """Condition under which a 0/-inf Piecewise is 0."""
    keep, taken = sympy.false, sympy.false
    for value, cond in expr.args:
        here = sympy.And(cond, sympy.Not(taken))
        if value.is_zero:
            keep = sympy.Or(keep, here)
        taken = sympy.Or(taken, cond)
    return keep


def _is_minus_inf(fill: Any, node: fx.Node) -> bool:
    """-inf, or the most negative finite value of the scores' dtype (finfo.min).

    finfo.min behaves as -inf here because a causal row always keeps at least one key.
    """
    if not isinstance(fill, (int, float)):
        return False
    if math.isinf(fill) and fill < 0:
        return True
    dtype = _val(node).dtype
    return dtype.is_floating_point and fill <= torch.finfo(dtype).min


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
    if t3.target not in (aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        return None
    inner = t3.args[0]
    if inner.target is aten.expand.default and hinted_shape(inner) == hinted_shape(inner.args[0]):
        inner = inner.args[0]
    s4, s3 = hinted_shape(inner), hinted_shape(t3)
    if len(s4) != 4 or s4[2:] != s3[1:] or s4[0] * s4[1] != s3[0]:
        return None
    return inner


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
    mask = "causal" if bound["is_causal"] else "none"
    if bound["attn_mask"] is not None:
        mask = _sdpa_mask(node, bound["attn_mask"])
    if bound["dropout_p"]:
        raise NoMatch(f"{node.name}: SDPA with dropout_p={bound['dropout_p']} (not in v0)")
    shapes = [hinted_shape(t) for t in (q, k, v)]
    if any(len(s) != 4 for s in shapes):
        raise NoMatch(f"{node.name}: SDPA inputs of rank {[len(s) for s in shapes]}, "
                      "expected 4-D [B, H, N, D]")
    (b, hq, nq, d), (bk, hkv, nk, dk), (bv, hv, nv, dv) = shapes
    if not (b == bk == bv and hkv == hv and nk == nv and d == dk):
        raise NoMatch(f"{node.name}: SDPA shapes {shapes} need broadcasting (not in v0)")
    if hq != hkv and not (bound["enable_gqa"] and hq % hkv == 0):
        raise NoMatch(f"{node.name}: {hq} query heads vs {hkv} key heads without enable_gqa")
    dtype = _val(q).dtype
    if {_val(t).dtype for t in (q, k, v)} != {dtype} or dtype not in DTYPES.values():
        raise NoMatch(f"{node.name}: dtypes {[_val(t).dtype for t in (q, k, v)]} "
                      "are mixed or not fp16/bf16/fp32")
    scale = bound["scale"] if bound["scale"] is not None else 1.0 / math.sqrt(d)
    return AttentionMatch(
        q=q, k=k, v=v, layout="sdpa", scale=float(scale),
        mask=mask, output=node, region=[node],
        source="sdpa", dtype=dtype,
        dims={"B": b, "Hq": hq, "Hkv": hkv, "Nq": nq, "Nk": nk, "D": d, "Dv": dv},
    )


def _sdpa_mask(node: fx.Node, attn_mask: Any) -> str:
    """Classify SDPA's attn_mask: bool (True keeps a key) or additive (0 / -inf).

    transformers passes an index-only causal mask this way when no padding mask is
    given; data-dependent masks are left to eager.
    """
    try:
        m = masks.index_tensor(attn_mask)
        allowed = masks.as_bool(m) if m.is_bool else _additive_allowed(m.expr, node)
    except masks.MaskError as e:
        raise _data_dependent(f"{node.name}: SDPA attn_mask", e) from None
    return _named_structure(allowed, f"{node.name}: SDPA attn_mask")


# ---------------------------------------------------------------------------------------
# costing and rewriting


def region_costs(m: AttentionMatch) -> tuple[cost.Cost, cost.Cost]:
    """Modelled cost of the eager region and of the generated kernel (forward)."""
    d = m.dims
    itemsize = torch.empty((), dtype=m.dtype).element_size()
    after = cost.flash_attention_cost(
        d["B"], d["Hq"], d["Hkv"], d["Nq"], d["Nk"], d["D"], d["Dv"], itemsize,
        m.mask == "causal", MODEL_BLOCK_M, MODEL_BLOCK_N,
    )
    if m.source == "sdpa":
        return after, after  # SDPA is already a fused kernel: same model either way
    before = cost.Cost.zero()
    for n in m.region:
        c = cost.node_cost(n)
        if c is not None:
            before = before + c
    return before, after


def apply(gm: fx.GraphModule, m: AttentionMatch) -> None:
    """Replace the region by a call to the ioaware::flash_attention custom op."""
    from ioaware.codegen import ops  # noqa: F401  (registers torch.ops.ioaware)

    g = gm.graph
    out = m.output
    with g.inserting_before(out):
        # q and k are nodes, or rebuilders that replay their layout chain without a
        # folded scale (see _fold_operand_scale).
        q = m.q if isinstance(m.q, fx.Node) else m.q(g)
        k = m.k if isinstance(m.k, fx.Node) else m.k(g)
        v = m.v
        if m.layout == "zkd":
            q = g.call_function(aten.unsqueeze.default, (q, 0))
            k = g.call_function(aten.unsqueeze.default, (k, 0))
            k = g.call_function(aten.transpose.int, (k, -2, -1))
            v = g.call_function(aten.unsqueeze.default, (v, 0))
        elif m.layout == "bhnd":
            k = g.call_function(aten.transpose.int, (k, -2, -1))
        res = g.call_function(
            torch.ops.ioaware.flash_attention.default, (q, k, v, m.scale, m.mask == "causal")
        )
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


def spec_of(m: AttentionMatch) -> AttentionSpec:
    return AttentionSpec(
        head_dim=m.dims["D"], head_dim_v=m.dims["Dv"], dtype=dtype_name(m.dtype),
        causal=m.mask == "causal", scale=m.scale,
    )


def run(
    gm: fx.GraphModule, profile: Any, backend_name: str, hints: dict
) -> tuple[list[Rewrite], list[Fallback]]:
    """Find and rewrite every attention region in `gm`; report what was done and why not.

    hints: values for the graph's size symbols (dynamo's), to evaluate modelled costs.
    """
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
            before, after = region_costs(m)
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
        detail = {"mask": m.mask, "source": m.source, "scale": round(m.scale, 6),
                  "dtype": dtype_name(m.dtype), "layout": m.layout}
        if m.dims["Hq"] != m.dims["Hkv"]:
            detail["gqa_groups"] = m.dims["Hq"] // m.dims["Hkv"]
        ev_before, ev_after = before.evaluate(hints), after.evaluate(hints)
        rewrites.append(Rewrite(
            kind="attention", detail=detail,
            hbm_bytes_before=int(ev_before["hbm_bytes"]), hbm_bytes_after=int(ev_after["hbm_bytes"]),
            flops=int(ev_after["flops"]), flops_before=int(ev_before["flops"]),
            backend=backend_name,
        ))
        apply(gm, m)
    return rewrites, fallbacks


__all__ = [
    "AttentionMatch",
    "NoMatch",
    "candidates",
    "match_sdpa",
    "match_softmax",
    "run",
]
