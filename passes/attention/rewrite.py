"""Rewriting an attention region: its Spec, and the graph edit that calls the kernel.

The region becomes one call to `ioaware::flash_attention`, or `ioaware::attention` when
it has a mask, score modification, extra inputs, dropout or FP8 operands (the Spec as
JSON).
"""

from __future__ import annotations

import operator
from typing import Any

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.passes.attention import fp8
from ioaware.passes.attention.record import AttentionMatch, Layout, aten, fake_value
from ioaware.passes.attention.score_chain import size_source
from ioaware.passes.driver import NoMatch
from ioaware.spec import dtype_name


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
        round_logits=mods.rounded and m.dtype in (torch.float16, torch.bfloat16),
        round_fill=mods.fill_rounded and m.dtype in (torch.float16, torch.bfloat16),
        fp8="".join(m.fp8),
    )


def check_inputs_outside(m: AttentionMatch) -> None:
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
        # folded scale (see fold_operand_scale) or transpose Kᵀ back.
        q, k, v = build(m.q), build(m.k), build(m.v)
        if m.layout is Layout.ZKD:
            q = g.call_function(aten.unsqueeze.default, (q, 0))
            k = g.call_function(aten.unsqueeze.default, (k, 0))
            k = g.call_function(aten.transpose.int, (k, -2, -1))
            v = g.call_function(aten.unsqueeze.default, (v, 0))
        if m.implementation != "generated":
            res = _sdpa_call(g, m, q, k, v)
        elif m.mods.general or m.fp8:
            res = _general_call(g, m, q, k, v)
        else:
            res = g.call_function(torch.ops.ioaware.flash_attention.default,
                                  (q, k, v, m.scale, m.mods.causal))
        o = g.call_function(operator.getitem, (res, 0))
        if m.layout is Layout.ZKD:
            o = g.call_function(aten.squeeze.dim, (o, 0))
        elif m.layout is Layout.BHND:
            o = g.call_function(aten.flatten.using_ints, (o, 0, 1))
        if _edited_in_place(out):
            # The op saves its output for the backward; an in-place edit of it (or of a
            # view of it) would fail the backward's version check. The edit gets a
            # private copy instead: one write of the output, only in such graphs.
            o = g.call_function(aten.clone.default, (o,))
    out.replace_all_uses_with(o)
    # The region's nodes go explicitly: DCE keeps ops it deems impure (SDPA is
    # nondeterministic-seeded because of its dropout argument).
    for n in reversed(m.region):
        if not n.users:
            g.erase_node(n)
    g.eliminate_dead_code()
    gm.recompile()


def _writes_arg0(target: Any) -> bool:
    """An ATen op that writes its first argument in place (`mul_`, `copy_`, out=...)."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


def _aliases_arg0(target: Any) -> bool:
    """An ATen view: its result shares the first argument's storage."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.returns or not schema.arguments:
        return False
    ret, arg = schema.returns[0].alias_info, schema.arguments[0].alias_info
    return ret is not None and arg is not None and not ret.is_write


def _edited_in_place(node: fx.Node) -> bool:
    """True when `node`, or a view of it, is the first argument of an in-place op."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for user in n.users:
            if user.args and user.args[0] is n:
                if _writes_arg0(user.target):
                    return True
                if _aliases_arg0(user.target):
                    stack.append(user)
            elif user.target is operator.getitem:
                stack.append(user)
    return False


# SDPA's backends as aten ops (each differentiable by its own formula); the arguments
# after q, k, v: (attn_bias, compute_log_sumexp,) dropout_p, is_causal(, return_debug_mask)
_SDPA_OPS = {
    "cudnn": (aten._scaled_dot_product_cudnn_attention.default, (None, True), (False,)),
    "flash": (aten._scaled_dot_product_flash_attention.default, (), (False,)),
    "efficient": (aten._scaled_dot_product_efficient_attention.default, (None, True), ()),
}


def _sdpa_call(g: fx.Graph, m: AttentionMatch, q: fx.Node, k: fx.Node, v: fx.Node
               ) -> fx.Node:
    """The SDPA backend `m.implementation` on q, k, v [B, H, N, d] (the choice was made
    only for plain or causal regions, passes/attention/choice.py). The backends need the
    head dim contiguous: where q, k or v may not have it, `contiguous` (a no-op when
    they do)."""
    op, before, after = _SDPA_OPS[m.implementation]
    qkv = []
    for x in (q, k, v):
        val = fake_value(x)
        if not (isinstance(val, torch.Tensor) and val.stride(-1) == 1):
            x = g.call_function(aten.contiguous.default, (x,))
        qkv.append(x)
    return g.call_function(op, (*qkv, *before, 0.0, m.mods.causal, *after),
                           {"scale": m.scale})


def _general_call(g: fx.Graph, m: AttentionMatch, q: fx.Node, k: fx.Node, v: fx.Node
                  ) -> fx.Node:
    inputs = []
    for n in m.mods.data.nodes:
        if fake_value(n).dim() == 0:  # read as a 1-element vector
            n = g.call_function(aten.reshape.default, (n, [1]))
        inputs.append(n)
    if m.mods.data.sizes:  # the runtime sizes the expressions read, as int64 [n]
        device = fake_value(m.output).device
        scalars = []
        for sym in m.mods.data.sizes:
            src, dim = size_source(g, sym)
            size = src if dim is None else g.call_function(aten.sym_size.int, (src, dim))
            scalars.append(g.call_function(aten.scalar_tensor.default, (size,),
                                           {"dtype": torch.int64, "device": device}))
        inputs.append(g.call_function(aten.stack.default, (scalars,)))
    inputs += fp8.scale_inputs(g, m)  # after the Spec's inputs (AttentionSpec.fp8)
    seed = None
    if m.mods.dropout_p > 0:
        # Drawn from torch's generator in the graph, so every call differs as in eager
        # and torch.manual_seed makes a run reproducible.
        device = fake_value(m.output).device
        seed = g.call_function(aten.randint.low, (0, 2**31 - 1, [2]),
                               {"dtype": torch.int64, "device": device})
    return g.call_function(torch.ops.ioaware.attention.default,
                           (q, k, v, inputs, spec_of(m).to_json(), seed))
