"""Softmax-anchored attention matching: what `@`, matmul, bmm, baddbmm and einsum become.

    bmm(Q3, Kt3) ─ layout ─ score chain ─ _softmax(-1) ─ prob chain ─ layout ─ bmm(P3, V3)

score chain: scalar mul/div (the scale), masks (masked_fill, where, additive 0/fill
tensors), additive biases, tanh (soft-capping), dtype casts (see score_chain.py); prob
chain: casts, clone (dropout p=0 or eval), native_dropout (training). A scale on Q or K
(mul by a scalar before their layout chains) is folded too (operands.py).

The match is structural first (cheap), then precise: every intermediate must have one
user, softmax must run over the key axis, the layout chains must only regroup the
leading axes, the masks must combine into one Spec semantics. A failed check raises
`NoMatch` with the reason; the region then stays exactly as it was.
"""

from __future__ import annotations

import math
import operator

from torch import fx

from ioaware.passes.attention import masks
from ioaware.passes.attention.operands import (
    fold_operand_scale,
    kv_source,
    reshaped,
    split_heads,
    unflatten_source,
    untranspose,
)
from ioaware.passes.attention.record import (
    CAST_OPS,
    QK_OPS,
    AttentionMatch,
    Layout,
    Source,
    aten,
    fake_value,
    single_user,
)
from ioaware.passes.attention.score_chain import score_function, score_input
from ioaware.passes.driver import NoMatch
from ioaware.passes.views import LAYOUT_OPS, hinted_shape, is_batch_reshape, shape_of
from ioaware.spec import DTYPES


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
        node = score_input(node)
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
        if not single_user(node):
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
        if not single_user(node):
            users = ", ".join(u.name for u in node.users)
            raise NoMatch(f"{node.name}: the scores are used elsewhere ({users})")
        score_chain.append(node)
        node = score_input(node)
    qk = node
    if not single_user(qk):
        raise NoMatch(f"{qk.name}: the raw scores QKᵀ are used elsewhere")
    score_chain.reverse()
    layout_before = [n for n in score_chain if n.target in LAYOUT_OPS]
    if not is_batch_reshape(layout_before, hinted_shape(qk)):
        raise NoMatch(f"{qk.name}: scores reach softmax through a re-layout that mixes the "
                      "query/key axes")
    for n in score_chain:
        if n.target not in LAYOUT_OPS and tuple(shape_of(n)) != tuple(shape_of(score_input(n))):
            raise NoMatch(f"{n.name}: broadcasts the scores to a larger shape")

    q3, kt3 = (qk.args[1], qk.args[2]) if qk.target is aten.baddbmm.default else qk.args
    # fold a scalar scale applied to Q or K before their layout chains
    q_op, q_scale = fold_operand_scale(q3)
    k_op, k_scale = fold_operand_scale(kt3)

    dtype = fake_value(q3).dtype
    for name, t in (("q", q3), ("k", kt3), ("v", v3), ("probabilities", p3)):
        if fake_value(t).dtype != dtype:
            raise NoMatch(f"{pv.name}: {name} is {fake_value(t).dtype}, q is {dtype} "
                          "(mixed dtypes)")
    if dtype not in DTYPES.values():
        raise NoMatch(f"{qk.name}: dtype {dtype} is not fp16/bf16/fp32")

    z, nq, d = hinted_shape(q3)
    nk = hinted_shape(kt3)[2]
    dv = hinted_shape(v3)[2]
    layout, q_node, k_node, v_node, b, hq, hkv = Layout.ZKD, q_op, k_op, v3, 1, z, z
    q4, k4, v4 = (unflatten_source(t) for t in (q3, kt3, v3))
    if q_op is q3 and k_op is kt3 and q4 is not None and k4 is not None and v4 is not None:
        lead = {hinted_shape(t)[:2] for t in (q4, k4, v4)}
        if len(lead) == 1:
            b, hq = next(iter(lead))
            k_bhnd = untranspose(k4)
            (k_src, k_groups), (v_src, v_groups) = kv_source(k_bhnd), kv_source(v4)
            if k_groups != v_groups:  # read the copies: correct, just not shared
                (k_src, k_groups), (v_src, v_groups) = (k_bhnd, 1), (v4, 1)
            layout, q_node, k_node, v_node = Layout.BHND, q4, k_src, v_src
            hkv = hq // k_groups

    split = split_heads(score_chain, z, nq, nk) if layout is Layout.ZKD else None
    if split is not None:
        # bmm/baddbmm over [B·H] whose scores are viewed as [B, H, Nq, Nk] (to mask them by
        # batch): hand the kernel [B, H] views, so masks and biases can name b and h.
        b, hq = split
        hkv = hq
        layout = Layout.BHND
        q_node = reshaped(q_op, [b, hq, nq, d])
        k_node = reshaped(k_op, [b, hq, d, nk], transpose=True)
        v_node = reshaped(v3, [b, hq, nk, dv])
    heads = hq if layout is Layout.BHND and isinstance(shape_of(q3)[0], int) else None
    mods, factor = score_function(qk, score_chain, layout, heads)
    mods.dropout_p = dropout_p
    scale = factor * q_scale * k_scale
    if not scale > 0:
        raise NoMatch(f"{qk.name}: scale {scale} is not positive")
    region = [qk, *score_chain, sm, *prob_chain, pv, *extra]
    return AttentionMatch(
        q=q_node, k=k_node, v=v_node, layout=layout, scale=scale,
        mask=masks.describe(mods.mask, mods.causal), output=pv, region=region,
        source=Source.MATMUL,
        dims={"B": b, "Hq": hq, "Hkv": hkv, "Nq": nq, "Nk": nk, "D": d, "Dv": dv},
        dtype=dtype, mods=mods,
    )
