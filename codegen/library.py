"""How a family's ops are registered with torch: the cheapest route through the
dispatcher that keeps fake tensors, dynamo, AOTAutograd, Inductor and opcheck.

A differentiable op is two torch ops:

    kernel_op("ioaware::flash_attention_forward")(body)
        a schema (inferred from `body`'s annotations), `body` as the kernel of every
        device (CompositeExplicitAutograd), a fake. No autograd kernel of its own:
        torch's C++ autograd fallback passes a call through with grad off. What
        Inductor's compiled forward calls; backward ops are kernel ops too.

    differentiable_op("ioaware::flash_attention", forward, backward, setup_context)
        the op passes emit and users call: a CompositeImplicitAutograd kernel that
        applies a thin autograd.Function (forward = the kernel op `forward`, then
        `setup_context` and `backward` as torch.library.register_autograd takes them),
        or with grad off calls `forward` directly. Fake tensors and AOTAutograd trace
        through it, so Inductor's forward graph holds `forward` and its backward graph
        the backward kernel op, each called through the dispatcher in C++ alone.

Why (issue 19): `torch.library.custom_op` puts a Python autograd kernel on every op, and
Inductor's compiled forward calls it with grad off: the custom op's `autograd_impl`, a
Python `redispatch` below autograd, `backend_impl` with its aliasing check and the
`torch._disable_dynamo` wrapper, on every call (forward and backward ops alike).
Measured per call on a trivial body (tiny CPU tensors, grad off, torch 2.13, a shared
2-core machine; docs/performance.md has the table for the attention op):

    the body called directly                                    6.6 µs
    custom_op + register_autograd (before)                     19.7 µs   (+13.1)
    Library op, kernel at CPU, torch's autograd fallback       10.1 µs   (+3.5)
    ... kernel at CompositeExplicitAutograd                     9.2 µs   (+2.6)
    ... autograd kernel a fallthrough                           9.0 µs   (+2.4)
    ... Python autograd kernel (torch.library.register_autograd) 15.8 µs  (+9.2)

A fallthrough autograd kernel would be a µs cheaper still, but a kernel op called with
grad on would then return outputs that silently drop out of the graph; the fallback
warns instead; and under create_graph, a backward that calls kernel ops marks its
gradients so that differentiating them raises (as the custom op's did) rather than pass
through ops that have no formula.

`ROUTE` is "library" (the above) where this torch has `torch.library.infer_schema`,
`register_fake` and `Library`; else, or with IOAWARE_OP_ROUTE=custom_op, "custom_op":
both helpers make `torch.library.custom_op`s exactly as before (the forward op is then
one too, and the differentiable op runs the body itself).

A kernel op may write arguments in place (`mutates_args`, the SSD step's state): no
autograd, and its kernel bumps their version counters before the body (`kernel_op`).

Both routes give an object with what the families and codegen/host.py use of a
custom op: `register_fake` (a decorator), `_init_fn` (the body: `host.undecorated`),
`_opoverload`, and calling it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ioaware.config import config

from .host import apply_of

# torch.library.custom_op's tag: Inductor and dynamo treat such an op as PT2-compliant.
TAGS = (torch.Tag.pt2_compliant_tag,)


def choose_route(requested: str | None = None) -> str:
    """'library' where it is asked for ('auto' or 'library') and this torch has what it
    needs, else 'custom_op' (today's registration)."""
    requested = requested or config.op_route
    if requested not in ("auto", "library", "custom_op"):
        raise ValueError(f"op_route={requested!r}: expected 'auto', 'library' or 'custom_op'")
    available = all(hasattr(torch.library, name)
                    for name in ("infer_schema", "register_fake", "Library"))
    return "library" if requested != "custom_op" and available else "custom_op"


ROUTE = choose_route()

_LIBRARIES: dict[str, torch.library.Library] = {}


def _library(namespace: str) -> torch.library.Library:
    """One FRAGMENT library per namespace, kept alive for the process (its registrations
    are undone when it is collected)."""
    lib = _LIBRARIES.get(namespace)
    if lib is None:
        lib = _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")
    return lib


class KernelOp:
    """A torch op whose every device runs `body` (see the module docstring)."""

    def __init__(self, qualname: str, body: Callable[..., Any], schema: str,
                 kernel: Callable[..., Any] | None, dispatch_key: str) -> None:
        self.namespace, self.name = qualname.split("::")
        self.qualname, self.schema = qualname, schema
        self._init_fn = body
        self._abstract_fn: Callable[..., Any] | None = None
        lib = _library(self.namespace)
        lib.define(self.name + schema, tags=TAGS)
        lib.impl(self.name, kernel or body, dispatch_key)
        self._opoverload = getattr(getattr(torch.ops, self.namespace), self.name).default

    def register_fake(self, fake: Callable[..., Any]) -> Callable[..., Any]:
        """What fake (and meta) tensors get: shapes, dtypes, devices, no data."""
        torch.library.register_fake(self.qualname, fake, lib=_library(self.namespace))
        self._abstract_fn = fake
        return fake

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._opoverload(*args, **kwargs)


def kernel_op(qualname: str, mutates_args: tuple[str, ...] = ()
              ) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: `body` as the op `qualname`, its schema from `body`'s annotations (no
    autograd; see the module docstring). mutates_args: the arguments `body` writes in
    place (`Tensor(a!)` in the schema, so functionalization and Inductor see the write).

    A mutating op has no ADInplaceOrView kernel either (custom_op's, in Python, rebinds
    the schema's defaults on every call to bump the written tensors' version counters):
    its kernel bumps them itself, one C call each, then runs the body, so autograd still
    sees a tensor it saved as changed."""
    def define(body: Callable[..., Any]) -> Any:
        if ROUTE == "custom_op":
            return torch.library.custom_op(qualname, mutates_args=mutates_args)(body)
        schema = torch.library.infer_schema(body, mutates_args=mutates_args)
        kernel = _bumping_versions(body, mutates_args) if mutates_args else None
        return KernelOp(qualname, body, schema, kernel, "CompositeExplicitAutograd")

    return define


def _bumping_versions(body: Callable[..., Any], names: tuple[str, ...]
                      ) -> Callable[..., Any]:
    """`body` after bumping the version counter of each argument named in `names` (what
    an in-place torch op does; a kernel writing through a pointer does not)."""
    parameters = list(inspect.signature(body).parameters)
    positions = tuple(parameters.index(name) for name in names)
    increment = torch._C._increment_version

    def kernel(*args: Any, **kwargs: Any) -> Any:
        increment([args[i] for i in positions])
        return body(*args, **kwargs)

    return kernel


def differentiable_op(qualname: str, forward: Any, backward: Callable[..., Any],
                      setup_context: Callable[..., Any], double_backward: bool = False) -> Any:
    """The op `qualname` with `forward`'s schema: the kernel op `forward` with the
    autograd formula (`setup_context(ctx, inputs, output)`, `backward(ctx, *grads)`,
    as torch.library.register_autograd takes them). double_backward: `backward` is made
    of differentiable ops only, so it may itself be differentiated (else it is
    refused a double backward: `_NoSecondDerivative`)."""
    if ROUTE == "custom_op":
        op = torch.library.custom_op(qualname, mutates_args=())(forward._init_fn)
        op.register_fake(forward._abstract_fn)
        op.register_autograd(backward, setup_context=setup_context)
        return op
    arguments = forward._opoverload._schema.arguments
    function = _autograd_function(qualname, forward._opoverload, arguments, backward,
                                  setup_context, double_backward)
    composite = _composite(forward._opoverload, arguments, apply_of(function))
    op = KernelOp(qualname, forward._init_fn, forward.schema, composite,
                  "CompositeImplicitAutograd")
    op._abstract_fn = forward._abstract_fn
    return op


# ---- the lean route's differentiable op -----------------------------------------------
#
# autograd.Function tracks tensors among its arguments, not inside lists, so a call's
# tensor lists (an attention's extra inputs) are spread: Function.apply(lengths, *flat),
# where `lengths` gives each list argument's length, in order.


def _list_positions(arguments: Sequence[Any]) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(arguments)
                 if isinstance(a.type, torch._C.ListType)
                 and a.type.getElementType().isSubtypeOf(torch._C.TensorType.get()))


def _filled(arguments: Sequence[Any], args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Every argument, in schema order: the dispatcher drops trailing ones left at their
    defaults before a Python kernel sees them."""
    if len(args) == len(arguments) and not kwargs:
        return args
    rest = [kwargs.get(a.name, a.default_value)
            for a in arguments[len(args):]]
    return (*args, *rest)


