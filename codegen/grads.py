"""The gradients a family's backward op returns, shared by the scan and SSD families.

A custom op returns tensors only, so an optional input that is absent (None) still gets
a gradient slot: an empty [0] placeholder, which the autograd formula turns back into
None. The recurrences take an initial state h0 last and give its gradient dh0 last.
"""

from __future__ import annotations

import torch
from torch import Tensor

NO_GRAD = (0,)  # shape of the placeholder returned for an absent optional input


def empty_grads(*inputs: Tensor | None) -> tuple[Tensor, ...]:
    """One uninitialised gradient per input, in its shape, dtype and device; the
    placeholder for an absent one. The first input must be present."""
    first = inputs[0]
    return tuple(first.new_empty(NO_GRAD) if t is None
                 else torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in inputs)


def zero_length_grads(grads: tuple[Tensor, ...], dh_last: Tensor | None,
                      h0: Tensor | None) -> tuple[Tensor, ...]:
    """The gradients of a recurrence over zero steps: zeros, except dh0 = dh_last (the
    final state is the initial one)."""
    for g in grads:
        g.zero_()
    if h0 is not None and dh_last is not None:
        grads[-1].copy_(dh_last)
    return grads
