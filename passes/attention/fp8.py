"""FP8 operands: q, k and/or v dequantized in plain PyTorch right before attention.

    x = x8.to(dtype) * s        x8: float8_e4m3fn; s: a Python number or a one-element
                                floating tensor (one scale for the whole tensor)

in any of its spellings: `.to(dtype)`, `.float()`, `.type(...)` and chains of them on
either side of the scaling, `s * x` or `x * s`, `x / s`. The region then reads x8 (one
byte an element) and s instead of the dequantized copy, which eager writes (2 bytes an
element) and reads back (2 more): per FP8 operand of n elements the rewrite saves the
copy's 4n bytes and halves the kernel's own read of it.

What is not served stays as it was, the reason in `explain` (the region itself is still
rewritten, reading the dequantized 16-bit tensor):
    everything, unless `config.fp8_attention` (IOAWARE_FP8_ATTENTION=1) is on: an H200
    ran the FP8 forward slower than the 16-bit one on the dequantized tensors (`OFF_REASON`)
    a scale of more than one element (per-channel, per-block, per-token)
    float8_e5m2 or the fnuz formats
    a gradient that would flow through the region (a scale, an FP8 tensor or a 16-bit
    operand that requires grad, with grad enabled): the FP8 forward has no backward
    a GPU older than sm_89 (no e4m3 in Triton there)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import fx

from ioaware.codegen.attention.spec import FP8_DTYPE
from ioaware.config import config
from ioaware.passes.attention.masks import needs_grad
from ioaware.passes.attention.operands import FLOAT8_DTYPES, kv_source
from ioaware.passes.attention.record import CAST_OPS, AttentionMatch, aten, fake_value
from ioaware.passes.views import is_layout

_MUL_OPS = {aten.mul.Tensor, aten.mul.Scalar}
_DIV_OPS = {aten.div.Tensor, aten.div.Scalar}
OTHER_FP8 = tuple(d for d in FLOAT8_DTYPES if d != FP8_DTYPE)


@dataclasses.dataclass(frozen=True)
class Dequant:
    """x = source · scale (or source / scale when `divide`)."""

    source: fx.Node  # the float8_e4m3fn tensor
    scale: float | fx.Node  # a Python number, or a node of one element
    divide: bool = False


class Refused(Exception):
    """An FP8 dequantization the kernels do not serve; the message says why."""


# Casts that hold every e4m3 value exactly (3 mantissa bits, |x| <= 448). Any other
# (an integer, another FP8 format) changes the values: that is not a dequantization.
EXACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cast_source(node: Any) -> Any:
    """`node` with its exact dtype casts (`_to_copy` with only a dtype in EXACT_DTYPES)
    stripped."""
    while isinstance(node, fx.Node) and node.op == "call_function" and \
            node.target in CAST_OPS and set(node.kwargs) <= {"dtype"} and \
            node.kwargs.get("dtype") in EXACT_DTYPES:
        node = node.args[0]
    return node


def _fp8_of(node: Any) -> fx.Node | None:
    """The FP8 tensor `node` is a cast of, or None; Refused for an FP8 format not served."""
    src = _cast_source(node)
    if src is node or not isinstance(src, fx.Node):
        return None
    val = fake_value(src)
    dtype = getattr(val, "dtype", None)
    if dtype in OTHER_FP8:
        raise Refused(f"{src.name} is {dtype} (only float8_e4m3fn is served)")
    return src if dtype == FP8_DTYPE else None


def _scale_value(scale: Any, node: fx.Node) -> float | fx.Node:
    """A Python number, or a node of one floating element; Refused otherwise."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not (math.isfinite(scale) and scale != 0):
            raise Refused(f"{node.name}: scale {scale} is not a finite nonzero number")
        return float(scale)
    val = fake_value(scale) if isinstance(scale, fx.Node) else None
    if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        raise Refused(f"{node.name}: the scale is not a number or a floating tensor")
    if not isinstance(val.numel(), int) or val.numel() != 1:
        raise Refused(f"{node.name}: a scale of shape {list(val.shape)} (per-channel or "
                      "per-block); only one scale per tensor is served")
    return scale


def dequant_of(node: Any) -> Dequant | None:
    """How `node` dequantizes an FP8 tensor, or None when it does not (a 16-bit operand);
    Refused for an FP8 dequantization the kernels do not serve."""
    if not isinstance(node, fx.Node):
        return None
    src = _fp8_of(node)
    if src is not None:
        return Dequant(src, 1.0)
    op = _cast_source(node)
    if not isinstance(op, fx.Node) or op.op != "call_function" or \
            op.target not in _MUL_OPS | _DIV_OPS:
        return None
    a, b = op.args[:2]
    if op.target in _DIV_OPS:
        if op.kwargs.get("rounding_mode") is not None:
            return None
        src = _fp8_of(a)
        return None if src is None else Dequant(src, _scale_value(b, op), divide=True)
    for x, s in ((a, b), (b, a)):
        src = _fp8_of(x)
        if src is not None:
            break
    if src is None:
        return None
    if tuple(fake_value(op).shape) != tuple(fake_value(src).shape):
        raise Refused(f"{op.name}: the scale broadcasts {list(fake_value(src).shape)} to "
                      f"{list(fake_value(op).shape)}")
    return Dequant(src, _scale_value(s, op))


