"""The chunked SSD (Mamba-2) as a torch op with its own autograd (registered as
codegen/library.py says: a kernel op `ioaware::ssd_forward` under the differentiable op).

    ioaware::ssd(x, dt, A, B, C, D, dt_bias, dt_softplus, h0, dt_min, dt_max) -> (y, h_last)
    ioaware::ssd_backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, dt_softplus, h0,
                          dt_min, dt_max) -> (dx, ddt, dA, dB, dC, dD, ddt_bias, dh0)

Per batch b and head h (spec.py), state in fp32:
    dt_t = clamp(softplus?(dt_t + dt_bias[h]), dt_min, dt_max)
                                                   (softplus with threshold 20, as F.softplus)
    S_t  = exp(dt_t · A[h]) · S_{t-1} + dt_t · x_t B_tᵀ,   S_{-1} = h0 or 0
    y_t  = S_t C_t + D[h] · x_t
  x: [Bt, L, H, P]; dt: [Bt, L, H]; A, D, dt_bias: [H]; B, C: [Bt, L, G, N] with G | H
  (head h reads group h // (H / G)); h0: [Bt, H, P, N]; any strides.
  y: [Bt, L, H, P] contiguous in x.dtype; h_last = S_{L-1}: [Bt, H, P, N] fp32.

Dispatch per call, as every family (codegen/runtime.py): CUDA -> compiled Triton; CPU
with config.interpret -> the same kernels under Triton's interpreter; otherwise
reference.py (fp32 torch, its backward autograd through it).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ioaware.codegen.ssd.spec import MAX_D_STATE, MAX_HEAD_DIM, SSDSpec
from ioaware.config import config
from ioaware.spec import DTYPES, dtype_name

from ..grads import empty_grads, zero_length_grads
from ..library import differentiable_op, kernel_op
from ..runtime import backend_name, device_context, kernel_module
from . import reference as ssd_reference

__all__ = ["ssd"]

FLOAT_DTYPES = tuple(DTYPES.values())
# Parameters and states may also be float64: read into fp32, gradients in their dtype.
PARAMS = ("A", "D", "dt_bias", "h0")
PARAM_DTYPES = (*FLOAT_DTYPES, torch.float64)


def shape_of(t: Tensor | None) -> tuple[int, ...]:
    return tuple(getattr(t, "shape", ()))


def check_tensors(named: tuple, x: Tensor, optional: tuple[str, ...],
                  params: tuple[str, ...]) -> None:
    """Each (name, tensor) a Tensor (None allowed for `optional` names) of a float dtype
    (float64 too for `params`) on x's device; else TypeError / ValueError naming it."""
    for name, t in named:
        if t is None and name in optional:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor; got {type(t).__name__}")
        allowed = PARAM_DTYPES if name in params else FLOAT_DTYPES
        if t.dtype not in allowed:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported; expected one of "
                             f"{[str(d) for d in allowed]}")
        if t.device != x.device:
            raise ValueError(f"{name}.device={t.device} must equal x.device={x.device}")


def check_ssd(x, dt, A, B, C, D, dt_bias, h0) -> None:
    """Raise ValueError (TypeError for a non-tensor) naming the offending argument."""
    named = (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D),
             ("dt_bias", dt_bias), ("h0", h0))
    check_tensors(named, x, ("D", "dt_bias", "h0"), PARAMS)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [Bt, L, H, P]; got shape {shape_of(x)}")
    batch, length, heads, head_dim = x.shape
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"x.shape[3]=P={head_dim} (head_dim) must be between 1 and "
                         f"{MAX_HEAD_DIM}")
    if shape_of(dt) != (batch, length, heads):
        raise ValueError(f"dt.shape={shape_of(dt)} must be [Bt, L, H] = "
                         f"[{batch}, {length}, {heads}]")
    if shape_of(A) != (heads,):
        raise ValueError(f"A.shape={shape_of(A)} must be [H] = [{heads}] (a scalar decay "
                         f"per head)")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[:2] != (batch, length):
            raise ValueError(f"{name}.shape={shape_of(t)} must be [Bt, L, G, N] = "
                             f"[{batch}, {length}, G, N]")
    if shape_of(B) != shape_of(C):
        raise ValueError(f"B.shape={shape_of(B)} and C.shape={shape_of(C)} must be equal")
    groups, d_state = B.shape[2], B.shape[3]
    if groups == 0 or heads % groups:
        raise ValueError(f"groups G=B.shape[2]={groups} must divide heads H={heads}")
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"B.shape[3]=N={d_state} (d_state) must be between 1 and "
                         f"{MAX_D_STATE}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and shape_of(t) != (heads,):
            raise ValueError(f"{name}.shape={shape_of(t)} must be [H] = [{heads}]")
    if h0 is not None and shape_of(h0) != (batch, heads, head_dim, d_state):
        raise ValueError(f"h0.shape={shape_of(h0)} must be [Bt, H, P, N] = "
                         f"[{batch}, {heads}, {head_dim}, {d_state}]")


def ssd_spec(x, dt, B, D, dt_bias, dt_softplus, h0, dt_min=-math.inf, dt_max=math.inf
             ) -> SSDSpec:
    return SSDSpec(
        dtype=dtype_name(x.dtype), head_dim=x.shape[3], d_state=B.shape[3],
        dt_dtype=dtype_name(dt.dtype), bc_dtype=dtype_name(B.dtype),
        has_D=D is not None, has_dt_bias=dt_bias is not None,
        dt_softplus=bool(dt_softplus), has_h0=h0 is not None, dt_min=float(dt_min),
        dt_max=float(dt_max),
    )


