"""Checking a matched region by evaluating it: the region's nodes are copied into a
small graph whose inputs are the operands the matcher found, run on random operands at
the region's own sizes, and compared with the SSD reference (codegen/ssd/reference.py).

A chunked SSD written any other way (another decay, a missing term, B and C swapped, a
mask off by one) disagrees on random inputs, so the einsum chain needs no pattern of its
own; the same check decides which of the two `repeat_interleave` inputs is B.
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.codegen.ssd import reference
from ioaware.passes.driver import NoMatch
from ioaware.passes.views import hint
from ioaware.verify import TOLERANCE, relative_error

from .chunked import ChunkedSSD, is_size, val

OPERANDS = ("x", "dt", "A", "B", "C", "D", "dt_bias", "h0")


def region_module(region: ChunkedSSD, operands: dict[str, fx.Node]) -> fx.GraphModule:
    """The region's nodes as a GraphModule of the present operands (in OPERANDS order)
    returning (y, final state or y)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for name in OPERANDS:
        if operands.get(name) is not None:
            env[operands[name]] = g.placeholder(name)
    for n in region.nodes:
        for a in n.all_input_nodes:
            if is_size(a):  # a symbolic size: its example value (see verify)
                env[a] = hint(a.meta["val"])
        env[n] = g.node_copy(n, lambda a: env[a])
    outs = [env[n] if n is not None else None for n in (region.y, region.final)]
    g.output(tuple(outs))
    return fx.GraphModule(torch.nn.Module(), g)


def _random(node: fx.Node, name: str, gen: torch.Generator, *,
            hinted: bool = False) -> torch.Tensor:
    """Random values for operand `name` at the node's shape; `hinted`: at the example
    sizes dynamo traced with where the shape is symbolic (else that is a NoMatch)."""
    v = val(node)
    if v is None or not (hinted or all(isinstance(s, int) for s in v.shape)):
        raise NoMatch(f"{node.name}: {name} has no static shape to probe the region with")
    t = torch.randn(tuple(hint(s) for s in v.shape), generator=gen, dtype=torch.float32)
    if name == "A":  # decays in (0, 1): A < 0
        t = -(t.abs() + 0.1)
    elif name == "dt":
        t = t * 0.5
    return t.to(device=v.device, dtype=v.dtype)


def verify(region: ChunkedSSD) -> ChunkedSSD:
    """The region with B and C in their roles, or NoMatch when it is not the SSD.

    A symbolic batch (dynamo recompiled at a second batch size) is probed at its example
    value: batch rows never mix. Any other symbolic size (the length: how many chunks,
    the padding) is refused: one example length cannot stand for the others."""
    symbolic = [name for name, s in zip(("batch", "length", "heads", "head_dim"),
                                        val(region.x).shape) if isinstance(s, torch.SymInt)]
    if [name for name in symbolic if name != "batch"]:
        raise NoMatch(f"{region.x.name}: x's {', '.join(symbolic)} symbolic; the region is "
                      f"probed at one example size, which stands only for the batch")
    gen = torch.Generator().manual_seed(0)
    base = {"x": region.x, "dt": region.dt, "A": region.A, "D": region.D,
            "dt_bias": region.dt_bias, "h0": region.h0}
    values = {k: _random(n, k, gen, hinted=True) for k, n in base.items() if n is not None}
    first = _random(region.B, "B", gen, hinted=True)
    second = _random(region.C, "C", gen, hinted=True)
    if region.B is region.C:  # only the final state is used: C is a stand-in for B
        second = first
    # the region rounds where its inputs' dtype does (dt's softplus in bf16, ...): that
    # dtype's tolerance; a region computing another map misses by far more
    out = val(region.y if region.y is not None else region.final).dtype
    tol = max(TOLERANCE.get(out, 1e-4), TOLERANCE.get(val(region.x).dtype, 1e-4))
    errors = []
    for b_node, c_node, b_val, c_val in ((region.B, region.C, first, second),
                                         (region.C, region.B, second, first)):
        module = region_module(region, {**base, "B": b_node, "C": c_node})
        args = {**values, "B": b_val, "C": c_val}
        with torch.no_grad():
            y, final = module(*(args[k] for k in OPERANDS if k in args))
            y_ref, final_ref = reference.ssd_chunked(
                args["x"], args["dt"], args["A"], b_val, c_val, args.get("D"),
                args.get("dt_bias"), region.dt_softplus, args.get("h0"),
                dt_limit=region.dt_limit)
        err = relative_error(y.float(), y_ref) if region.y is not None else 0.0
        if region.final is not None:
            err = max(err, relative_error(final.float(), final_ref))
        if err <= tol:
            region.B, region.C = b_node, c_node
            return region
        errors.append(err)
    raise NoMatch(f"{region.anchor.name}: the region does not compute the SSD recurrence "
                  f"(relative error {min(errors):.3g} against it on random operands)")
