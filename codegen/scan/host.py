"""The scan ops' host path (codegen/host.py): thin autograd Functions that call the ops'
bodies without the dispatcher in graphs run as fx, with the ops' own setup_context and
backward formulas. The linear scan's backward is itself a linear_scan call (through
the op)."""

from __future__ import annotations

import torch

from ..host import apply_of, register_host_path, undecorated
from . import op


class SelectiveScan(torch.autograd.Function):
    """ioaware::selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)."""

    forward = staticmethod(undecorated(op.selective_scan_op))
    setup_context = staticmethod(op._selective_setup_context)

    @staticmethod
    def backward(ctx, dy, dh_last):
        return op._selective_backward(ctx, dy, dh_last, run=_selective_backward)


_selective_backward = undecorated(op.selective_scan_backward_op)


class LinearScan(torch.autograd.Function):
    """ioaware::linear_scan(a, b, h0, reverse) -> h."""

    forward = staticmethod(undecorated(op.linear_scan_op))
    setup_context = staticmethod(op._linear_setup_context)
    backward = staticmethod(op._linear_backward)


_selective_apply, _linear_apply = apply_of(SelectiveScan), apply_of(LinearScan)


# What a graph calls: module-level functions (fx names a call's target by its module and
# name, which `Function.apply` does not give).
def selective_scan_host(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    return _selective_apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)


def linear_scan_host(a, b, h0, reverse):
    return _linear_apply(a, b, h0, reverse)


register_host_path(torch.ops.ioaware.selective_scan.default, selective_scan_host)
register_host_path(torch.ops.ioaware.linear_scan.default, linear_scan_host)
