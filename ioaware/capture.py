"""Capture: dynamo's torch-level graph → one canonical pre-autograd ATen graph.

Mechanism (chosen by experiment, see docs/architecture.md): re-trace the graph dynamo
hands the backend with `make_fx(..., pre_dispatch=True)` on dynamo's own FakeTensors, with
a small decomposition table. Pre-dispatch tracing stops above autograd, so the graph is
still differentiable by the ordinary autograd machinery (the rewritten graph goes to
aot_autograd/Inductor, or runs as plain fx), and it keeps `scaled_dot_product_attention`
whole. The decompositions below turn the many spellings people use into a few ATen ops:

    q @ k.mT, torch.matmul, torch.einsum, F.linear   →  expand / reshape / bmm | mm | addmm
    softmax(x, dim, dtype=...)                        →  _to_copy + _softmax
    .float() / .to(dtype) / .type_as(t)               →  _to_copy
    F.dropout (eval, or p=0)                          →  clone;  (train, p>0) → native_dropout

Symbolic sizes (dynamo's SymInts) are kept: tracing reuses dynamo's FakeTensorMode and
ShapeEnv, so `node.meta["val"]` carries the same symbols dynamo guards on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten

# CompositeImplicitAutograd ops that pre-dispatch tracing would otherwise keep whole.
# Each is replaced by its own registered decomposition (OpOverload.decompose).
_DECOMPOSED = (
    "matmul.default", "einsum.default", "linear.default", "softmax.int", "dropout.default",
    "to.dtype", "to.dtype_layout", "to.device", "to.other", "type_as.default",
    "contiguous.default", "flatten.using_ints", "unflatten.int", "movedim.int",
    "swapaxes.default",
)


def _overload(name: str) -> Any:
    packet, overload = name.split(".")
    return getattr(getattr(aten, packet), overload)


CANONICAL_DECOMPOSITIONS = {_overload(n): _overload(n).decompose for n in _DECOMPOSED}


def fake_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[Any]:
    """Dynamo's fake values for the graph's placeholders (FakeTensors and SymInts).

    dynamo stores them as `meta["example_value"]`; a graph built by hand (tests) has
    none, so fall back to fakeifying the real example inputs.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = [n.meta.get("example_value") for n in placeholders]
    if len(values) == len(example_inputs) and all(v is not None for v in values):
        return values
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    return [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]


def canonicalize(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """Re-trace `gm` into canonical pre-autograd ATen with FakeTensor `meta["val"]`."""
    fakes = fake_inputs(gm, example_inputs)
    traced = make_fx(
        gm,
        tracing_mode="symbolic",
        pre_dispatch=True,
        decomposition_table=CANONICAL_DECOMPOSITIONS,
        _allow_non_fake_inputs=True,
    )(*fakes)
    return traced
