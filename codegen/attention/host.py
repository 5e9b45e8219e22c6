"""The attention ops' host path (codegen/host.py): thin autograd Functions that call the
ops' bodies, forward and backward, without the dispatcher, in graphs run as fx.

Each reuses its op's own setup_context and backward formula, so what is saved and how
the gradients are formed is the op's, by construction."""

from __future__ import annotations

import torch

from ..host import apply_of, register_host_path, undecorated
from . import op


class FlashAttention(torch.autograd.Function):
    """ioaware::flash_attention(q, k, v, scale, causal) -> (out, lse)."""

    forward = staticmethod(undecorated(op.flash_attention_op))
    setup_context = staticmethod(op._setup_context)

    @staticmethod
    def backward(ctx, dout, dlse):
        return op._backward(ctx, dout, dlse, run=_flash_backward)


_flash_backward = undecorated(op.flash_attention_backward_op)


class Attention(torch.autograd.Function):
    """ioaware::attention(q, k, v, inputs, spec, seed) with the inputs spread out
    (autograd tracks tensors among a Function's arguments, not inside a list)."""

    @staticmethod
    def forward(q, k, v, spec, seed, *inputs):
        return _attention(q, k, v, list(inputs), spec, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, spec, seed, *extra = inputs
        op._attention_setup_context(ctx, (q, k, v, extra, spec, seed), output)

    @staticmethod
    def backward(ctx, dout, dlse):
        dq, dk, dv, dextra, *_ = op._attention_backward(ctx, dout, dlse,
                                                        run=_attention_backward)
        return (dq, dk, dv, None, None, *dextra)


_attention = undecorated(op.attention_op)
_attention_backward = undecorated(op.attention_backward_op)


_flash_apply, _attention_apply = apply_of(FlashAttention), apply_of(Attention)


# What a graph calls: module-level functions (fx names a call's target by its module and
# name, which `Function.apply` does not give).
def flash_attention_host(q, k, v, scale, causal):
    return _flash_apply(q, k, v, scale, causal)


def attention_host(q, k, v, inputs, spec, seed=None):
    return _attention_apply(q, k, v, spec, seed, *inputs)


register_host_path(torch.ops.ioaware.flash_attention.default, flash_attention_host)
register_host_path(torch.ops.ioaware.attention.default, attention_host)
