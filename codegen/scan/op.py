"""Fused scans as torch ops with their own autograd (issue 4; registered as
codegen/library.py says: each a kernel op `..._forward` and the differentiable op).

    ioaware::selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
        -> (y, h_last)
    ioaware::linear_scan(a, b, h0, reverse) -> h

selective_scan (Mamba's selective SSM), per batch b and channel d, state in fp32:
    dt_t   = softplus?(delta_t + delta_bias[d])   (softplus with threshold 20, as F.softplus)
    h_t[n] = exp(dt_t · A[d, n]) · h_{t-1}[n] + dt_t · B_t[g, n] · u_t,   h_{-1} = h0 or 0
    y_t    = Σ_n C_t[g, n] · h_t[n] + D[d] · u_t,   y_t ·= silu(z_t) if z is given
  u, delta, z: [Bt, Dc, L]; A: [Dc, N]; D, delta_bias: [Dc]; h0: [Bt, Dc, N];
  B, C: [Bt, G, L, N] with G | Dc, g = d // (Dc / G); any strides (stride 0 too).
  y: [Bt, Dc, L] contiguous in u.dtype; h_last = h_{L-1}: [Bt, Dc, N] fp32.

linear_scan: h_t = a_t · h_{t-1} + b_t along dim 1 of a, b: [R, L, F] (t from L-1 down
  to 0 when reverse), h_{-1} = h0 [R, F] or 0, fp32 accumulation;
  h: [R, L, F] contiguous in promote_types(a.dtype, b.dtype).

Dispatch per call, as every family (codegen/runtime.py): CUDA -> compiled Triton; CPU
with config.interpret -> the same kernels under Triton's interpreter; otherwise
reference.py (fp32 torch).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ioaware.codegen.scan.spec import ScanSpec
from ioaware.spec import DTYPES, dtype_name

from ..grads import empty_grads, zero_length_grads
from ..library import differentiable_op, kernel_op
from ..plan import planned
from ..runtime import backend_name, device_context, kernel_module
from . import reference as scan_reference

__all__ = ["linear_scan", "selective_scan"]

MAX_D_STATE = 256

FLOAT_DTYPES = tuple(DTYPES.values())
# Parameters and states (A, D, delta_bias, h0) may also be float64: the kernels read them
# into fp32 and write their gradients back in their own dtype.
PARAM_DTYPES = (*FLOAT_DTYPES, torch.float64)
PARAMS = ("A", "D", "delta_bias", "h0")


def _check_float(name: str, t: Tensor) -> None:
    allowed = PARAM_DTYPES if name in PARAMS else FLOAT_DTYPES
    if t.dtype not in allowed:
        raise ValueError(f"{name}.dtype={t.dtype} is not supported; expected one of "
                         f"{[str(d) for d in allowed]}")


def _check_tensors(named, ref_name: str, ref: Tensor) -> None:
    """Each (name, tensor) of `named` is a Tensor of a supported dtype on ref's device;
    None (an absent optional input) passes."""
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor; got {type(t).__name__}")
        _check_float(name, t)
        if t.device != ref.device:
            raise ValueError(f"{name}.device={t.device} must equal "
                             f"{ref_name}.device={ref.device}")


def _check_selective(u, delta, A, B, C, D, z, delta_bias, h0) -> None:
    """Raise ValueError naming the offending argument; see the module docstring."""
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"u must be 3-D [Bt, Dc, L]; got shape {tuple(getattr(u, 'shape', ()))}")
    batch, channels, length = u.shape
    _check_tensors((("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("z", z), ("delta_bias", delta_bias), ("h0", h0)), "u", u)
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and tuple(t.shape) != (batch, channels, length):
            raise ValueError(f"{name}.shape={tuple(t.shape)} must equal u.shape="
                             f"{tuple(u.shape)} [Bt, Dc, L]")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A.shape={tuple(A.shape)} must be [Dc, N] with Dc={channels}")
    n_state = A.shape[1]
    if not 1 <= n_state <= MAX_D_STATE:
        raise ValueError(f"A.shape[1]=N={n_state} (d_state) must be between 1 and "
                         f"{MAX_D_STATE}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != length or t.shape[3] != n_state:
            raise ValueError(f"{name}.shape={tuple(t.shape)} must be [Bt, G, L, N] = "
                             f"[{batch}, G, {length}, {n_state}]")
    groups = B.shape[1]
    if C.shape[1] != groups:
        raise ValueError(f"B and C must have the same groups G: B.shape[1]={groups}, "
                         f"C.shape[1]={C.shape[1]}")
    if groups == 0 or channels % groups != 0:
        raise ValueError(f"groups G=B.shape[1]={groups} must divide channels Dc={channels}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"{name}.shape={tuple(t.shape)} must be [Dc] = [{channels}]")
    if h0 is not None and tuple(h0.shape) != (batch, channels, n_state):
        raise ValueError(f"h0.shape={tuple(h0.shape)} must be [Bt, Dc, N] = "
                         f"[{batch}, {channels}, {n_state}]")


def _selective_spec(u, delta, A, B, D, z, delta_bias, delta_softplus, h0) -> ScanSpec:
    return _selective_spec_of(u.dtype, A.shape[1], delta.dtype, B.dtype, D is not None,
                              z is not None, delta_bias is not None, bool(delta_softplus),
                              h0 is not None)


@functools.lru_cache(maxsize=256)
def _selective_spec_of(dtype, d_state, delta_dtype, bc_dtype, has_D, has_z, has_delta_bias,
                       delta_softplus, has_h0) -> ScanSpec:
    """One frozen Spec per signature: built and validated once, not on every call."""
    return ScanSpec(kind="selective", dtype=dtype_name(dtype), d_state=d_state,
                    delta_dtype=dtype_name(delta_dtype), bc_dtype=dtype_name(bc_dtype),
                    has_D=has_D, has_z=has_z, has_delta_bias=has_delta_bias,
                    delta_softplus=delta_softplus, has_h0=has_h0)


def _selective_outputs(u: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    batch, channels, _ = u.shape
    y = u.new_empty(u.shape)
    h_last = u.new_empty((batch, channels, A.shape[1]), dtype=torch.float32)
    return y, h_last


@kernel_op("ioaware::selective_scan_forward")
@planned
def selective_scan_forward_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool, h0: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(y, h_last) of the selective scan; see the module docstring."""
    _check_selective(u, delta, A, B, C, D, z, delta_bias, h0)
    y, h_last = _selective_outputs(u, A)
    if u.shape[2] == 0 or u.numel() == 0:  # no steps: the state is what it started as
        if h0 is not None:
            h_last.copy_(h0)
        else:
            h_last.zero_()
        return y, h_last
    if backend_name(u.device) == "reference":
        y_ref, h_ref = scan_reference.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                                     delta_softplus, h0)
        return y.copy_(y_ref), h_last.copy_(h_ref)
    spec = _selective_spec(u, delta, A, B, D, z, delta_bias, delta_softplus, h0)
    module = kernel_module("scan_fwd", spec, u.device)
    with device_context(u.device):
        module.forward(u, delta, A, B, C, D, z, delta_bias, h0, y, h_last)
    return y, h_last


