"""The SSD decode step (Mamba-2 at L = 1) as a torch custom op that updates the state
in place, as transformers' `mamba2_selective_state_update` does to its cache.

    ioaware::ssd_step(state!, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max) -> y

Per batch b and head h, g = h // (H / G):
    dt' = clamp(softplus?(dt + dt_bias[h]), dt_min, dt_max)
    S   ← exp(dt'·A[h])·S + dt'·x Bᵀ  (computed in fp32, stored in the state's dtype)
    y   = S C + D[h]·x                  (from the fp32 S, in x.dtype)
  state: [Bt, H, P, N]; x: [Bt, H, P]; dt: [Bt, H]; A, D, dt_bias: [H]; B, C: [Bt, G, N].

No autograd: a step that mutates its state is generation, not training (the pass leaves
a step that needs gradients eager). Dispatch as every family (codegen/runtime.py); the
body behind a launch plan (codegen/plan.py): from the fourth call at a signature a step
replays its allocation of y and its one launch, without the checks, the Spec and the
module lookup. Registered as a kernel op (codegen/library.py) with `Tensor(a!) state`:
no Python autograd or ADInplaceOrView kernel (as a custom op it had both, the latter
filling the schema's defaults per call for the version bump of the state: ~36 µs on a
slow shared CPU); its kernel bumps the state's version itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ioaware.spec import dtype_name

from ..library import kernel_op
from ..plan import planned
from ..runtime import backend_name, device_context, kernel_module
from . import reference as ssd_reference
from .op import check_tensors, shape_of
from .spec import MAX_D_STATE, MAX_HEAD_DIM, SSDSpec

__all__ = ["ssd_step"]


def check_ssd_step(state, x, dt, A, B, C, D, dt_bias) -> None:
    """Raise ValueError (TypeError for a non-tensor) naming the offending argument."""
    named = (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C),
             ("D", D), ("dt_bias", dt_bias))
    check_tensors(named, x, ("D", "dt_bias"), ("state", "A", "D", "dt_bias"))
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [Bt, H, P] (one step); got shape {shape_of(x)}")
    batch, heads, head_dim = x.shape
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"x.shape[2]=P={head_dim} (head_dim) must be between 1 and "
                         f"{MAX_HEAD_DIM}")
    if shape_of(dt) != (batch, heads):
        raise ValueError(f"dt.shape={shape_of(dt)} must be [Bt, H] = [{batch}, {heads}]")
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if t is not None and shape_of(t) != (heads,):
            raise ValueError(f"{name}.shape={shape_of(t)} must be [H] = [{heads}]")
    if B.dim() != 3 or B.shape[0] != batch or shape_of(B) != shape_of(C):
        raise ValueError(f"B.shape={shape_of(B)} and C.shape={shape_of(C)} must both be "
                         f"[Bt, G, N] = [{batch}, G, N]")
    groups, d_state = B.shape[1], B.shape[2]
    if groups == 0 or heads % groups:
        raise ValueError(f"groups G=B.shape[1]={groups} must divide heads H={heads}")
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"B.shape[2]=N={d_state} (d_state) must be between 1 and "
                         f"{MAX_D_STATE}")
    if shape_of(state) != (batch, heads, head_dim, d_state):
        raise ValueError(f"state.shape={shape_of(state)} must be [Bt, H, P, N] = "
                         f"[{batch}, {heads}, {head_dim}, {d_state}]")


def _step_spec(x, dt, B, D, dt_bias, dt_softplus, dt_min, dt_max) -> SSDSpec:
    """The chunked Spec's fields for a step (x [Bt, H, P], B [Bt, G, N]): read from the
    sizes, not from views, so the body stays plannable (a view is never replayed)."""
    return SSDSpec(
        dtype=dtype_name(x.dtype), head_dim=x.shape[2], d_state=B.shape[2],
        dt_dtype=dtype_name(dt.dtype), bc_dtype=dtype_name(B.dtype),
        has_D=D is not None, has_dt_bias=dt_bias is not None,
        dt_softplus=bool(dt_softplus), has_h0=False, dt_min=float(dt_min),
        dt_max=float(dt_max))


@kernel_op("ioaware::ssd_step", mutates_args=("state",))
@planned  # a decode step's host time is most of its time (codegen/plan.py)
def ssd_step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool, dt_min: float,
                dt_max: float) -> Tensor:
    """y of one SSD step; `state` updated in place (see the module docstring)."""
    check_ssd_step(state, x, dt, A, B, C, D, dt_bias)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    if backend_name(x.device) == "reference":
        y_ref, new = ssd_reference.ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus,
                                            (dt_min, dt_max))
        state.copy_(new)
        return y.copy_(y_ref)
    spec = _step_spec(x, dt, B, D, dt_bias, dt_softplus, dt_min, dt_max)
    module = kernel_module("ssd_step", spec, x.device)
    with device_context(x.device):
        module.step(state, x, dt, A, B, C, D, dt_bias, y)
    return y


@ssd_step_op.register_fake
def _(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, dt_bias: Tensor | None = None,
             dt_softplus: bool = False,
             dt_limit: tuple[float, float] = (-math.inf, math.inf)) -> Tensor:
    """One Mamba-2 step: `state` [Bt, H, P, N] updated in place, y [Bt, H, P] returned.
    Raises ValueError on bad shapes, dtypes or devices, naming the argument."""
    check_ssd_step(state, x, dt, A, B, C, D, dt_bias)
    dt_min, dt_max = (float(v) for v in dt_limit)
    if not dt_min <= dt_max:
        raise ValueError(f"dt_limit={dt_limit} must be (min, max) with min <= max")
    return torch.ops.ioaware.ssd_step(state, x, dt, A, B, C, D, dt_bias, bool(dt_softplus),
                                      dt_min, dt_max)
