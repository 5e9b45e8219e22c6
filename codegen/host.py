"""The host path: how a rewritten region's kernels are called with the least host time.

A region calls a family's differentiable torch op (`ioaware::attention`, ...;
codegen/library.py). The op is what tracing, fake tensors, AOTAutograd and Inductor see,
and it stays: on CUDA, Inductor's compiled forward and backward call its kernel ops
(`ioaware::attention_forward`, `ioaware::attention_backward`) directly, under
AOTAutograd's own autograd node. A graph that runs as fx (the CPU paths, or any graph
Inductor does not take) would pay for the op's machinery on every call instead: the
dispatcher, the op's Python kernel and its autograd.Function, a second trip through the
dispatcher to the kernel op, and another for the backward op. There each op
call is swapped for the family's *host function*: one thin `torch.autograd.Function`
that calls the op's own body (the checks, the kernel module lookup, the launches of
cached binaries with their chosen configs) with no dispatch on the way, forward and
backward.

A family joins in one place, its `host.py`:

    register_host_path(torch.ops.ioaware.attention.default, attention_host)

where `attention_host` takes the op's arguments (same order, same defaults) and returns
what the op returns; `undecorated(custom_op)` gives the Python function behind a
custom op (the body to call directly), and `apply_of(Function)` the Function's apply
less its Python layer (below). `use_host_path(gm)` swaps the registered ops of a
graph (its subgraphs too: a checkpointed body runs as fx as well).

Every kernel path is CUDA-graph capturable: the launchers read sizes from tensors'
shapes (no `.item()`, `.cpu()`, `.tolist()`, `nonzero`), allocate through torch's
allocator only, and never tune inside a capture (`codegen/tuning.py`);
tests/unit/test_host_path.py checks the source of every launcher for host syncs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

# op overload -> the callable that replaces it in a graph run as fx
HOST_PATHS: dict[Any, Callable[..., Any]] = {}


def register_host_path(op: Any, function: Callable[..., Any]) -> None:
    """Call `function` instead of `op` (an OpOverload) in graphs run as fx."""
    HOST_PATHS[op] = function


def undecorated(op: Any) -> Callable[..., Any]:
    """The Python function an op was made from (its body, called without the dispatcher):
    a codegen/library.py op's or a `torch.library.custom_op`'s; the op itself where no
    such function is kept."""
    return getattr(op, "_init_fn", op)


def apply_of(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """`function.apply` without its Python layer, for callers that pass every argument.

    `Function.apply` binds the arguments to forward's signature with `inspect` on every
    call when the Function has its own setup_context (as the host functions do, to reuse
    the ops'): ~40 µs a call on a slow CPU, more than the rest of an attention forward's
    host path. Autograd's C `apply` (which calls forward, then setup_context, and records
    the node) is called directly instead, unless a torch.func transform is active: that
    needs Function.apply's own route (`custom_function_call`).
    """
    raw = torch._C._FunctionBase.__dict__.get("apply")
    if raw is None:  # a torch that moved it: the documented route
        return function.apply
    c_apply = raw.__get__(None, function)
    python_apply = function.apply
    transforms_active = torch._C._are_functorch_transforms_active

    def apply(*args: Any) -> Any:
        return python_apply(*args) if transforms_active() else c_apply(*args)

    return apply


def rewrite_calls(gm: fx.GraphModule, rewrite: Callable[[fx.Node], bool]) -> int:
    """Offer every call_function node of `gm` and of its submodules to `rewrite`, which
    edits the node in place and says whether it did; recompiles the modules it changed
    and returns how many nodes changed."""
    changed_total = 0
    for module in gm.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        changed = sum(bool(rewrite(node)) for node in list(module.graph.nodes)
                      if node.op == "call_function")
        if changed:
            module.recompile()
        changed_total += changed
    return changed_total


def use_host_path(gm: fx.GraphModule) -> int:
    """Swap each call of a registered op in `gm` and its submodules for its host
    function; returns how many calls were swapped."""
    def swap(node: fx.Node) -> bool:
        if node.target not in HOST_PATHS:
            return False
        node.target = HOST_PATHS[node.target]
        return True

    return rewrite_calls(gm, swap)