def _outputs(x: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    batch, _, heads, head_dim = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h_last = torch.empty((batch, heads, head_dim, B.shape[3]), dtype=torch.float32,
                         device=x.device)
    return y, h_last


@kernel_op("ioaware::ssd_forward")
def ssd_forward_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
           dt_bias: Tensor | None, dt_softplus: bool, h0: Tensor | None, dt_min: float,
           dt_max: float) -> tuple[Tensor, Tensor]:
    """(y, h_last) of the SSD recurrence; see the module docstring."""
    check_ssd(x, dt, A, B, C, D, dt_bias, h0)
    y, h_last = _outputs(x, B)
    if x.shape[1] == 0 or x.numel() == 0:  # no steps: the state is what it started as
        h_last.copy_(h0) if h0 is not None else h_last.zero_()
        return y, h_last
    if backend_name(x.device) == "reference":
        y_ref, h_ref = ssd_reference.ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, h0,
                                                 dt_limit=(dt_min, dt_max))
        return y.copy_(y_ref), h_last.copy_(h_ref)
    spec = ssd_spec(x, dt, B, D, dt_bias, dt_softplus, h0, dt_min, dt_max)
    module = kernel_module("ssd_fwd", spec, x.device)
    with device_context(x.device):
        module.forward(x, dt, A, B, C, D, dt_bias, h0, y, h_last)
    return y, h_last


@ssd_forward_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, h0, dt_min, dt_max):
    return _outputs(x, B)





def _reference_backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, dt_softplus, h0, dt_limit):
    """The gradients by autograd through the fp32 torch reference."""
    present = [t for t in (x, dt, A, B, C, D, dt_bias, h0) if t is not None]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in present]
        it = iter(leaves)
        args = [next(it) if t is not None else None for t in (x, dt, A, B, C, D, dt_bias, h0)]
        y, h_last = ssd_reference.ssd_chunked(*args[:7], dt_softplus, args[7],
                                              dt_limit=dt_limit)
        outs, grads_out = [y], [dy.float()]
        if dh_last is not None:
            outs.append(h_last)
            grads_out.append(dh_last.float())
        grads = torch.autograd.grad(outs, leaves, grads_out, allow_unused=True)
    it = iter(grads)
    return [next(it) if t is not None else None for t in (x, dt, A, B, C, D, dt_bias, h0)]


@kernel_op("ioaware::ssd_backward")
def ssd_backward_op(
    dy: Tensor, dh_last: Tensor | None, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
    C: Tensor, D: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool,
    h0: Tensor | None, dt_min: float, dt_max: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dD, ddt_bias, dh0), each in its input's shape and dtype; an
    absent optional input gets an empty [0] placeholder."""
    grads = empty_grads(x, dt, A, B, C, D, dt_bias, h0)
    if x.numel() == 0:
        return zero_length_grads(grads, dh_last, h0)
    if backend_name(x.device) == "reference":
        ref = _reference_backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, dt_softplus, h0,
                                  (dt_min, dt_max))
    else:
        spec = dataclasses.replace(
            ssd_spec(x, dt, B, D, dt_bias, dt_softplus, h0, dt_min, dt_max),
            bc_atomic=config.ssd_bc_atomic, backward=config.ssd_backward)
        module = kernel_module("ssd_bwd", spec, x.device)
        with device_context(x.device):
            ref = module.backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, h0)
    for g, r in zip(grads, ref):
        if r is not None:
            g.copy_(r)
        else:
            g.zero_()
    return grads


@ssd_backward_op.register_fake
def _(dy, dh_last, x, dt, A, B, C, D, dt_bias, dt_softplus, h0, dt_min, dt_max):
    return empty_grads(x, dt, A, B, C, D, dt_bias, h0)


def _setup_context(ctx, inputs, output) -> None:
    x, dt, A, B, C, D, dt_bias, dt_softplus, h0, dt_min, dt_max = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, h0)
    ctx.dt_softplus = dt_softplus
    ctx.dt_limit = (dt_min, dt_max)


def _backward(ctx, dy: Tensor | None, dh_last: Tensor | None):
    x, dt, A, B, C, D, dt_bias, h0 = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    grads = torch.ops.ioaware.ssd_backward(dy, dh_last, x, dt, A, B, C, D, dt_bias,
                                           ctx.dt_softplus, h0, *ctx.dt_limit)
    present = (x, dt, A, B, C, D, dt_bias, h0)
    dx, ddt, dA, dB, dC, dD, ddtb, dh0 = (
        g if t is not None else None for g, t in zip(grads, present))
    return dx, ddt, dA, dB, dC, dD, ddtb, None, dh0, None, None


ssd_op = differentiable_op("ioaware::ssd", ssd_forward_op, _backward, _setup_context)


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
        dt_bias: Tensor | None = None, dt_softplus: bool = False, h0: Tensor | None = None,
        dt_limit: tuple[float, float] = (-math.inf, math.inf)) -> tuple[Tensor, Tensor]:
    """Mamba-2's SSD, chunked on tensor cores: (y [Bt, L, H, P] in x.dtype, h_last
    [Bt, H, P, N] fp32). See the module docstring for the recurrence and shapes; the
    [P, N] states never reach HBM in the forward. Raises ValueError on bad shapes,
    dtypes or devices, naming the argument."""
    # Checked here too: with meta inputs dispatch picks the fake, which never checks.
    check_ssd(x, dt, A, B, C, D, dt_bias, h0)
    dt_min, dt_max = (float(v) for v in dt_limit)
    if not dt_min <= dt_max:
        raise ValueError(f"dt_limit={dt_limit} must be (min, max) with min <= max")
    return torch.ops.ioaware.ssd(x, dt, A, B, C, D, dt_bias, bool(dt_softplus), h0,
                                 dt_min, dt_max)
