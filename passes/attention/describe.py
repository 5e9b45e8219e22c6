"""What `explain` and the report say about an attention rewrite: its `Rewrite.detail`."""

from __future__ import annotations

from typing import Any

import sympy

from ioaware.codegen.attention import gluon_backward, gluon_forward
from ioaware.passes.attention import fp8, masks
from ioaware.passes.attention.pricing import mask_density
from ioaware.passes.attention.record import AttentionMatch, fake_value
from ioaware.passes.attention.rewrite import spec_of
from ioaware.spec import H_IDX, KV_IDX, Q_IDX, SCORE, dtype_name


def detail_of(m: AttentionMatch) -> dict[str, Any]:
    """Plain data (text, numbers, lists): what was inferred, by name."""
    mods = m.mods
    detail: dict[str, Any] = {"mask": m.mask, "source": m.source.value,
                              "scale": round(m.scale, 6), "dtype": dtype_name(m.dtype),
                              "layout": m.layout.value}
    if mods.score_mod is not None:
        detail["score_mod"] = _describe_score_mod(mods.score_mod)
    if m.dims["Hq"] != m.dims["Hkv"]:
        detail["gqa_groups"] = m.dims["Hq"] // m.dims["Hkv"]
    if mods.mask is not None:
        density = mask_density(m)
        detail["block_density"] = "runtime" if density is None else round(density, 4)
        detail["mask_semantics"] = mods.semantics.value
    if mods.dropout_p:
        detail["dropout_p"] = mods.dropout_p
    fp8_operands = fp8.describe(m)
    if fp8_operands is not None:
        detail["fp8"] = fp8_operands
    return detail


def gluon_forward_status(m: AttentionMatch, backend_name: str) -> str | None:
    """Where the region's kernels run on a CUDA device: "pinnable" when the Gluon forward
    (codegen/attention/gluon_forward.py) could run it there, else why not (a pinned
    Gluon config then runs the Triton forward). None elsewhere (the interpreter, the
    reference, a report priced on meta tensors): nothing could pin it there."""
    value = fake_value(m.output)
    device = getattr(value, "device", None)
    if backend_name != "triton" or device is None or device.type != "cuda":
        return None
    try:
        spec = spec_of(m)
    except (TypeError, ValueError):  # symbolic head dims: no plain Spec to judge yet
        return None
    reason = gluon_forward.unavailable_reason(spec, device)
    return "pinnable" if reason is None else f"not available: {reason}"


def gluon_backward_status(m: AttentionMatch, backend_name: str) -> str | None:
    """The same for the Gluon dK/dV kernel (codegen/attention/gluon_backward.py): shown
    wherever the forward's status is (a region on a CUDA device, a plain Spec)."""
    if gluon_forward_status(m, backend_name) is None:
        return None
    reason = gluon_backward.unavailable_reason(spec_of(m), fake_value(m.output).device)
    return "pinnable" if reason is None else f"not available: {reason}"


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