def _any_requires_grad(*args: Any) -> bool:
    """torch._C._any_requires_grad where a torch lacks it: tensors and tensor lists."""
    return any(t.requires_grad for a in args
               for t in (a if isinstance(a, (list, tuple)) else (a,))
               if isinstance(t, torch.Tensor))


def _composite(forward: Any, arguments: Sequence[Any], apply: Callable[..., Any]
               ) -> Callable[..., Any]:
    """The differentiable op's kernel: the Function when a gradient may flow, else the
    kernel op alone (Inductor's inference graphs, no_grad, the backward of a ring)."""
    lists = _list_positions(arguments)
    any_requires_grad = getattr(torch._C, "_any_requires_grad", _any_requires_grad)

    def composite(*args: Any, **kwargs: Any) -> Any:
        args = _filled(arguments, args, kwargs)
        if torch.is_grad_enabled() and any_requires_grad(*args):
            if not lists:
                return apply((), *args)
            lengths = tuple(len(args[i]) for i in lists)
            flat: list[Any] = []
            for i, a in enumerate(args):
                if i in lists:
                    flat.extend(a)
                else:
                    flat.append(a)
            return apply(lengths, *flat)
        return forward(*args)

    return composite


def _autograd_function(qualname: str, forward: Any, arguments: Sequence[Any],
                       backward: Callable[..., Any], setup_context: Callable[..., Any],
                       double_backward: bool) -> type[torch.autograd.Function]:
    lists = _list_positions(arguments)
    count = len(arguments)

    def nested(lengths: tuple[int, ...], flat: Sequence[Any]) -> list[Any]:
        """The call's arguments from the spread ones (the inverse of `_composite`'s)."""
        if not lists:
            return list(flat)
        out, at, sizes = [], 0, iter(lengths)
        for i in range(count):
            if i in lists:
                size = next(sizes)
                out.append(list(flat[at:at + size]))
                at += size
            else:
                out.append(flat[at])
                at += 1
        return out

    def spread(lengths: tuple[int, ...], grads: Sequence[Any]) -> list[Any]:
        """backward's gradients, one per argument (a list for a list argument), spread
        as the arguments were; a trailing gradient left off is None."""
        grads = (*grads, *(None,) * (count - len(grads)))
        if not lists:
            return list(grads)
        out, sizes = [], iter(lengths)
        for i, g in enumerate(grads):
            if i in lists:
                size = next(sizes)
                out.extend(g if g is not None else (None,) * size)
            else:
                out.append(g)
        return out

    def function_forward(lengths, *flat):
        return forward(*nested(lengths, flat))

    def function_setup_context(ctx, inputs, output):
        ctx.list_lengths = inputs[0]
        setup_context(ctx, tuple(nested(inputs[0], inputs[1:])), output)

    def function_backward(ctx, *grads):
        flat_needs = ctx.needs_input_grad
        ctx.needs_input_grad = tuple(nested(ctx.list_lengths, flat_needs[1:]))  # per argument
        try:
            result = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = flat_needs
        if not isinstance(result, tuple):
            result = (result,)
        flat = spread(ctx.list_lengths, result)
        if torch.is_grad_enabled() and not double_backward:  # create_graph=True
            flat = _NoSecondDerivative.marked(qualname, flat)
        return (None, *flat)
    name = qualname.replace("::", "_") + "_function"
    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(function_forward),
        "setup_context": staticmethod(function_setup_context),
        "backward": staticmethod(function_backward),
    })


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a backward's gradients; differentiating them raises. For a
    backward made of kernel ops, which have no derivative of their own: without it, a
    double backward would pass through torch's autograd fallback (a warning, and no
    gradient) instead of failing."""

    @staticmethod
    def forward(ctx, qualname: str, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.qualname = qualname
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *grads: Any) -> Any:
        raise RuntimeError(
            f"{ctx.qualname}: its backward runs kernels that have no derivative of their "
            "own, so its gradients cannot be differentiated again (double backward)")

    @classmethod
    def marked(cls, qualname: str, grads: list[Any]) -> list[Any]:
        """`grads` with each tensor that requires grad passed through this Function."""
        at = [i for i, g in enumerate(grads)
              if isinstance(g, torch.Tensor) and g.requires_grad]
        if not at:
            return grads
        out = list(grads)
        for i, g in zip(at, cls.apply(qualname, *(grads[i] for i in at))):
            out[i] = g
        return out
