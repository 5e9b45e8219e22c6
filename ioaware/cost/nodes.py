"""What a node of the canonical ATen graph reads and writes, from the example values in
node.meta["val"]: tensor sizes, the memory a view covers, and the op's schema arguments.

Bytes follow the FlashAttention IO model (ioaware/cost/__init__.py): each distinct input
tensor is read once at the size of the memory it covers, each output written once.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
from torch import fx

from ioaware.cost.algebra import Cost, sym

# --------------------------------------------------------------------------------------
# Sizes of tensors in node.meta["val"]


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in an example value (a tensor, or nested tuples and lists of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []


def numel(t: torch.Tensor) -> sympy.Expr:
    """Elements of `t`, symbolic sizes kept."""
    return sympy.Mul(*(sym(s) for s in t.shape))


def distinct_numel(t: torch.Tensor) -> sympy.Expr:
    """Elements of memory a tensor covers: an `expand`ed dim (stride 0) covers one."""
    return sympy.Mul(
        *(sym(size) for size, stride in zip(t.shape, t.stride())
          if not (isinstance(stride, int) and stride == 0))
    )


def nbytes(t: torch.Tensor) -> sympy.Expr:
    """Bytes of `t` at its logical size (what writing it moves)."""
    return numel(t) * t.dtype.itemsize


def meta_val(node: fx.Node) -> Any:
    """The node's example value, node.meta["val"] (None when the trace left none)."""
    return node.meta.get("val")


def output_tensor(node: fx.Node) -> torch.Tensor:
    """The node's first output tensor."""
    return tensors(meta_val(node))[0]


def output_bytes(node: fx.Node) -> sympy.Expr:
    """Bytes the node writes: each of its output tensors once."""
    return sympy.Add(*(nbytes(t) for t in tensors(meta_val(node))))


# Ops that always return a view of all of their input: reading through one reads the input.
WHOLE_VIEWS = {
    "view", "_unsafe_view", "expand", "expand_as", "view_as", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "alias", "detach", "unflatten", "movedim", "swapaxes",
    "lift_fresh",
}
# Ops that return a view when they can and a copy when they must.
MAYBE_VIEWS = {"reshape", "flatten", "contiguous", "to", "type_as"}


def is_alias(node: fx.Node) -> bool:
    """True if the node's output shares memory with its first input (a view, no copy)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    out, inp = meta_val(node), meta_val(node.args[0])
    if not isinstance(out, torch.Tensor) or not isinstance(inp, torch.Tensor):
        return False
    if torch._C._is_alias_of(out, inp):
        return True
    return _would_alias(op_name(node.target), inp, out)


def _would_alias(name: str, inp: torch.Tensor, out: torch.Tensor) -> bool:
    """Decide from static sizes and strides whether `name` could return a view.

    make_fx in "real" mode fakeifies each output on its own, so its meta values carry no
    aliasing; symbolic and fake traces answer through `_is_alias_of` above instead.
    """
    if inp.dtype != out.dtype or inp.device != out.device:
        return False
    sizes = (*inp.shape, *inp.stride(), *out.shape)
    if not all(isinstance(s, int) for s in sizes):
        return False
    probe = torch.empty_strided(inp.shape, inp.stride(), device="meta")
    if name == "contiguous":
        return probe.is_contiguous()
    if name in ("to", "type_as"):
        return True  # same dtype and device: `to` returns self
    try:
        probe.view(out.shape)  # reshape and flatten view exactly when `view` would work
    except RuntimeError:
        return False
    return True


def storage_root(node: fx.Node) -> fx.Node:
    """Walk back through views that cover their whole input; that node's memory is read."""
    while node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
        name = op_name(node.target)
        if getattr(node.target, "_overloadname", "") == "dtype":
            break  # view.dtype reinterprets the bytes: a different tensor to read
        if name in WHOLE_VIEWS or (name in MAYBE_VIEWS and is_alias(node)):
            node = node.args[0]
        else:
            break
    return node


def input_bytes(node: fx.Node) -> sympy.Expr:
    """Bytes of the distinct tensors the node reads, each counted once.

    Inputs that are views of the same memory (x and x.t(), or x and x.expand(...)) are
    one tensor: `mul(x, x.t())` reads x once. Disjoint slices of one tensor stay separate.
    """
    seen: dict[fx.Node, sympy.Expr] = {}
    for inp in node.all_input_nodes:
        if not isinstance(meta_val(inp), torch.Tensor):
            continue  # SymInt size arguments
        root = storage_root(inp)
        t = meta_val(root)
        seen[root] = distinct_numel(t) * t.dtype.itemsize
    return sympy.Add(*seen.values())


def reads_and_writes(node: fx.Node) -> Cost:
    """The traffic of an op with no arithmetic: `input_bytes` read, `output_bytes` written."""
    return Cost(read_bytes=input_bytes(node), write_bytes=output_bytes(node))


# --------------------------------------------------------------------------------------
# The op and its schema arguments


def op_name(target: Any) -> str:
    """An op's name without namespace or overload: aten.add.Tensor -> "add"."""
    schema = getattr(target, "_schema", None)
    return schema.name.split("::")[-1] if schema is not None else ""


def schema_arg(node: fx.Node, name: str, default: Any = None) -> Any:
    """The argument the op's schema calls `name`, passed by keyword or by position."""
    if name in node.kwargs:
        return node.kwargs[name]
    for i, argument in enumerate(node.target._schema.arguments):
        if argument.name == name:
            return node.args[i] if i < len(node.args) else default
    return default


def heads_and_batch(t: torch.Tensor) -> tuple[sympy.Expr, sympy.Expr]:
    """(batch, heads) of a [..., H, N, d] attention operand: every dim before H is batch."""
    batch = sympy.Mul(*(sym(s) for s in t.shape[:-3]))
    heads = sym(t.shape[-3]) if t.dim() >= 3 else sympy.Integer(1)
    return batch, heads


def tensor_arg(node: fx.Node, name: str) -> torch.Tensor | None:
    """The example tensor of the schema argument `name`; None when it is not a tensor."""
    value = schema_arg(node, name)
    if isinstance(value, fx.Node) and isinstance(meta_val(value), torch.Tensor):
        return meta_val(value)
    return None
