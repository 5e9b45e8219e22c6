"""The scan pass's match record and the small graph guards every matcher shares.

A `Recurrence` is what a matcher found (h_t = a_t ⊙ h_{t-1} + b_t along one axis, its
spelling and the nodes it covers); `Readout` and `Selective` are what the readout and
producer matchers add to it. See passes/scan/__init__.py for the pass itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx

from ioaware.passes.views import hinted_shape
from ioaware.spec import TextEnum

aten = torch.ops.aten

CAST_OPS = {aten._to_copy.default}
ZERO_FACTORIES = {aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default}


# ---------------------------------------------------------------------------------------
# the match record


class ScanForm(TextEnum):
    """How the recurrence was spelled: an unrolled Python loop, `associative_scan` (the
    higher-order op or the odd-even tree dynamo inlines), or the closed form with cumsum."""

    LOOP = "loop"
    ASSOCIATIVE_SCAN = "associative_scan"
    CUMSUM = "cumsum"


@dataclasses.dataclass
class Recurrence:
    """h_t = a_t ⊙ h_{t-1} + b_t along axis `dim` of the full tensors a and b.

    a, b: fx.Nodes holding every step (time at `dim`), or for a the Python number or
    step-invariant node every step multiplies by (`a_const`). states: the node of each
    h_t in time order (loop), or one node holding all of them laid out as b
    (`all_states`, associative_scan). region: the nodes the rewrite replaces.
    """

    form: ScanForm
    a: Any
    b: fx.Node
    dim: int
    length: int
    reverse: bool
    h0: fx.Node | None
    anchor: fx.Node  # new nodes go before it
    region: list[fx.Node]
    states: list[fx.Node] | None = None
    all_states: fx.Node | None = None
    a_const: bool = False  # a is the same every step (a number or a node without time)
    a_is_log: bool = False  # `a` holds log a (closed forms that write exp(cumsum(log a)))
    keepdim: bool = False  # loop steps slice with slice(t, t+1): h_t keeps the time axis
    readout: Readout | None = None
    products: fx.Node | None = None  # associative_scan's Π a output, when it is read


@dataclasses.dataclass
class Readout:
    """y[b, d, t] = Σ_n C[b, (d,) t, n] · h_t[b, d, n], held by `output`.

    Roles name axes: b batch, d channel, t time, n state. c_roles: C's axes ("btn": one
    C shared by every channel, "bdtn": one per channel); out_roles: the output's axes.
    """

    c: fx.Node
    c_roles: str
    output: fx.Node
    out_roles: str
    nodes: list[fx.Node]  # the readout's nodes (all steps), output excluded
    # nodes holding the last state besides the readout (a cache update): h_last replaces them
    last: list[fx.Node] = dataclasses.field(default_factory=list)

    @property
    def grouped(self) -> bool:
        return "d" in self.c_roles


@dataclasses.dataclass
class Selective:
    """The producers of a and b: a = exp(Δ ⊗ A), b = Δ ⊗ B ⊗ u, each factor a node whose
    shape broadcasts to the 4-D frame of a and b (axes b, d, n in order, time at dim)."""

    delta: fx.Node
    A: fx.Node
    B: fx.Node
    u: fx.Node
    frame: tuple[int, ...]
    nodes: list[fx.Node]
    # Δ = softplus(delta_pre + delta_bias) when found: the view chain from the softplus
    # to the Δ factor is replayed on delta_pre (and on the bias) by the rewrite
    softplus: bool = False
    delta_pre: fx.Node | None = None
    delta_bias: fx.Node | None = None
    chain: list[fx.Node] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------
# small guards


def fake_value(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def is_tensor(node: Any) -> bool:
    return isinstance(fake_value(node), torch.Tensor)


def is_static(node: fx.Node) -> bool:
    return all(isinstance(s, int) for s in fake_value(node).shape)


def is_call(node: Any, *targets: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def is_add(node: Any) -> bool:
    return (is_call(node, aten.add.Tensor) and node.kwargs.get("alpha", 1) == 1
            and len(node.args) == 2)


def is_mul(node: Any) -> bool:
    return is_call(node, aten.mul.Tensor) and len(node.args) == 2


def time_slice(node: Any) -> tuple[fx.Node, int, int, bool] | None:
    """(X, dim, index, keepdim) when `node` is X[..., index, ...] along `dim`."""
    if is_call(node, aten.select.int):
        x, dim, index = node.args
        rank = fake_value(x).dim()
        size = hinted_shape(x)[dim % rank]
        if isinstance(index, int):
            return x, dim % rank, index % size if size else index, False
    if is_call(node, aten.slice.Tensor):
        x, dim, start, end, step = (*node.args, *(0, None, None, 1)[len(node.args) - 1:])
        rank = fake_value(x).dim()
        size = hinted_shape(x)[dim % rank]
        if step == 1 and isinstance(start, int) and isinstance(end, int):
            start = start + size if start < 0 else start
            end = min(end + size if end < 0 else end, size)
            if end - start == 1:
                return x, dim % rank, start, True
    return None


def is_zero(node: Any) -> bool:
    if is_call(node, *ZERO_FACTORIES):
        return True
    if is_call(node, aten.full.default, aten.full_like.default, aten.new_full.default):
        return node.args[-1] == 0 if node.target is not aten.new_full.default else node.args[2] == 0
    return False


def same_structure(x: Any, y: Any, depth: int = 8) -> bool:
    """x and y compute the same value: the same node, or the same op on the same
    arguments (as two `dt[..., None]` spellings of one Δ do)."""
    if x is y:
        return True
    if not (isinstance(x, fx.Node) and isinstance(y, fx.Node)):
        return not isinstance(x, fx.Node) and not isinstance(y, fx.Node) and x == y
    if depth == 0 or x.op != "call_function" or y.op != "call_function":
        return False
    if x.target is not y.target or len(x.args) != len(y.args) or x.kwargs != y.kwargs:
        return False
    return all(same_structure(a, b, depth - 1) if isinstance(a, fx.Node) else a == b
               for a, b in zip(x.args, y.args))


def dtype_of(node: fx.Node) -> torch.dtype:
    return fake_value(node).dtype


