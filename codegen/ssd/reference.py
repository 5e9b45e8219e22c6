"""The SSD recurrence in torch, fp32: the CPU path without the interpreter and the
tests' yardstick. Two spellings of the same map (spec.py has the recurrence), and its
single step:

    ssd_recurrent   the recurrence step by step (O(L) Python steps; the definition)
    ssd_chunked     the state-space dual in chunks of `chunk` steps (Dao & Gu 2024, §6):
                    within a chunk y = (L ⊙ C Bᵀ)(dt·x) with L[t, s] = exp(cs_t - cs_s)
                    for s ≤ t, across chunks the [P, N] states carried by the chunk's
                    total decay exp(cs_last)
    ssd_step        one step from a given state (the decode step), y and the new state

The first two return (y [Bt, L, H, P] fp32, final state [Bt, H, P, N] fp32). The
backward of the op's reference path is autograd through `ssd_chunked`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

NO_LIMIT = (-math.inf, math.inf)  # dt_limit that clamps nothing


def discretised_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool,
                   dt_limit: tuple[float, float] = NO_LIMIT) -> Tensor:
    """clamp(softplus?(dt + dt_bias), *dt_limit) in fp32 (softplus with threshold 20, as
    F.softplus)."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    return dt


def _heads(t: Tensor, heads: int) -> Tensor:
    """[Bt, L, G, N] -> [Bt, L, H, N]: each group's rows serve H / G consecutive heads."""
    return t.float().repeat_interleave(heads // t.shape[2], dim=2)


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, dt_bias: Tensor | None = None,
                  dt_softplus: bool = False, h0: Tensor | None = None,
                  dt_limit: tuple[float, float] = NO_LIMIT) -> tuple[Tensor, Tensor]:
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ, y_t = S_t C_t + D x_t, step by step."""
    batch, length, heads, head_dim = x.shape
    dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh, Ch, xf = _heads(B, heads), _heads(C, heads), x.float()
    state = (h0.float().clone() if h0 is not None
             else x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32))
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A.float())  # [Bt, H]
        update = (dt[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        state = decay[..., None, None] * state + update
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(x.shape)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y, state


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Tensor | None = None, dt_bias: Tensor | None = None,
                dt_softplus: bool = False, h0: Tensor | None = None, chunk: int = 64,
                dt_limit: tuple[float, float] = NO_LIMIT) -> tuple[Tensor, Tensor]:
    """The same map in chunks of `chunk` steps; L is padded with dt = 0 steps (decay 1,
    no input), which leave the state as it was."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[-1]
    dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh, Ch, xf = _heads(B, heads), _heads(C, heads), x.float()
    pad = (-length) % chunk
    if pad:
        dt = F.pad(dt, (0, 0, 0, pad))
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    chunks = (length + pad) // chunk

    def split(t: Tensor) -> Tensor:  # [Bt, L, ...] -> [Bt, chunks, chunk, ...]
        return t.reshape(batch, chunks, chunk, *t.shape[2:])

    dt, xf, Bh, Ch = split(dt), split(xf), split(Bh), split(Ch)
    cs = torch.cumsum(dt * A.float(), dim=2)  # [Bt, c, Q, H] inclusive
    seg = cs[:, :, :, None, :] - cs[:, :, None, :, :]  # [Bt, c, t, s, H]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[:, :, None], float("-inf")))
    scores = torch.einsum("bcthn,bcshn->bctsh", Ch, Bh)
    # masked again after the product: a NaN dt at step s reaches no t < s, as in eager
    weights = (scores * decay * dt[:, :, None]).masked_fill(~causal[:, :, None], 0.0)
    y = torch.einsum("bctsh,bcshp->bcthp", weights, xf)
    # each chunk's own contribution to the state it hands on
    to_end = torch.exp(cs[:, :, -1:, :] - cs) * dt  # [Bt, c, Q, H]
    local = torch.einsum("bcsh,bcshp,bcshn->bchpn", to_end, xf, Bh)
    total = torch.exp(cs[:, :, -1, :])  # [Bt, c, H]
    state = (h0.float() if h0 is not None
             else xf.new_zeros(batch, heads, head_dim, d_state))
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = total[:, c, :, None, None] * state + local[:, c]
    s_in = torch.stack(entering, dim=1)  # [Bt, c, H, P, N]
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Ch, s_in, torch.exp(cs))
    y = y.reshape(batch, chunks * chunk, heads, head_dim)[:, :length]
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y, state


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, dt_bias: Tensor | None = None,
             dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT
             ) -> tuple[Tensor, Tensor]:
    """One step of the recurrence (L = 1, generation), in fp32, state not modified:

        S' = exp(dt·A)·S + dt·x Bᵀ,   y = S' C + D·x

    state [Bt, H, P, N]; x [Bt, H, P]; dt [Bt, H]; A, D, dt_bias [H]; B, C [Bt, G, N].
    Returns (y [Bt, H, P] fp32, S' [Bt, H, P, N] fp32)."""
    heads = x.shape[1]
    dt = discretised_dt(dt, dt_bias, dt_softplus, dt_limit)  # [Bt, H]
    Bh = B.float().repeat_interleave(heads // B.shape[1], dim=1)  # [Bt, H, N]
    Ch = C.float().repeat_interleave(heads // C.shape[1], dim=1)
    xf = x.float()
    decay = torch.exp(dt * A.float())[..., None, None]
    new = decay * state.float() + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y, new