@selective_scan_forward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    return _selective_outputs(u, A)




@kernel_op("ioaware::selective_scan_backward")
@planned
def selective_scan_backward_op(
    dy: Tensor, dh_last: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
    C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
    delta_softplus: bool, h0: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0), each in its input's shape and
    dtype; an absent optional input gets an empty [0] placeholder."""
    grads = empty_grads(u, delta, A, B, C, D, z, delta_bias, h0)
    if u.numel() == 0:
        return zero_length_grads(grads, dh_last, h0)
    if backend_name(u.device) == "reference":
        ref = scan_reference.selective_scan_backward(dy, dh_last, u, delta, A, B, C, D, z,
                                                     delta_bias, delta_softplus, h0)
        for g, r in zip(grads, ref):
            if r is not None:
                g.copy_(r)
            else:
                g.zero_()
        return grads
    spec = _selective_spec(u, delta, A, B, D, z, delta_bias, delta_softplus, h0)
    module = kernel_module("scan_bwd", spec, u.device)
    with device_context(u.device):
        return tuple(module.backward(dy, dh_last, u, delta, A, B, C, D, z, delta_bias, h0,
                                     [g.dtype for g in grads]))



@selective_scan_backward_op.register_fake
def _(dy, dh_last, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    return empty_grads(u, delta, A, B, C, D, z, delta_bias, h0)


def _selective_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0 = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)
    ctx.delta_softplus = delta_softplus


def _selective_backward(ctx, dy: Tensor | None, dh_last: Tensor | None, *, run=None):
    """run: what computes the gradients, the backward op unless the host path
    (codegen/host.py) gives its body."""
    u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(u.shape, dtype=u.dtype, device=u.device)
    grads = (run or torch.ops.ioaware.selective_scan_backward)(
        dy, dh_last, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, h0)
    present = (u, delta, A, B, C, D, z, delta_bias, h0)
    du, ddelta, dA, dB, dC, dD, dz, ddb, dh0 = (
        g if t is not None else None for g, t in zip(grads, present))
    return du, ddelta, dA, dB, dC, dD, dz, ddb, None, dh0


selective_scan_op = differentiable_op("ioaware::selective_scan", selective_scan_forward_op,
                                      _selective_backward, _selective_setup_context)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan, fused: (y [Bt, Dc, L] in u.dtype, h_last [Bt, Dc, N] fp32).

    See the module docstring for the recurrence and shapes. The [Bt, Dc, L, N] state
    never exists in memory. Raises ValueError on bad shapes, dtypes or devices.
    """
    # Checked here too: with meta inputs dispatch picks the fake, which never checks.
    _check_selective(u, delta, A, B, C, D, z, delta_bias, h0)
    return torch.ops.ioaware.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                            bool(delta_softplus), h0)