def _below_layout(node: Any) -> tuple[Any, list[fx.Node]]:
    """(the node under `node`'s layout ops, those ops innermost first): a per-tensor
    scale commutes with ops that only move elements (expand over a batch, transposes)."""
    chain = []
    while isinstance(node, fx.Node) and is_layout(node):
        chain.append(node)
        node = node.args[0]
    return node, chain[::-1]


def _replayed(source: fx.Node, chain: list[fx.Node]) -> Any:
    """`source`, or a builder of the layout ops `chain` replayed on it."""
    if not chain:
        return source

    def build(g: fx.Graph) -> fx.Node:
        cur = source
        for n in chain:
            cur = g.call_function(n.target, (cur, *n.args[1:]), dict(n.kwargs))
        return cur

    return build


# Why FP8 operands are not read by default: measured slower than the 16-bit path.
OFF_REASON = ("the FP8 forward ran slower than the 16-bit kernel on the dequantized "
              "tensors (H200, 2026-12-07: 0.82x dense, 0.92x causal at B=4 H=16 N=4096 "
              "d=128); IOAWARE_FP8_ATTENTION=1 (config.fp8_attention) takes it")


def take(m: AttentionMatch) -> None:
    """Read the region's FP8 operands at their source: sets m.fp8 (and m.q, m.k, m.v to
    the FP8 tensors, through the layout ops the operand took after its dequantization),
    or m.fp8_refused with why the dequantization stays as it was."""
    found, layouts, dequantized = {}, {}, {}
    try:
        for name in "qkv":
            node, layouts[name] = _below_layout(getattr(m, name))
            d = dequant_of(node)
            if d is not None:
                found[name], dequantized[name] = d, node
    except Refused as e:
        m.fp8_refused = str(e)
        return
    if not found:
        return
    if not config.fp8_attention:
        m.fp8_refused = OFF_REASON
        return
    reason = device_reason(fake_value(m.output).device)
    if reason:
        m.fp8_refused = reason
        return
    if torch.is_grad_enabled():
        for name in "qkv":
            d = found.get(name)
            parts = [d.source, d.scale] if d else [getattr(m, name)]
            for x in parts:
                if isinstance(x, fx.Node) and needs_grad(x):
                    m.fp8_refused = (f"{x.name} ({name}) requires grad and the FP8 forward "
                                     "has no backward")
                    return
    for name, d in found.items():
        m.region[:0] = [n for n in _chain(dequantized[name], d.source) if len(n.users) == 1]
        setattr(m, name, _replayed(d.source, layouts[name]))
    if "k" in found and "v" in found and m.dims["Hkv"] == m.dims["Hq"]:
        _share_kv_heads(m)
    m.fp8 = {name: found[name] for name in "qkv" if name in found}


def device_reason(device: torch.device) -> str | None:
    """Why FP8 operands cannot be read on `device` (None: they can). Triton's e4m3
    (`fp8e4nv`) loads and products need sm_89 or later; the interpreter (CPU tensors)
    and a graph priced on meta tensors take them."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 (e4m3) operands need sm_89 or later; this GPU is sm_{major}{minor}"
    return None


def _chain(node: fx.Node, source: fx.Node) -> list[fx.Node]:
    """The casts and the scaling between `source` and the operand `node`, in graph order:
    eager's dequantized copy, which the rewrite removes when nothing else reads it."""
    chain = []
    while node is not source:
        chain.append(node)
        if node.target in CAST_OPS:
            node = node.args[0]
        else:  # the scaling: its operand that is a cast of the source
            node = next(a for a in node.args[:2] if _cast_source(a) is source)
    return chain[::-1]


def _share_kv_heads(m: AttentionMatch) -> None:
    """K and V repeated for GQA before the dequantization (repeat_kv on the FP8 cache):
    read the FP8 source with its Hkv heads, as for 16-bit K/V."""
    (k, gk), (v, gv) = kv_source(m.k), kv_source(m.v)
    if gk == gv and gk > 1:
        m.k, m.v = k, v
        m.dims["Hkv"] = m.dims["Hq"] // gk


def describe(m: AttentionMatch) -> str | None:
    """What `explain` says: "fp8 k,v (per-tensor scales)", or why the FP8 operands are
    read dequantized; None when the region has no FP8 operand."""
    if m.fp8:
        return f"fp8 {','.join(m.fp8)} (per-tensor scales)"
    if m.fp8_refused:
        return f"not taken: {m.fp8_refused}; the region reads the dequantized tensors"
    return None


def scale_inputs(g: fx.Graph, m: AttentionMatch) -> list[fx.Node]:
    """The op's scale inputs, one one-element fp32 tensor per FP8 operand in q, k, v
    order: a Python number becomes a constant tensor, a tensor is read as fp32 [1], a
    division by s a multiplication by 1/s."""
    device = fake_value(m.output).device
    nodes = []
    for d in m.fp8.values():
        if isinstance(d.scale, float):
            value = 1.0 / d.scale if d.divide else d.scale
            s = g.call_function(aten.full.default, ([1], value),
                                {"dtype": torch.float32, "device": device})
        else:
            s = g.call_function(aten.reshape.default, (d.scale, [1]))
            if fake_value(d.scale).dtype != torch.float32:
                s = g.call_function(aten._to_copy.default, (s,), {"dtype": torch.float32})
            if d.divide:
                s = g.call_function(aten.reciprocal.default, (s,))
        nodes.append(s)
    return nodes
