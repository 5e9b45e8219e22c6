"""Layout reasoning for chains of view-like ops, by replaying them on meta tensors.

Attention written in plain PyTorch reaches `bmm` through expand / reshape / permute /
unsqueeze chains that differ with every spelling (`@`, einsum, matmul on 4-D tensors).
Rather than pattern-match each chain, replay it on a `meta` tensor whose strides are
the contiguous strides of the chain's start: the strides that come out say exactly
which start element every output element reads. No data is touched, so this costs
nothing at any sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

aten = torch.ops.aten

# Ops that only relabel elements (no arithmetic). Copies count too: a clone or a
# reshape that copies still keeps every value at the same logical index.
VIEW_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.permute.default,
    aten.transpose.int,
    aten.t.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
}
IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default}
LAYOUT_OPS = VIEW_OPS | IDENTITY_OPS


def hint(size: int | torch.SymInt) -> int:
    """A concrete value for a (possibly symbolic) size: dynamo's hint for it."""
    if isinstance(size, torch.SymInt):
        # SymNode.hint is the example value dynamo traced with; derived sizes may
        # have none cached, and the ShapeEnv evaluates them (torch 2.11 to 2.13).
        node = size.node
        if node.hint is not None:
            return int(node.hint)
        return int(node.shape_env.size_hint(node.expr))
    return int(size)


def shape_of(node: fx.Node) -> tuple[int | torch.SymInt, ...]:
    return tuple(node.meta["val"].shape)


def hinted_shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(hint(s) for s in shape_of(node))


def is_layout(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in LAYOUT_OPS


def _hint_arg(a: object) -> object:
    if isinstance(a, (list, tuple)):
        return type(a)(_hint_arg(x) for x in a)
    if isinstance(a, fx.Node):  # a symbolic size computed in the graph (sym_size)
        a = a.meta["val"]
    if isinstance(a, torch.SymInt):
        return hint(a)
    return a


def replay(chain: Sequence[fx.Node], start_shape: Sequence[int]) -> torch.Tensor | None:
    """Apply the layout ops `chain` (in order) to a contiguous meta tensor.

    Returns the resulting meta tensor, or None when a step is not a pure view of the
    start (a reshape that would copy): its strides then say nothing about the mapping.
    """
    x = torch.empty(tuple(start_shape), device="meta")
    for node in chain:
        if node.target in IDENTITY_OPS:
            continue
        args = [_hint_arg(a) for a in node.args[1:]]
        target = node.target
        if target in (aten.reshape.default, aten._unsafe_view.default):
            target = aten.view.default
        try:
            x = target(x, *args)
        except RuntimeError:
            return None
    return x


def is_batch_reshape(chain: Sequence[fx.Node], start_shape: Sequence[int]) -> bool:
    """True when `chain` only regroups the leading axes and keeps the last two in place.

    i.e. out[..., i, j] == start[..., i, j] with the leading indices flattened in
    row-major order: the result of replay is contiguous, starts at offset 0, has the
    same number of elements, and the same last two sizes.
    """
    out = replay(chain, start_shape)
    if out is None or out.dim() < 2:
        return False
    return (
        out.is_contiguous()
        and out.storage_offset() == 0
        and out.numel() == torch.Size(start_shape).numel()
        and tuple(out.shape[-2:]) == tuple(start_shape[-2:])
    )
