"""Custom `torch.autograd.Function`s kept whole through capture, with their gradients.

dynamo records a user's autograd.Function as the higher-order op
`autograd_function_apply(fwd_graph, bwd_graph, *args, **kwargs)`. Capture re-traces the
graph above autograd (`make_fx(pre_dispatch=True)`), and that trace inlines the op's
forward under `no_grad`: the values stay right but the gradient through it is lost
(transformers' BLOOM wraps its GeLU in one; its MLP weights then got no gradient at
all). So before the re-trace, each such call becomes `ioaware::autograd_function`, an
opaque custom op that runs the original call, and whose backward recomputes it with
grad enabled and differentiates that (one extra forward of the function, no saved
activations of its own). Inductor and the CPU path both see an ordinary custom op.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

# key → the original call on tensors; an entry lives as long as the process, like the
# compiled graphs that name it (one small closure per custom Function per compile).
_CALLS: dict[str, Callable[..., Any]] = {}
_NEXT_KEY = itertools.count()


def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _unaliased(outs: list[torch.Tensor], args: list[torch.Tensor]) -> list[torch.Tensor]:
    """A custom op may not return its inputs or views of them: copy those."""
    storages = {a.untyped_storage().data_ptr() for a in args}
    return [o.clone() if o.untyped_storage().data_ptr() in storages else o for o in outs]


@torch.library.custom_op("ioaware::autograd_function", mutates_args=())
def autograd_function_op(args: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    with torch.no_grad():
        return _unaliased(_outputs(_CALLS[key](*args)), args)


@autograd_function_op.register_fake
def _(args: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    with torch.no_grad():
        return [o.clone() for o in _outputs(_CALLS[key](*args))]


@torch.library.custom_op("ioaware::autograd_function_backward", mutates_args=())
def autograd_function_backward_op(args: list[torch.Tensor], grads: list[torch.Tensor],
                                  needs: list[bool], key: str) -> list[torch.Tensor]:
    """d(sum of outputs·grads)/d(args[i]) for each i with needs[i]; zeros elsewhere.

    The function is run again with grad enabled on detached copies of its inputs; its
    own backward (the user's) is what torch.autograd.grad then runs.
    """
    with torch.enable_grad():
        xs = [a.detach().requires_grad_(n) for a, n in zip(args, needs)]
        outs = _outputs(_CALLS[key](*xs))
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        wrt = [x for x in xs if x.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                       allow_unused=True) if pairs and wrt else [])
    result = []
    for a, n in zip(args, needs):
        g = next(got) if n else None
        result.append(torch.zeros_like(a) if g is None else g)
    return result


@autograd_function_backward_op.register_fake
def _(args: list[torch.Tensor], grads: list[torch.Tensor], needs: list[bool],
      key: str) -> list[torch.Tensor]:
    return [torch.empty_like(a) for a in args]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    args, key = inputs
    ctx.save_for_backward(*args)
    ctx.key = key
    ctx.needs = [a.requires_grad and (a.is_floating_point() or a.is_complex()) for a in args]


def _backward(ctx: Any, grads: list[torch.Tensor | None]) -> tuple[Any, None]:
    args = list(ctx.saved_tensors)
    if not any(ctx.needs):
        return [None] * len(args), None
    # an output the loss does not reach comes back as None: give it a zero gradient
    outs = _outputs(_CALLS[ctx.key](*args)) if any(g is None for g in grads) else None
    grads = [torch.zeros_like(outs[i]) if g is None else g for i, g in enumerate(grads)]
    got = autograd_function_backward_op(args, grads, ctx.needs, ctx.key)
    return [g if n else None for g, n in zip(got, ctx.needs)], None


autograd_function_op.register_autograd(_backward, setup_context=_setup_context)


def is_autograd_function_apply(node: fx.Node) -> bool:
    """dynamo's higher-order op for a custom autograd.Function (torch 2.11 to 2.13)."""
    return node.op == "call_function" and "autograd_function_apply" in (
        getattr(node.target, "__name__", None), getattr(node.target, "_name", None))


def _tensor_value(node: Any) -> bool:
    return isinstance(node, fx.Node) and \
        isinstance(node.meta.get("example_value"), torch.Tensor)


def keep_autograd_functions(gm: fx.GraphModule) -> int:
    """Replace each `autograd_function_apply` in dynamo's graph `gm` (in place) by
    `ioaware::autograd_function`; returns how many were replaced.

    Raises NotImplementedError for a call whose non-tensor arguments are computed in the
    graph (a symbolic size): it cannot be closed over, and capture must not lose its
    gradient, so the backend then leaves the whole graph as it was.
    """
    count = 0
    for node in list(gm.graph.nodes):
        if not is_autograd_function_apply(node):
            continue
        fwd_node, bwd_node, *rest = node.args
        fwd, bwd = (gm.get_submodule(n.target) for n in (fwd_node, bwd_node))
        tensors = [a for a in rest if _tensor_value(a)]
        if any(isinstance(a, fx.Node) and not _tensor_value(a) for a in rest):
            raise NotImplementedError(
                f"{node.name}: a custom autograd.Function called with a non-tensor value "
                "computed in the graph; capture would lose its gradient")
        positions = [i for i, a in enumerate(rest) if _tensor_value(a)]
        constants, kwargs, target = list(rest), dict(node.kwargs), node.target

        def call(*xs: torch.Tensor, _c=constants, _p=positions, _k=kwargs, _t=target,
                 _f=fwd, _b=bwd) -> Any:
            full = list(_c)
            for i, x in zip(_p, xs):
                full[i] = x
            return _t(_f, _b, *full, **_k)

        key = f"{node.name}#{next(_NEXT_KEY)}"
        _CALLS[key] = call
        single = not isinstance(node.meta.get("example_value"), (tuple, list))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(torch.ops.ioaware.autograd_function.default,
                                         (tensors, key))
            new.meta.update(node.meta)
            if single:
                out = gm.graph.call_function(operator.getitem, (new, 0))
                out.meta.update(node.meta)
            else:
                out = new
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.recompile()
    return count
