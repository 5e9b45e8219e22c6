"""Where q, k and v come from: the tensors the kernel reads instead of the bmm operands.

matmul on 4-D tensors flattens them to [B·H, N, D] (read the 4-D source and its strides,
not the reshape's copy); Kᵀ is read as K; K/V repeated for GQA (expand+reshape or
repeat_interleave) are read at their source with Hkv heads; a scalar scale applied to Q
or K is folded into the kernel's scale, the operand rebuilt without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ioaware.passes.attention.record import (
    CAST_OPS,
    RESHAPE_OPS,
    aten,
    scale_of,
    single_user,
)
from ioaware.passes.views import hinted_shape, is_layout, shape_of

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
                 torch.float8_e5m2fnuz)


def fold_operand_scale(operand: fx.Node) -> tuple[Any, float]:
    """If `operand` = layout(mul(x, c)) with single users, return (rebuilder, c)."""
    chain, node = [], operand
    while is_layout(node) and single_user(node):
        chain.append(node)
        node = node.args[0]
    c = scale_of(node) if isinstance(node, fx.Node) else None
    if c is None or not single_user(node) or not isinstance(node.args[0], fx.Node):
        return operand, 1.0
    if is_fp8_cast(node.args[0]):
        return operand, 1.0  # an FP8 dequantization's scale: the fp8 step reads it
    chain.reverse()
    src = node.args[0]

    def rebuild(graph: fx.Graph) -> fx.Node:
        cur = src
        for n in chain:
            cur = graph.call_function(n.target, (cur, *n.args[1:]), dict(n.kwargs))
        return cur

    return rebuild, c


def is_fp8_cast(node: fx.Node) -> bool:
    """Whether `node` is a chain of dtype casts of a float8 tensor."""
    while node.op == "call_function" and node.target in CAST_OPS:
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return False
        val = node.meta.get("val")
        if getattr(val, "dtype", None) in FLOAT8_DTYPES:
            return True
    return False


def unflatten_source(t3: fx.Node) -> fx.Node | None:
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


def untranspose(kt4: fx.Node) -> Any:
    """K as [B, H, N, D] from Kᵀ [B, H, D, N]: the transpose's input, or a builder of one."""
    if kt4.target is aten.transpose.int and {d % 4 for d in kt4.args[1:3]} == {2, 3}:
        return kt4.args[0]
    return lambda g: g.call_function(aten.transpose.int, (kt4, -2, -1))


def kv_source(x: Any) -> tuple[Any, int]:
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


def split_heads(chain: list[fx.Node], z: int, nq: int, nk: int) -> tuple[int, int] | None:
    """(B, H) when the score chain views [Z, Nq, Nk] as [B, H, Nq, Nk] with static sizes."""
    for n in chain:
        if n.target in RESHAPE_OPS:
            shape = shape_of(n)
            if (len(shape) == 4 and all(isinstance(x, int) for x in shape)
                    and tuple(shape[2:]) == (nq, nk) and shape[0] * shape[1] == z):
                return shape[0], shape[1]
    return None


def reshaped(x: Any, shape: list[int], transpose: bool = False) -> Any:
    """A builder of reshape(x, shape) (then Kᵀ → K), x a node or a builder."""
    def build(g: fx.Graph) -> fx.Node:
        src = x if isinstance(x, fx.Node) else x(g)
        out = g.call_function(aten.reshape.default, (src, shape))
        return g.call_function(aten.transpose.int, (out, -2, -1)) if transpose else out

    return build

