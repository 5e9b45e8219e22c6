"""Pricing the eager side of a scan region: what the nodes a rewrite replaces cost.

IO per state element (fp32, unfused loop): read a_t, b_t, h_{t-1}, write h_t, plus the
readout reading h_t again: ≥ 20 bytes; fused selective scan: (2·Bt·Dc·L + 2·Bt·L·N)·it
over the whole region. See docs/cost-model.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware import cost
from ioaware.passes.scan.record import dtype_of, fake_value
from ioaware.passes.scan.spellings import HOP_TARGETS
from ioaware.passes.views import hinted_shape


def region_cost(nodes: list[fx.Node]) -> cost.Cost:
    """Modelled cost of the eager region (the "before" of a rewrite).

    An unrolled loop is one step L times over, and one matmul's cost takes ~10 ms of sympy
    (its L2-spill term): so nodes that price alike (_cost_key) are priced once and
    counted, Σ_k count_k · cost_k, which is the plain sum (k · cost adds k runs' traffic
    and work and keeps the footprint, as k additions would)."""
    groups: dict[Any, list] = {}
    for n in dict.fromkeys(nodes):
        group = groups.setdefault(_cost_key(n), [n, 0])
        group[1] += 1
    total = cost.Cost.zero()
    for n, count in groups.values():
        c = _hop_cost(n) if n.target in HOP_TARGETS else cost.node_cost(n)
        if c is not None:
            total = total + (c if count == 1 else c * count)
    return total


def _cost_key(n: fx.Node) -> Any:
    """Everything node_cost reads: the op, its non-tensor arguments, its value, and each
    input's value, storage root (through views) and which inputs share a root. Nodes
    with one key have one cost; a node that is not a call is its own key."""
    if n.op != "call_function":
        return n
    inputs = n.all_input_nodes
    roots = [cost.storage_root(x) for x in inputs]

    def meta(x: fx.Node) -> Any:
        v = fake_value(x)
        if isinstance(v, torch.Tensor):
            return repr(v.shape), repr(v.stride()), v.dtype, v.device.type
        return repr(v)

    args = repr(fx.node.map_arg((n.args, n.kwargs), lambda x: ("input", inputs.index(x))))
    return (n.target, args, meta(n), *(meta(x) for x in inputs), *(meta(r) for r in roots),
            tuple(roots.index(r) for r in roots))


def _hop_cost(node: fx.Node) -> cost.Cost:
    """associative_scan as Inductor runs it: read a, b, write Π a and h, whole tensors
    (the scan axis stays in one program; the fused kernel writes only h): per element
    2 reads, 2 writes, 3 FLOPs (a1·a2, a2·b1 + b2)."""
    xs = node.args[1]
    n = sum(int(np.prod(hinted_shape(x))) for x in xs) // max(len(xs), 1)
    it = dtype_of(xs[0]).itemsize
    return cost.Cost(read_bytes=2 * n * it, write_bytes=2 * n * it, flops=3 * n)
