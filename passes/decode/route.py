"""Which attention calls are decode-shaped, and the graph edit that routes them.

The attention pass has already turned every attention region into one call to
`ioaware::flash_attention` or `ioaware::attention` (the Spec as JSON). A call is
decode-shaped when its query holds few rows against a longer cache: Nq ≤ MAX_QUERY_ROWS
(decode is 1, speculative verification 2-16) and the GQA group's packed rows fit a
decode tile. Where Nq or Nk are symbolic, the sizes dynamo hints decide here, and the
decode op decides again per call (it runs the prefill kernels for a query too tall for
its tile), so one graph serves every cache length.

Cost: the prefill kernel launches one program per (batch, query head, 128 query rows),
each streaming the whole cache for its own head; the decode kernels one program per
(batch, KV head, split), each streaming 1/S of the cache for the whole group. Both read
the same bytes once the GQA group shares L2, so the roofline prices them alike; what
differs is how much of the device is busy. `decode_time` and `prefill_time` (price.py)
model that by waves of programs over the device's SM slots, and the route is taken only
where the decode kernels are modelled no slower.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.price import flash_attention_cost
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode.op import decode_supports
from ioaware.codegen.decode.price import decode_cost, decode_time, prefill_time
from ioaware.codegen.decode.tiles import MAX_ROWS
from ioaware.cost import Cost, node_cost
from ioaware.passes.decode.paged import gather_nodes
from ioaware.passes.driver import NoMatch, PassContext
from ioaware.spec import dtype_name

MAX_QUERY_ROWS = 16  # decode (1) and speculative verification (2-16)

ATTENTION_OPS = ("flash_attention", "attention")


@dataclasses.dataclass
class DecodePlan:
    """A decode-shaped attention call and what replaces it."""

    node: fx.Node  # the ioaware::flash_attention / ioaware::attention call
    spec: AttentionSpec
    q: fx.Node
    k: fx.Node
    v: fx.Node
    inputs: list  # the extra tensors' nodes, in the Spec's order
    paged: Any = None  # a paged.PagedSource when K/V are gathered from pages


def is_attention_call(node: fx.Node) -> bool:
    ops = getattr(torch.ops, "ioaware", None)
    return node.op == "call_function" and ops is not None and any(
        hasattr(ops, name) and node.target is getattr(ops, name).default
        for name in ATTENTION_OPS)


def decode_shaped(node: fx.Node, ctx: PassContext) -> bool:
    """The cheap first test: at the hints, 1 ≤ Nq ≤ MAX_QUERY_ROWS and Nq < Nk. Calls
    that fail it are prefill and never become candidates (nor fallbacks in explain)."""
    q, k = (a.meta.get("val") if isinstance(a, fx.Node) else None for a in node.args[:2])
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4 \
            or k.dim() != 4:
        return False
    n_q, n_k = hint(q.shape[2], ctx), hint(k.shape[2], ctx)
    return 1 <= n_q <= MAX_QUERY_ROWS and n_q < n_k


def spec_of_call(node: fx.Node) -> AttentionSpec:
    """The AttentionSpec a flash_attention / attention call computes."""
    if node.target is torch.ops.ioaware.flash_attention.default:
        q, _, v, scale, causal = node.args[:5]
        qv, vv = q.meta["val"], v.meta["val"]
        return AttentionSpec(head_dim=int(qv.shape[-1]), head_dim_v=int(vv.shape[-1]),
                             dtype=dtype_name(qv.dtype), causal=bool(causal),
                             scale=float(scale))
    return AttentionSpec.from_json(node.args[4])


def hint(size: Any, ctx: PassContext) -> int:
    """A size's value at dynamo's hints."""
    if isinstance(size, int):
        return size
    expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.sympify(size)
    value = expr.xreplace({s: ctx.hints.get(s, ctx.hints.get(str(s), 0))
                           for s in expr.free_symbols})
    return int(value)


def plan_of(node: fx.Node) -> DecodePlan:
    """The decode plan of an attention call, or NoMatch with the reason."""
    spec = spec_of_call(node)
    why = decode_supports(spec)
    if why is not None:
        raise NoMatch(f"{node.name}: {why}")
    if node.target is torch.ops.ioaware.attention.default:
        q, k, v, inputs = node.args[:4]
        seed = node.args[5] if len(node.args) > 5 else node.kwargs.get("seed")
        if seed is not None:
            raise NoMatch(f"{node.name}: dropout: the decode kernels do not drop out")
    else:
        q, k, v = node.args[:3]
        inputs = []
    return DecodePlan(node=node, spec=spec, q=q, k=k, v=v, inputs=list(inputs))


def sizes(plan: DecodePlan, ctx: PassContext) -> dict[str, int]:
    """B, Hq, Hkv, Nq, Nk at the hints (a paged plan's Nk is the keys it addresses)."""
    q, k = plan.q.meta["val"], plan.k.meta["val"]
    batch, h_q, n_q, _ = (hint(x, ctx) for x in q.shape)
    h_kv, n_k = hint(k.shape[1], ctx), hint(k.shape[2], ctx)
    return {"B": batch, "Hq": h_q, "Hkv": h_kv, "Nq": n_q, "Nk": n_k}


def check_shape(plan: DecodePlan, ctx: PassContext) -> dict[str, int]:
    s = sizes(plan, ctx)
    if s["Nq"] > MAX_QUERY_ROWS:
        raise NoMatch(f"{plan.node.name}: Nq={s['Nq']} query rows: prefill-shaped "
                      f"(decode takes up to {MAX_QUERY_ROWS})")
    if s["Nq"] >= s["Nk"]:
        raise NoMatch(f"{plan.node.name}: Nq={s['Nq']} >= Nk={s['Nk']}: a prefill, not a "
                      "decode step")
    if s["Hkv"] == 0 or s["Hq"] % s["Hkv"] or s["Hq"] // s["Hkv"] * s["Nq"] > MAX_ROWS:
        raise NoMatch(f"{plan.node.name}: Hq/Hkv·Nq = {s['Hq']}/{s['Hkv']}·{s['Nq']} packed "
                      f"rows exceed a decode tile ({MAX_ROWS})")
    return s


def price(plan: DecodePlan, ctx: PassContext) -> tuple[Cost, Cost, dict[str, Any]]:
    """(prefill call's Cost, decode kernels' Cost, detail): NoMatch unless the decode
    kernels are modelled faster on ctx.profile (see the module docstring)."""
    s = check_shape(plan, ctx)
    spec = plan.spec
    itemsize = plan.q.meta["val"].dtype.itemsize
    args = (ctx.profile, s["B"], s["Hq"], s["Hkv"], s["Nq"], s["Nk"], spec.head_dim,
            spec.head_dim_v, itemsize)
    t_prefill, (t_decode, splits) = prefill_time(*args), decode_time(*args)
    # A tie goes to the decode kernels: as many waves, and K/V read once per GQA group
    # rather than once per query head.
    if t_decode > t_prefill:
        raise NoMatch(f"{plan.node.name}: decode kernels modelled {t_decode * 1e6:.3g} µs, "
                      f"slower than the prefill kernel's {t_prefill * 1e6:.3g} µs")
    # before: the prefill kernel this call would run (and, paged, the gathered copies)
    before = flash_attention_cost(s["B"], s["Hq"], s["Hkv"], s["Nq"], s["Nk"], spec.head_dim,
                                  spec.head_dim_v, itemsize, spec.causal)
    if plan.paged is not None:
        for n in gather_nodes(plan.k) + gather_nodes(plan.v):
            before = before + (node_cost(n) or Cost.zero())
    page = None if plan.paged is None else plan.paged.page_size
    after = decode_cost(s["B"], s["Hq"], s["Hkv"], s["Nq"], s["Nk"], spec.head_dim,
                        spec.head_dim_v, itemsize, splits=splits, page_size=page)
    detail = {"kernel": "paged split-KV decode" if plan.paged else "split-KV decode",
              "splits": splits, "rows": f"{s['Hq'] // s['Hkv']}x{s['Nq']}",
              "modelled_us": f"{t_decode * 1e6:.3g} vs prefill {t_prefill * 1e6:.3g}"}
    return before, after, detail


def apply(gm: fx.GraphModule, plan: DecodePlan) -> None:
    """Replace the attention call by ioaware::decode_attention (or the paged op) on the
    same operands and Spec; its (out, lse) users move over."""
    from ioaware.codegen.decode import op  # noqa: F401  (registers torch.ops.ioaware)

    g = gm.graph
    node = plan.node
    with g.inserting_before(node):
        if plan.paged is None:
            new = g.call_function(torch.ops.ioaware.decode_attention.default,
                                  (plan.q, plan.k, plan.v, plan.inputs, plan.spec.to_json()))
        else:
            new = plan.paged.call(g, plan)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    g.eliminate_dead_code()
    gm.recompile()


__all__ = ["DecodePlan", "apply", "is_attention_call", "plan_of", "price"]
