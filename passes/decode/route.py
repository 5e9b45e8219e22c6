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

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode.op import decode_supports
from ioaware.codegen.decode.price import decode_cost, decode_time, prefill_time
from ioaware.codegen.decode.tiles import MAX_ROWS
from ioaware.cost import Cost, node_cost
from ioaware.passes.driver import NoMatch, PassContext
from ioaware.spec import dtype_name

MAX_QUERY_ROWS = 16  # decode (1) and speculative verification (2-16)

ATTENTION_OPS = ("flash_attention", "attention")
aten = torch.ops.aten


@dataclasses.dataclass
class DecodePlan:
    """An attention call (what the attention rewrite made of a region) to reroute."""

    node: fx.Node  # the ioaware::flash_attention / ioaware::attention call
    spec: AttentionSpec
    q: fx.Node
    k: fx.Node
    v: fx.Node
    inputs: list  # the extra tensors' nodes, in the Spec's order


def hint(size: Any, ctx: PassContext) -> int:
    """A size's value at dynamo's hints."""
    if isinstance(size, int):
        return size
    expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.sympify(size)
    value = expr.xreplace({s: ctx.hints.get(s, ctx.hints.get(str(s), 0))
                           for s in expr.free_symbols})
    return int(value)


def _query_and_keys(node: fx.Node) -> tuple[Any, Any] | None:
    """(Nq, Nk) of an attention candidate: an SDPA call's q and k, or a softmax's
    scores [..., Nq, Nk]; None when the shapes are not there."""
    if node.target is aten.scaled_dot_product_attention.default:
        q, k = (a.meta.get("val") if isinstance(a, fx.Node) else None for a in node.args[:2])
        if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() >= 2 \
                and k.dim() >= 2:
            return q.shape[-2], k.shape[-2]
        return None
    scores = node.meta.get("val")
    if isinstance(scores, torch.Tensor) and scores.dim() >= 2:
        return scores.shape[-2], scores.shape[-1]
    return None


def decode_shaped(node: fx.Node, ctx: PassContext) -> bool:
    """The cheap first test of a candidate: at the hints 1 ≤ Nq ≤ MAX_QUERY_ROWS and
    Nq < Nk. Regions that fail it are prefill, for the attention pass alone: they are
    not decode candidates, so explain lists no decode fallback for them."""
    sizes = _query_and_keys(node)
    if sizes is None:
        return False
    n_q, n_k = (hint(x, ctx) for x in sizes)
    return 1 <= n_q <= MAX_QUERY_ROWS and n_q < n_k


def unsupported(spec: AttentionSpec) -> str | None:
    """Why the decode kernels cannot take `spec`, or None (see decode_supports)."""
    if spec.fp8:
        return (f"FP8 operands ({','.join(spec.fp8)}): the decode kernels read 16-bit "
                "K/V; the prefill kernels serve it")
    return decode_supports(spec)


def is_attention_call(node: fx.Node) -> bool:
    ops = getattr(torch.ops, "ioaware", None)
    return node.op == "call_function" and ops is not None and any(
        hasattr(ops, name) and node.target is getattr(ops, name).default
        for name in ATTENTION_OPS)


def fake_value(node: fx.Node) -> Any:
    """node.meta["val"], computed from its inputs' for a node a rewrite just inserted
    without one (the views the attention rewrite adds around a 3-D bmm spelling)."""
    if "val" not in node.meta:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), fake_value)
        node.meta["val"] = node.target(*args, **kwargs)
    return node.meta["val"]


def spec_of_call(node: fx.Node) -> AttentionSpec:
    """The AttentionSpec a flash_attention / attention call computes."""
    if node.target is torch.ops.ioaware.flash_attention.default:
        q, _, v, scale, causal = node.args[:5]
        qv, vv = fake_value(q), fake_value(v)
        return AttentionSpec(head_dim=int(qv.shape[-1]), head_dim_v=int(vv.shape[-1]),
                             dtype=dtype_name(qv.dtype), causal=bool(causal),
                             scale=float(scale))
    return AttentionSpec.from_json(node.args[4])


def plan_of(node: fx.Node) -> DecodePlan:
    """The plan of an attention call the attention rewrite just made."""
    spec = spec_of_call(node)
    if node.target is torch.ops.ioaware.attention.default:
        q, k, v, inputs = node.args[:4]
    else:
        q, k, v = node.args[:3]
        inputs = []
    return DecodePlan(node=node, spec=spec, q=q, k=k, v=v, inputs=list(inputs))


def check_shape(name: str, d: dict[str, int]) -> None:
    """NoMatch unless the GQA group's packed rows fit a decode tile."""
    if d["Hkv"] == 0 or d["Hq"] % d["Hkv"] or d["Hq"] // d["Hkv"] * d["Nq"] > MAX_ROWS:
        raise NoMatch(f"{name}: Hq/Hkv·Nq = {d['Hq']}/{d['Hkv']}·{d['Nq']} packed rows "
                      f"exceed a decode tile ({MAX_ROWS})")


def price(name: str, spec: AttentionSpec, dims: dict[str, int], itemsize: int, source,
          ctx: PassContext) -> tuple[Cost, dict[str, Any], Cost]:
    """(the decode kernels' Cost, detail, the eager side's extra Cost: a paged cache's
    gathered copies), or NoMatch unless the decode kernels are modelled no slower than
    the prefill kernel on ctx.profile (see the module docstring). dims: hinted B, Hq,
    Hkv, Nq, Nk (the attention match's)."""
    check_shape(name, dims)
    args = (ctx.profile, dims["B"], dims["Hq"], dims["Hkv"], dims["Nq"], dims["Nk"],
            spec.head_dim, spec.head_dim_v, itemsize)
    t_prefill, (t_decode, splits) = prefill_time(*args), decode_time(*args)
    # A tie goes to the decode kernels: as many waves, and K/V read once per GQA group
    # rather than once per query head.
    if t_decode > t_prefill:
        raise NoMatch(f"{name}: decode kernels modelled {t_decode * 1e6:.3g} µs, slower "
                      f"than the prefill kernel's {t_prefill * 1e6:.3g} µs")
    page = None if source is None else source.page_size
    after = decode_cost(dims["B"], dims["Hq"], dims["Hkv"], dims["Nq"], dims["Nk"],
                        spec.head_dim, spec.head_dim_v, itemsize, splits=splits,
                        page_size=page)
    extra = Cost.zero()
    if source is not None:
        for n in source.removed:
            extra = extra + (node_cost(n) or Cost.zero())
    detail = {"kernel": "paged split-KV decode" if source else "split-KV decode",
              "splits": splits, "rows": f"{dims['Hq'] // dims['Hkv']}x{dims['Nq']}",
              "modelled_us": f"{t_decode * 1e6:.3g} vs prefill {t_prefill * 1e6:.3g}"}
    return after, detail, extra


def apply(gm: fx.GraphModule, plan: DecodePlan, source=None) -> None:
    """Replace the attention call by ioaware::decode_attention (or, with a paged
    `source`, ioaware::paged_decode_attention) on the same query, Spec and inputs; its
    (out, lse) users move over and the gathered copies become dead code."""
    g = gm.graph
    node = plan.node
    with g.inserting_before(node):
        if source is None:
            new = g.call_function(torch.ops.ioaware.decode_attention.default,
                                  (plan.q, plan.k, plan.v, plan.inputs, plan.spec.to_json()))
        else:
            new = source.call(g, plan)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    g.eliminate_dead_code()
    gm.recompile()


__all__ = ["DecodePlan", "apply", "decode_shaped", "is_attention_call", "plan_of", "price"]