# ---- linear scan -------------------------------------------------------------------


def _check_linear(a, b, h0) -> None:
    _check_tensors((("a", a), ("b", b), ("h0", h0)), "a", a)
    if a.dim() != 3:
        raise ValueError(f"a must be 3-D [R, L, F]; got a.shape={tuple(a.shape)}")
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b.shape={tuple(b.shape)} must equal a.shape={tuple(a.shape)}")
    if h0 is not None and tuple(h0.shape) != (a.shape[0], a.shape[2]):
        raise ValueError(f"h0.shape={tuple(h0.shape)} must be [R, F] = "
                         f"[{a.shape[0]}, {a.shape[2]}]")


def _linear_spec(out_dtype: torch.dtype, h0: Tensor | None, reverse: bool) -> ScanSpec:
    return _linear_spec_of(out_dtype, h0 is not None, bool(reverse))


@functools.lru_cache(maxsize=64)
def _linear_spec_of(out_dtype: torch.dtype, has_h0: bool, reverse: bool) -> ScanSpec:
    return ScanSpec(kind="linear", dtype=dtype_name(out_dtype), has_h0=has_h0,
                    reverse=reverse)


@kernel_op("ioaware::linear_scan_forward")
@planned
def linear_scan_forward_op(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """h_t = a_t · h_{t∓1} + b_t along dim 1; see the module docstring."""
    _check_linear(a, b, h0)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    h = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    if h.numel() == 0:
        return h
    if backend_name(a.device) == "reference":
        return h.copy_(scan_reference.linear_scan(a, b, h0, reverse))
    module = kernel_module("scan_linear", _linear_spec(out_dtype, h0, reverse), a.device)
    with device_context(a.device):
        module.forward(a, b, h0, h)
    return h


@linear_scan_forward_op.register_fake
def _(a, b, h0, reverse):
    return torch.empty(a.shape, dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)


def _linear_setup_context(ctx, inputs, output) -> None:
    a, b, h0, reverse = inputs
    ctx.save_for_backward(a, h0, output)
    ctx.reverse = reverse
    ctx.b_dtype = b.dtype


def _linear_backward(ctx, dh: Tensor):
    """The adjoint of a linear recurrence is the same recurrence run the other way:

        g_t = dh_t + a_{t+1} · g_{t+1}   (a_{t-1}, g_{t-1} when reverse)
        da_t = g_t · h_{t-1},  db_t = g_t,  dh0 = a_first · g_first

    so it is one more linear_scan on (a shifted by one step, dh), in fp32.
    """
    a, h0, h = ctx.saved_tensors
    reverse = ctx.reverse
    rows, length, features = a.shape
    if length == 0:
        dh0 = None if h0 is None else torch.zeros_like(h0)
        return torch.zeros_like(a), torch.zeros(a.shape, dtype=ctx.b_dtype,
                                                device=a.device), dh0, None
    af = a.float()
    zero = af.new_zeros(rows, 1, features)
    start = (h0.float()[:, None] if h0 is not None else zero)
    if reverse:
        a_next = torch.cat([zero, af[:, :-1]], dim=1)  # a_{t-1}: g flows from t-1 to t
        h_prev = torch.cat([h[:, 1:].float(), start], dim=1)  # h_{t+1}
    else:
        a_next = torch.cat([af[:, 1:], zero], dim=1)
        h_prev = torch.cat([start, h[:, :-1].float()], dim=1)
    g = torch.ops.ioaware.linear_scan(a_next, dh.float().contiguous(), None, not reverse)
    da = (g * h_prev).to(a.dtype)
    db = g.to(ctx.b_dtype)
    dh0 = None
    if h0 is not None:
        first = length - 1 if reverse else 0
        dh0 = (af[:, first] * g[:, first]).to(h0.dtype)
    return da, db, dh0, None


# its backward is linear_scan calls and torch ops: differentiable again
linear_scan_op = differentiable_op("ioaware::linear_scan", linear_scan_forward_op,
                                   _linear_backward, _linear_setup_context,
                                   double_backward=True)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False) -> Tensor:
    """h_t = a_t · h_{t-1} + b_t along dim 1 of a, b: [R, L, F], fused in one kernel.

    reverse=True runs from t = L-1 down to 0 (h_t = a_t · h_{t+1} + b_t). h0: [R, F] or
    None (zeros). Returns [R, L, F] contiguous in promote_types(a.dtype, b.dtype).
    Raises ValueError on bad shapes, dtypes or devices.
    """
    if not isinstance(a, Tensor):
        raise TypeError(f"a must be a Tensor; got {type(a).__name__}")
    if not isinstance(b, Tensor):
        raise TypeError(f"b must be a Tensor; got {type(b).__name__}")
    _check_linear(a, b, h0)
    return torch.ops.ioaware.linear_scan(a, b, h0, bool(reverse))
