"""Plain-torch reference of the scans behind `ioaware::selective_scan` and `linear_scan`.

Used where no kernel runs (CPU without `config.interpret`) and as the backward there:
gradients come from autograd through these fp32 functions, recomputed on demand, so the
reference path needs no hand-written adjoint.

Selective scan (Mamba, Gu & Dao 2023, Algorithm 2), per batch b and channel d:

    dt_t   = softplus(delta_t + delta_bias[d])            (each part optional)
    h_t[n] = exp(dt_t · A[d, n]) · h_{t-1}[n] + dt_t · B_t[g(d), n] · u_t
    y_t    = Σ_n C_t[g(d), n] · h_t[n] + D[d] · u_t,   y_t ·= silu(z_t)

with g(d) = d // (Dc / G). State arithmetic in fp32; the time loop is sequential, one
[Bt, Dc, N] update per step (this path is for correctness, not speed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretise(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """dt = softplus(delta + delta_bias) in fp32: [Bt, Dc, L]."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    return F.softplus(dt) if delta_softplus else dt


def expand_groups(x: Tensor, channels: int) -> Tensor:
    """[Bt, G, L, N] -> [Bt, Dc, L, N] fp32, channel d reading group d // (Dc / G)."""
    groups = x.shape[1]
    return x.float().repeat_interleave(channels // groups, dim=1)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool, h0: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(y [Bt, Dc, L] in u.dtype, h_last [Bt, Dc, N] fp32); differentiable."""
    batch, channels, length = u.shape
    n_state = A.shape[1]
    dt = discretise(delta, delta_bias, delta_softplus)
    uf = u.float()
    a = A.float()
    b_full, c_full = expand_groups(B, channels), expand_groups(C, channels)
    if h0 is not None:
        h = h0.float()
    else:
        h = torch.zeros(batch, channels, n_state, dtype=torch.float32, device=u.device)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * a)
        h = decay * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * b_full[:, :, t]
        ys.append((h * c_full[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + D.float()[:, None] * uf
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), h


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """h_t = a_t · h_{t∓1} + b_t along dim 1 in fp32 -> [R, L, F] in promote(a, b)."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    rows, length, features = a.shape
    h = h0.float() if h0 is not None else a.new_zeros(rows, features, dtype=torch.float32)
    af, bf = a.float(), b.float()
    steps = range(length - 1, -1, -1) if reverse else range(length)
    hs: list[Tensor] = [h] * length
    for t in steps:
        h = af[:, t] * h + bf[:, t]
        hs[t] = h
    if length == 0:
        return a.new_zeros(rows, 0, features, dtype=out_dtype)
    return torch.stack(hs, dim=1).to(out_dtype)


def _softplus_grad(pre: Tensor) -> Tensor:
    """d softplus / dx with F.softplus's threshold 20 (the identity above it)."""
    return torch.where(pre > 20.0, torch.ones_like(pre), torch.sigmoid(pre))


def selective_scan_backward(
    dy: Tensor, dh_last: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
    C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
    delta_softplus: bool, h0: Tensor | None,
) -> list[Tensor | None]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in fp32, None for an
    absent input. The adjoint state g_t = ∂loss/∂h_t runs backwards in time:

        g_t  = dy_t · C_t + exp(dt_{t+1} A) · g_{t+1},   g_{L-1} starts from dh_last
        dB_t = g_t · dt_t u_t,  dC_t = dy_t · h_t,  dA += g_t · h_{t-1} · exp(dt_t A) · dt_t
        ddt_t = u_t Σ_n g_t B_t + Σ_n g_t h_{t-1} exp(dt_t A) A,   dh0 = exp(dt_0 A) g_0

    with dy the gradient of y before the silu(z) gate and the D·u skip.
    """
    batch, channels, length = u.shape
    groups = B.shape[1]
    pre = discretise(delta, delta_bias, False)
    dt = F.softplus(pre) if delta_softplus else pre
    uf, a = u.float(), A.float()
    b_full, c_full = expand_groups(B, channels), expand_groups(C, channels)
    h = h0.float() if h0 is not None else uf.new_zeros(batch, channels, a.shape[1])
    states = [h]
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * a) * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] \
            * b_full[:, :, t]
        states.append(h)
    dyf = dy.float()
    dz = None
    if z is not None:
        zf = z.float()
        y_pre = torch.stack([(states[t + 1] * c_full[:, :, t]).sum(-1) for t in range(length)],
                            dim=-1)
        if D is not None:
            y_pre = y_pre + D.float()[:, None] * uf
        sig = torch.sigmoid(zf)
        dz = dyf * y_pre * sig * (1 + zf * (1 - sig))
        dyf = dyf * zf * sig
    du = dyf * D.float()[:, None] if D is not None else torch.zeros_like(uf)
    dD = (dyf * uf).sum((0, 2)) if D is not None else None
    g = dh_last.float().clone() if dh_last is not None else torch.zeros_like(h)
    dA = torch.zeros_like(a)
    ddt = torch.zeros_like(uf)
    db_full = torch.zeros_like(b_full)
    dc_full = torch.zeros_like(c_full)
    for t in range(length - 1, -1, -1):
        g = g + dyf[:, :, t, None] * c_full[:, :, t]
        dc_full[:, :, t] = dyf[:, :, t, None] * states[t + 1]
        db_full[:, :, t] = g * (dt[:, :, t] * uf[:, :, t])[:, :, None]
        gb = (g * b_full[:, :, t]).sum(-1)
        du[:, :, t] += dt[:, :, t] * gb
        decay = torch.exp(dt[:, :, t, None] * a)
        g_decay = g * states[t] * decay
        ddt[:, :, t] = uf[:, :, t] * gb + (g_decay * a).sum(-1)
        dA += (g_decay * dt[:, :, t, None]).sum(0)
        g = g * decay
    ddelta = ddt * _softplus_grad(pre) if delta_softplus else ddt
    ddelta_bias = ddelta.sum((0, 2)) if delta_bias is not None else None
    dh0 = g if h0 is not None else None

    def group_sum(x: Tensor) -> Tensor:
        return x.view(batch, groups, channels // groups, length, -1).sum(2)

    return [du, ddelta, dA, group_sum(db_full), group_sum(dc_full), dD, dz, ddelta_bias, dh0]
