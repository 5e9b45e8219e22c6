"""SDPA matching: `aten.scaled_dot_product_attention` (is_causal, enable_gqa, a bool or
additive attn_mask, dropout_p) as one attention region.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.spec import MaskSemantics
from ioaware.passes.attention import masks
from ioaware.passes.attention.operands import kv_source
from ioaware.passes.attention.record import (
    AttentionMatch,
    Layout,
    Modifications,
    Source,
    fake_value,
)
from ioaware.passes.attention.score_chain import (
    HUGE_FILL,
    fill_semantics,
    index_term,
    mask_values,
    set_mask,
)
from ioaware.passes.driver import NoMatch
from ioaware.passes.views import hinted_shape
from ioaware.spec import DTYPES, SCORE

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
    dtype = fake_value(q).dtype
    if {fake_value(t).dtype for t in (q, k, v)} != {dtype} or dtype not in DTYPES.values():
        raise NoMatch(f"{node.name}: dtypes {[fake_value(t).dtype for t in (q, k, v)]} "
                      "are mixed or not fp16/bf16/fp32")
    p = bound["dropout_p"]
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise NoMatch(f"{node.name}: SDPA dropout_p={p} is not a constant in [0, 1)")
    mods = Modifications(causal=bool(bound["is_causal"]), dropout_p=float(p))
    if bound["attn_mask"] is not None:
        if mods.causal:
            raise NoMatch(f"{node.name}: SDPA with both attn_mask and is_causal (eager raises)")
        _sdpa_mask(node, bound["attn_mask"], dtype, (b, hq, nq, nk), mods)
    (k_src, k_groups), (v_src, v_groups) = kv_source(k), kv_source(v)
    if k_groups == v_groups and k_groups > 1:
        k, v, hkv = k_src, v_src, hkv // k_groups
    scale = bound["scale"] if bound["scale"] is not None else 1.0 / math.sqrt(d)
    return AttentionMatch(
        q=q, k=k, v=v, layout=Layout.SDPA, scale=float(scale),
        mask=masks.describe(mods.mask, mods.causal), output=node, region=[node],
        source=Source.SDPA, dtype=dtype, mods=mods,
        dims={"B": b, "Hq": hq, "Hkv": hkv, "Nq": nq, "Nk": nk, "D": d, "Dv": dv},
    )


def _cuda_semantics(node: fx.Node) -> bool:
    """Whether SDPA at `node` runs on CUDA, whose backends mask huge finite fills."""
    return fake_value(node).device.type == "cuda"


def _sdpa_mask(node: fx.Node, attn_mask: Any, dtype: torch.dtype, shape: tuple[int, ...],
               mods: Modifications) -> None:
    """SDPA's attn_mask: bool (True keeps a key) or additive, added to the scaled scores.

    SDPA gives a row whose keys are all masked (False, or -inf) the output 0 (torch 2.5+,
    checked on 2.13 CPU and 2.11 CUDA; cuDNN's is arbitrary at N % 128 == 64, a bug:
    pytorch/pytorch#196678): SAFE. An additive mask of 0 and a finite fill is ADD
    (on CUDA SAFE when the fill is huge, as the backends there do); any other
    additive tensor is a bias in score_mod, with its -inf entries (on CUDA: its huge
    ones) as a SAFE mask.
    """
    val = fake_value(attn_mask)
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
    t = index_term(attn_mask, 4, Layout.SDPA, mods.data, node)
    if t.is_bool:
        set_mask(mods, t.expr, MaskSemantics.SAFE, float("-inf"))
        return
    values = mask_values(t.expr)
    if values is not None:
        allowed, fill, bias = values
        sem, fill = fill_semantics(fill, dtype)
        if sem is MaskSemantics.FILL and fill <= HUGE_FILL and on_cuda:
            # On CUDA the efficient and cuDNN backends (SDPA's picks for masked attention)
            # give a row whose keys all carry a huge finite fill 0, as for -inf; only the
            # math backend averages it uniformly (H100, torch 2.11: scripts/diag_gpu.py sdpa).
            sem, fill = MaskSemantics.NEG_INF, float("-inf")
        safe = sem is MaskSemantics.NEG_INF
        set_mask(mods, allowed, MaskSemantics.SAFE if safe else MaskSemantics.ADD, fill)
        if bias != 0:
            mods.score_mod = SCORE + bias
        return
    mods.score_mod = SCORE + t.expr
    if masks.loads(t.expr):
        # A data bias may hold -inf: those keys are masked, safely. On CUDA so are keys
        # whose bias is huge (finfo.min padding handed in as a tensor): a row of only
        # such keys is 0 there, as for a constant huge fill, not the uniform average.
        kept = sympy.Gt(t.expr, HUGE_FILL) if on_cuda else sympy.Ne(t.expr, -sympy.oo)
        set_mask(mods, kept, MaskSemantics.SAFE, float("-inf"))
