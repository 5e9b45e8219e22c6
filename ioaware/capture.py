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

vmap regions (what `associative_scan(..., combine_mode="generic")` leaves: its combine
function vmapped over the scan axis) do not survive pre-dispatch re-tracing: their
results become baked-in fake constants. A region whose body is elementwise over inputs
of one shape, batched and unbatched on axis 0, is the body itself on the whole tensors
(out[i] = f(x[i], y[i]) = f(x, y)[i]), so it is flattened first; any vmap left after
that makes capture fail, and the backend leaves the graph as it was.

Custom autograd.Functions would lose their gradient in the re-trace (it inlines their
forward under no_grad); `ioaware.autograd_function` keeps each one whole first.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from ioaware.autograd_function import is_autograd_function_apply, keep_autograd_functions

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


# Torch-level pointwise functions a flattened vmap body may hold (dynamo's spellings).
_ELEMENTWISE = {
    operator.mul, operator.add, operator.sub, operator.truediv, operator.neg,
    torch.mul, torch.add, torch.sub, torch.div, torch.neg, torch.exp, torch.log,
    torch.sigmoid, torch.tanh, torch.maximum, torch.minimum, torch.where,
}


def _vmap_op(node: fx.Node, name: str) -> bool:
    return (node.op == "call_function" and getattr(node.target, "__name__", None) == name
            and "predispatch" in getattr(node.target, "__module__", ""))


def _flatten_vmaps(gm: fx.GraphModule) -> None:
    """Replace each flattenable vmap region by its body on the whole tensors (in place).

    Region: _vmap_increment_nesting … _add_batch_dim(x, 0, level) … body …
    _remove_batch_dim(y, level, size, 0) … _vmap_decrement_nesting. Left alone unless
    every batched input has one shape and every body op is elementwise.
    """
    g, region = gm.graph, None
    for node in list(g.nodes):
        if _vmap_op(node, "_vmap_increment_nesting"):
            region = [node]
        elif region is not None:
            region.append(node)
            if _vmap_op(node, "_vmap_decrement_nesting"):
                _flatten_region(g, region)
                region = None
    # no dead-code elimination here: dynamo's graph holds in-place ops (a cache's
    # `copy_`) that fx would count as dead
    gm.recompile()


def _flatten_region(g: fx.Graph, region: list[fx.Node]) -> None:
    adds = [n for n in region if _vmap_op(n, "_add_batch_dim")]
    removes = [n for n in region if _vmap_op(n, "_remove_batch_dim")]
    body = [n for n in region if n.op == "call_function" and n not in adds
            and n not in removes and "predispatch" not in getattr(n.target, "__module__", "")]
    # per-example shapes (the batch axis is the level's size for every input)
    shapes = {tuple(a.meta["example_value"].shape) for a in adds if "example_value" in a.meta}
    if (len(shapes) != 1 or any(a.args[1] != 0 for a in adds) or any(r.args[3] != 0 for r in removes)
            or any(n.target not in _ELEMENTWISE for n in body)):
        return
    for n in adds + removes:
        n.replace_all_uses_with(n.args[0])
    for n in reversed(region):
        if not n.users and n.op == "call_function" and n not in body:
            g.erase_node(n)


_CONTEXT_FN = "_checkpoint_context_fn"


def is_checkpoint(node: fx.Node) -> bool:
    """torch.utils.checkpoint under dynamo: `tag_activation_checkpoint(body, *args)`."""
    return node.op == "call_function" and \
        getattr(node.target, "_name", None) == "tag_activation_checkpoint"


def _name_vanilla_checkpoint_policy(gm: fx.GraphModule) -> None:
    """Give each plain checkpoint body the policy torch's own eager path uses for it.

    dynamo records `context_fn` in the body's meta only when the user passed one; torch
    2.13's pre-dispatch tracing of the op then reads that key unconditionally and fails
    (KeyError '_checkpoint_context_fn'). Naming the policy the op falls back to when the
    key is absent (recompute everything) changes nothing it computes.
    """
    import functools

    from torch._higher_order_ops import wrap
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    always = getattr(wrap, "_always_prefer_recompute", None)
    for node in gm.graph.nodes:
        if not is_checkpoint(node) or always is None:
            continue
        body = gm.get_submodule(node.args[0].target)
        if _CONTEXT_FN not in body.meta:
            policy = functools.partial(create_selective_checkpoint_contexts, always)
            policy.ioaware_named = True  # type: ignore[attr-defined]
            body.meta[_CONTEXT_FN] = policy


def _unname_vanilla_checkpoint_policy(*gms: fx.GraphModule) -> None:
    """Undo the above in dynamo's graph and in the traced one, so that both run as torch
    runs a plain checkpoint (and torch does not warn about a context_fn nobody passed)."""
    for gm in gms:
        for node in gm.graph.nodes:
            if is_checkpoint(node):
                body = gm.get_submodule(node.args[0].target)
                if getattr(body.meta.get(_CONTEXT_FN), "ioaware_named", False):
                    del body.meta[_CONTEXT_FN]


def _allow_data_dependent(fakes: Sequence[Any]) -> contextlib.ExitStack:
    """Let the re-trace through dynamo's FakeTensorMode keep data-dependent ops.

    dynamo puts `.item()` (`_local_scalar_dense`) in a graph when it reads a Python
    float it saw take several values (RMSNorm's eps across two models) or a scalar it
    was told to capture, and `nonzero` / boolean indexing when told to keep ops whose
    output size depends on the data (MoE routing). It traces them with unbacked
    symbols; the fake mode it hands over refuses both by default, which failed the
    whole capture. Allowed here (for the re-trace only), they stay in the canonical
    graph as the ops they are, run as they run eagerly, and the regions around them
    are still matched. Returns the stack that restores the mode's flags on close."""
    stack = contextlib.ExitStack()
    # make_fx traces under a fake mode of its own that shares dynamo's ShapeEnv: the
    # flags are set on the ShapeEnv, which both read
    envs = {id(e): e for e in (getattr(getattr(x, "fake_mode", None), "shape_env", None)
                               for x in fakes) if e is not None}
    flags = {"allow_scalar_outputs": True, "allow_dynamic_output_shape_ops": True}
    for env in envs.values():
        settings = getattr(env, "settings", None)
        if dataclasses.is_dataclass(settings) and all(hasattr(settings, f) for f in flags):
            # torch 2.11 / 2.13: read-only properties over a frozen settings record
            env.settings = dataclasses.replace(settings, **flags)
            stack.callback(setattr, env, "settings", settings)
    return stack


def canonicalize(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """Re-trace `gm` into canonical pre-autograd ATen with FakeTensor `meta["val"]`."""
    fakes = fake_inputs(gm, example_inputs)
    _name_vanilla_checkpoint_policy(gm)
    if any(is_autograd_function_apply(n) for n in gm.graph.nodes):
        # a copy: dynamo's graph stays as it was, the backend may still run it
        gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))
        keep_autograd_functions(gm)
    if any(_vmap_op(n, "_vmap_increment_nesting") for n in gm.graph.nodes):
        # a copy: dynamo's graph stays as it was, the backend may still run it
        gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))
        _flatten_vmaps(gm)
        if any(_vmap_op(n, "_vmap_increment_nesting") for n in gm.graph.nodes):
            raise NotImplementedError("a vmap region that is not elementwise over one shape "
                                      "does not survive re-tracing")
    # torch warns once about the checkpoint policy named above; it is torch's own
    wrap_log = logging.getLogger("torch._higher_order_ops.wrap")
    level = wrap_log.level
    wrap_log.setLevel(logging.ERROR)
    data_dependent = _allow_data_dependent(fakes)
    try:
        traced = make_fx(
            gm,
            tracing_mode="symbolic",
            pre_dispatch=True,
            decomposition_table=CANONICAL_DECOMPOSITIONS,
            _allow_non_fake_inputs=True,
        )(*fakes)
    finally:
        data_dependent.close()
        wrap_log.setLevel(level)
        _unname_vanilla_checkpoint_policy(gm)
    _unname_vanilla_checkpoint_policy(traced)
    # The trace runs below grad mode, so its FakeTensors all say requires_grad=False;
    # keep the inputs' own flag for passes that must know what needs a gradient.
    inputs = [n for n in traced.graph.nodes if n.op == "placeholder"]
    for node, fake in zip(inputs, fakes):
        node.meta["requires_grad"] = bool(getattr(fake, "requires_grad", False))
    return traced
