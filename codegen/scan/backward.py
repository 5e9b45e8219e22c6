"""Render the Triton source of the fused selective-scan backward for a ScanSpec.

`render_backward(spec)` returns a module with one `@triton.jit` kernel and a launcher
`backward(dout, dh_last, u, delta, A, B, C, D, z, delta_bias, h0, dtypes)` returning
(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0).

The adjoint state g_t = ∂loss/∂h_t obeys the same kind of recurrence, run backwards
(Mamba, Gu & Dao 2023, §3.3: "recomputation" instead of storing the states):

    g_t  = dy_t · C_t + a_{t+1} · g_{t+1},    g_{L-1} = dy_{L-1} · C_{L-1} + dh_last
    with a_t = exp(dt_t · A), x_t = dt_t · B_t · u_t, h_t = a_t h_{t-1} + x_t:
    dC_t  = dy_t · h_t                          dB_t = g_t · dt_t · u_t
    du_t  = dy_t · D + dt_t · Σ_n g_t B_t       dA  += g_t · (h_t − x_t) · dt_t
    ddt_t = u_t · Σ_n g_t B_t + Σ_n g_t · (h_t − x_t) · A
    dh0   = a_0 · g_0
where h_t − x_t = a_t · h_{t-1} needs no shifted copy of the states, and dy is the
gradient reaching the pre-gate y (dout · silu(z); dz = dout · y · silu'(z)).

One program per (channel block, batch), in two sweeps over L:
  1. forward: the state at the start of every chunk (chunk-wise composite of the
     (a, x) pairs), written to a small fp32 scratch [Bt, Dc, L / BLOCK_L, N];
  2. backward, chunk by chunk from the end: re-scan the chunk from its start state
     to get h_t, run g_t = dy_t C_t + a_{t+1} g_{t+1} from the end of the chunk (a
     sequential loop in registers, `_adjoint_scan`) from the carry a_{start} g_{start}
     of the chunk after it, and form every gradient in registers.
The [Bt, Dc, L, N] tensors never exist in HBM.

Reductions: dA, dD and ddelta_bias sum over batch and time; each program sums its
own steps in registers and adds once with an atomic. dB and dC sum over the channels
of a group: with one channel per group they are stored directly; when a channel block
lies inside one group (G = 1, HF Mamba) the block is summed on chip first
(`_sum_channels`) and added with one atomic per (step, n), so the atomics are
Dc / BLOCK_D per element rather than Dc, and no [Bt, Dc, L, N] partial buffer is
written and read back; otherwise each channel adds its own share. The atomics are
relaxed (`red.global`, no fence before each): they only accumulate, and the kernel's
end orders them for whoever reads the sums; the default acq_rel put a GPU-wide MEMBAR
before every chunk's dB and dC adds.
"""

from __future__ import annotations

import string

from ioaware.codegen.scan.spec import ScanSpec
from ioaware.hardware import DeviceProfile

from ..render import LAUNCH_IMPORTS
from .forward import (
    MAX_TILE_PER_THREAD,
    MAX_TUNE_CONFIGS,
    fits_layout,
    padded_state,
    render_selective,
)

# The backward holds about twice the forward's live tiles (the states, the adjoint and
# the shifted decay), so its configs keep half the forward's tile per thread.
BACKWARD_TILE_PER_THREAD = MAX_TILE_PER_THREAD // 2

# Every backward config uses one chunk length, so the chunk-state scratch has one shape.
BACKWARD_BLOCK_L = 8

# (BLOCK_D, num_warps), fastest first at the shape, with the register adjoint
# loop (H200, 2026-12-06): (8, 1) 0.98 ms, (16, 2) 1.37, (4, 1) 1.50, (8, 2) 2.08 (the
# H100's order before it: (4, 1) 1.57, (8, 1) 1.70, (16, 2) 2.11, (8, 2) 3.32, (32, 4)
# 3.91); the layout argument of scan_fwd.tile_configs holds here too. With both sweeps
# double-buffered, (8, 1) took 0.73 ms on an H100 (the others not re-timed). The rest
# serve other state sizes.
BACKWARD_CANDIDATES = [(8, 1), (16, 2), (4, 1), (8, 2), (32, 4), (16, 4), (32, 8), (64, 4),
                       (2, 4), (4, 8), (1, 8)]


def backward_configs(spec: ScanSpec, profile: DeviceProfile | None = None
                     ) -> list[tuple[int, int, int]]:
    """(BLOCK_D, BLOCK_L, num_warps) candidates for autotuning the backward on a GPU: the
    measured order under the layout rule (registers, not shared memory, bound these
    tiles, so `profile` does not narrow them)."""
    n_pad = padded_state(spec.d_state)
    fits = [(bd, BACKWARD_BLOCK_L, w) for bd, w in BACKWARD_CANDIDATES
            if fits_layout(n_pad, bd, BACKWARD_BLOCK_L, w, BACKWARD_TILE_PER_THREAD)]
    return fits[:MAX_TUNE_CONFIGS] or [default_backward_config(spec, profile)]


def default_backward_config(spec: ScanSpec, profile: DeviceProfile | None = None
                            ) -> tuple[int, int, int]:
    n_pad = padded_state(spec.d_state)
    for block_d, warps in BACKWARD_CANDIDATES:
        if fits_layout(n_pad, block_d, BACKWARD_BLOCK_L, warps, BACKWARD_TILE_PER_THREAD):
            return block_d, BACKWARD_BLOCK_L, warps
    warps = min(8, max(1, n_pad // 32))
    for block_d in (64, 32, 16, 8, 4, 2, 1):
        if fits_layout(n_pad, block_d, BACKWARD_BLOCK_L, warps, BACKWARD_TILE_PER_THREAD):
            return block_d, BACKWARD_BLOCK_L, warps
    return 1, BACKWARD_BLOCK_L, 8


_BACKWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_D, BLOCK_L, num_warps)
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_STEPS = ${tune_min_steps}
MAX_GRID_Y = 65535
# Chunks ahead (sweep 1) or behind (sweep 2) whose bytes each chunk asks L2 for.
PREFETCH = 0 if INTERPRET else ${prefetch}
POLY_EVERY = ${poly_every}  # one step in POLY_EVERY takes exp2 on the FMA pipe (0: none)


${primitives}


@triton.jit
def _adjoint_scan(decay, dyc, offs_c, BLOCK_L: tl.constexpr):
    """g_t = dyc_t + a_{t+1} g_{t+1} within a chunk whose last step is dyc as given (the
    carry from the chunk after is already in it), run as a loop from the end. Each thread
    holds whole runs of L, so the per-step slices and the write-back are register
    selects resolved at compile time; the shifted decay a_{t+1} is this chunk's own
    `decay` one step on, not a second exp2 of a reloaded dt. (sm_90 SASS, (8, 8, 1):
    tl.associative_scan(reverse=True) moved data across all 32 lanes, 14 shuffles per
    state element, and the shifted decay cost one more MUFU per element.)"""
    g_next = _step(dyc, offs_c, BLOCK_L - 1)
    g = dyc
    for j in tl.static_range(BLOCK_L - 2, -1, -1):
        g_next = _step(dyc, offs_c, j) + _step(decay, offs_c, j + 1) * g_next
        g = tl.where(offs_c[:, None, None] == j, g_next[None, :, :], g)
    return g


@triton.jit
def _add_bc_grad(Ptr, grad, offs_d, d_ok, offs_n, n_ok, offs_l, l_ok, stride_g,
                 CPG: tl.constexpr, BLOCK_D: tl.constexpr):
    """Add a [BLOCK_L, N, BLOCK_D] gradient into dB or dC [G, L, N] (contiguous) of
    the groups its channels read; see the module docstring for the three cases."""
    ln = offs_l[:, None] * D_STATE + offs_n[None, :]
    ln_ok = l_ok[:, None] & n_ok[None, :]
    if CPG == 1:
        g = offs_d.to(tl.int64)
        tl.store(Ptr + ln[:, :, None] + g[None, None, :] * stride_g, grad,
                 mask=ln_ok[:, :, None] & d_ok[None, None, :])
    elif CPG % BLOCK_D == 0:
        g = (tl.program_id(0) * BLOCK_D // CPG).to(tl.int64)
        tl.atomic_add(Ptr + g * stride_g + ln, _sum_channels(grad), mask=ln_ok, sem="relaxed")
    else:
        g = (offs_d // CPG).to(tl.int64)
        tl.atomic_add(Ptr + ln[:, :, None] + g[None, None, :] * stride_g, grad,
                      mask=ln_ok[:, :, None] & d_ok[None, None, :], sem="relaxed")


@triton.jit
def _sweep2_inputs(U, Delta, DeltaBias, B, C, DOut, Z, HChunk, k, L, offs_c, offs_d, d_ok,
                   offs_n, n_ok, stride_ud, stride_ul, stride_dd, stride_dl, stride_bg,
                   stride_bl, stride_bn, stride_cg, stride_cl, stride_cn, stride_od, stride_ol,
                   stride_zd, stride_zl, CPG: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """Chunk k's inputs for sweep 2, loaded a chunk ahead: `_chunk_inputs`, dy as loaded,
    and the chunk's start state. k = -1 (before the first chunk) asks for the chunk at L,
    which loads nothing, and reads chunk 0's state again (unused)."""
    start = tl.where(k >= 0, k * BLOCK_L, L)
    u, pre, dt, b_raw, c_raw, zz = _chunk_inputs(
        U, Delta, DeltaBias, B, C, Z, start, L, offs_c, offs_d, d_ok, offs_n, n_ok,
        stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
        stride_cg, stride_cl, stride_cn, stride_zd, stride_zl, CPG, BLOCK_D)
    offs_l = start + offs_c
    dy = _load_ld_raw(DOut, offs_l, offs_l < L, offs_d, d_ok, stride_ol, stride_od)
    h_start = tl.load(HChunk + tl.maximum(k, 0) * N_PAD, mask=d_ok[None, :], other=0.0)
    return u, pre, dt, b_raw, c_raw, dy, zz, h_start


@triton.jit
def _selective_scan_bwd(
    DOut, DHLast, U, Delta, A, B, C, Dskip, Z, DeltaBias, H0, HChunk,
    DU, DDelta, DZ, DA, DB, DC_, DD, DDeltaBias, DH0,
    stride_ob, stride_od, stride_ol,
    stride_ub, stride_ud, stride_ul,
    stride_db, stride_dd, stride_dl,
    stride_ad, stride_an,
    stride_bb, stride_bg, stride_bl, stride_bn,
    stride_cb, stride_cg, stride_cl, stride_cn,
    stride_zb, stride_zd, stride_zl,
    stride_hb, stride_hd, stride_hn,
    DC, L, L_BUCKET, N_CHUNKS, G, CPG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PREFETCH: tl.constexpr,
    POLY_EVERY: tl.constexpr = 0,
):
    """One program per (channel block, batch). du, ddelta, dz: [Bt, Dc, L], dB, dC:
    [Bt, G, L, N] fp32, dA: [Dc, N] fp32, dD, ddelta_bias: [Dc] fp32, dh0: [Bt, Dc, N]
    fp32, HChunk: [Bt, Dc, N_CHUNKS, N_PAD] fp32 scratch, all contiguous."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < DC
    offs_n = tl.arange(0, N_PAD)
    n_ok = offs_n < D_STATE
    offs_c = tl.arange(0, BLOCK_L)
    nd_ok = n_ok[:, None] & d_ok[None, :]
    nd = offs_n[:, None] + offs_d[None, :] * D_STATE  # into [Dc, N] contiguous

    a_raw = tl.load(A + offs_n[:, None] * stride_an + offs_d[None, :] * stride_ad,
                    mask=nd_ok, other=0.0).to(tl.float32)  # [N, BLOCK_D]
    a_log2 = a_raw * LOG2E
    if HAS_D:
        d_skip = tl.load(Dskip + offs_d, mask=d_ok, other=0.0).to(tl.float32)

    U += b * stride_ub
    Delta += b * stride_db
    B += b * stride_bb
    C += b * stride_cb
    Z += b * stride_zb
    DOut += b * stride_ob
    # [N, BLOCK_D] pointers to this program's chunk states; chunk k at + k * N_PAD.
    HChunk += (b * DC + offs_d[None, :].to(tl.int64)) * N_CHUNKS * N_PAD + offs_n[:, None]
    DU += b * DC * L
    DDelta += b * DC * L
    DZ += b * DC * L
    DB += b * G * L * D_STATE
    DC_ += b * G * L * D_STATE

    # ---- sweep 1: the state entering every chunk --------------------------------------
    if HAS_H0:
        h = tl.load(H0 + b * stride_hb + offs_n[:, None] * stride_hn
                    + offs_d[None, :] * stride_hd, mask=nd_ok, other=0.0).to(tl.float32)
    else:
        h = tl.full([N_PAD, BLOCK_D], 0.0, dtype=tl.float32)
    # As in the forward, chunk k + 1's inputs are loaded while chunk k is scanned, and u
    # and B are carried as loaded (sm_90 SASS at (8, 8, 1): 11.8 -> 9.3 instructions per
    # state element); C and z, unused here, are not loaded (their values are dead).
    u_n, _pre, dt_n, b_n, _c, _z = _chunk_inputs(
        U, Delta, DeltaBias, B, C, Z, 0, L, offs_c, offs_d, d_ok, offs_n, n_ok,
        stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
        stride_cg, stride_cl, stride_cn, stride_zd, stride_zl, CPG, BLOCK_D)
    for k in range(0, N_CHUNKS):
        tl.store(HChunk + k * N_PAD, h, mask=d_ok[None, :])
        offs_l = k * BLOCK_L + offs_c
        l_ok = offs_l < L
        if PREFETCH > 0:  # as in the forward: latency, not bandwidth, bounds this loop
            ahead = (k + PREFETCH) * BLOCK_L
            _prefetch_ld(U, offs_d, d_ok, ahead, L, stride_ud, stride_ul)
            _prefetch_ld(Delta, offs_d, d_ok, ahead, L, stride_dd, stride_dl)
            _prefetch_bc(B, offs_c, ahead, L, stride_bg, stride_bl, CPG, BLOCK_D)
        u_raw, dt, b_raw = u_n, dt_n, b_n
        u_n, _pre, dt_n, b_n, _c, _z = _chunk_inputs(
            U, Delta, DeltaBias, B, C, Z, (k + 1) * BLOCK_L, L, offs_c, offs_d, d_ok, offs_n,
            n_ok, stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
            stride_cg, stride_cl, stride_cn, stride_zd, stride_zl, CPG, BLOCK_D)
        u = _to_f32(u_raw)
        b_tile = _bc_tile(b_raw, CPG, BLOCK_D)
        decay = _decay(dt[:, None, :] * a_log2[None, :, :], offs_c, POLY_EVERY)
        x = (dt * u)[:, None, :] * b_tile
        x = tl.where(offs_c[:, None, None] == 0, x + decay * h[None, :, :], x)
        _, hs = tl.associative_scan((decay, x), 0, _combine)
        h = _step(hs, offs_c, BLOCK_L - 1)

    # ---- sweep 2: chunks from the end, adjoint carried as a_start · g_start -----------
    carry = tl.load(DHLast + b * DC * D_STATE + nd, mask=nd_ok, other=0.0)
    da_acc = tl.full([N_PAD, BLOCK_D], 0.0, dtype=tl.float32)
    # dD and ddelta_bias sum [BLOCK_L, BLOCK_D] tiles, reduced over L once at the end.
    dd_acc = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
    ddb_acc = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
    # Chunk k - 1's inputs are loaded while chunk k is worked on (as in sweep 1; sm_90
    # SASS at (8, 8, 1): 47.2 -> 44.5 instructions per state element).
    u_n, pre_n, dt_n, b_n, c_n, dy_n, z_n, h_start_n = _sweep2_inputs(
        U, Delta, DeltaBias, B, C, DOut, Z, HChunk, N_CHUNKS - 1, L, offs_c, offs_d, d_ok, offs_n,
        n_ok, stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
        stride_cg, stride_cl, stride_cn, stride_od, stride_ol, stride_zd, stride_zl, CPG,
        BLOCK_D, BLOCK_L)
    for kk in range(0, N_CHUNKS):
        k = N_CHUNKS - 1 - kk
        offs_l = k * BLOCK_L + offs_c
        l_ok = offs_l < L
        if PREFETCH > 0:  # chunks before this one; k - PREFETCH < 0 asks for nothing
            behind = tl.where(k >= PREFETCH, (k - PREFETCH) * BLOCK_L, L)
            _prefetch_ld(U, offs_d, d_ok, behind, L, stride_ud, stride_ul)
            _prefetch_ld(Delta, offs_d, d_ok, behind, L, stride_dd, stride_dl)
            _prefetch_ld(DOut, offs_d, d_ok, behind, L, stride_od, stride_ol)
            if HAS_Z:
                _prefetch_ld(Z, offs_d, d_ok, behind, L, stride_zd, stride_zl)
            _prefetch_bc(B, offs_c, behind, L, stride_bg, stride_bl, CPG, BLOCK_D)
            _prefetch_bc(C, offs_c, behind, L, stride_cg, stride_cl, CPG, BLOCK_D)
        ok = l_ok[:, None] & d_ok[None, :]
        ld = offs_l[:, None] + offs_d[None, :] * L  # into [Dc, L] contiguous
        u_raw, pre, dt, b_raw, c_raw, dy_raw, z_raw, h_start = (
            u_n, pre_n, dt_n, b_n, c_n, dy_n, z_n, h_start_n)
        u_n, pre_n, dt_n, b_n, c_n, dy_n, z_n, h_start_n = _sweep2_inputs(
            U, Delta, DeltaBias, B, C, DOut, Z, HChunk, k - 1, L, offs_c, offs_d, d_ok, offs_n,
            n_ok, stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
            stride_cg, stride_cl, stride_cn, stride_od, stride_ol, stride_zd, stride_zl, CPG,
            BLOCK_D, BLOCK_L)
        u = _to_f32(u_raw)
        b_tile = _bc_tile(b_raw, CPG, BLOCK_D)
        c_tile = _bc_tile(c_raw, CPG, BLOCK_D)
        dy = _to_f32(dy_raw)

        # Recompute the chunk's states from its start state (folded into the first step).
        decay = _decay(dt[:, None, :] * a_log2[None, :, :], offs_c, POLY_EVERY)
        x = (dt * u)[:, None, :] * b_tile
        _, hs = tl.associative_scan(
            (decay, tl.where(offs_c[:, None, None] == 0, x + decay * h_start[None, :, :], x)),
            0, _combine)

        if HAS_Z:
            zz = _to_f32(z_raw)
            y = _sum_state(hs * c_tile)
            if HAS_D:
                y += d_skip[None, :] * u
            sig = _sigmoid(zz)
            tl.store(DZ + ld, (dy * y * sig * (1.0 + zz * (1.0 - sig))).to(
                DZ.dtype.element_ty), mask=ok)
            dy = dy * zz * sig
        if HAS_D:
            du = dy * d_skip[None, :]
            dd_acc += dy * u
        else:
            du = tl.full([BLOCK_L, BLOCK_D], 0.0, dtype=tl.float32)
        _add_bc_grad(DC_, dy[:, None, :] * hs, offs_d, d_ok, offs_n, n_ok, offs_l, l_ok,
                     L * D_STATE, CPG, BLOCK_D)

        # g_t = dy_t C_t + a_{t+1} g_{t+1}; the chunk's last step adds the carry
        # a_{end+1} g_{end+1} from the chunk after it.
        dyc = dy[:, None, :] * c_tile
        dyc = tl.where(offs_c[:, None, None] == BLOCK_L - 1, dyc + carry[None, :, :], dyc)
        g = _adjoint_scan(decay, dyc, offs_c, BLOCK_L)

        _add_bc_grad(DB, g * (dt * u)[:, None, :], offs_d, d_ok, offs_n, n_ok, offs_l, l_ok,
                     L * D_STATE, CPG, BLOCK_D)
        gb = _sum_state(g * b_tile)
        # g_t · a_t · h_{t-1}, with a_t · h_{t-1} = h_t - x_t except at the chunk's first
        # step, where it is the exact product: from h_start = 0 (no h0, L = 1) dA is 0,
        # not the rounding of h_t - x_t under FMA contraction (seen on H100: 2e-8 where the
        # float64 loop has 0).
        h_carried = tl.where(offs_c[:, None, None] == 0, decay * h_start[None, :, :], hs - x)
        g_prev = g * h_carried
        ddt = u * gb + _sum_state(g_prev * a_raw[None, :, :])
        da_acc += _sum(g_prev * dt[:, None, :], 0)
        du += dt * gb
        if DELTA_SOFTPLUS:
            ddt = ddt * tl.where(pre > 20.0, 1.0, _sigmoid(pre))
        ddt = tl.where(ok, ddt, 0.0)
        ddb_acc += ddt
        tl.store(DU + ld, du.to(DU.dtype.element_ty), mask=ok)
        tl.store(DDelta + ld, ddt.to(DDelta.dtype.element_ty), mask=ok)
        carry = _step(decay * g, offs_c, 0)

    tl.atomic_add(DA + nd, da_acc, mask=nd_ok, sem="relaxed")
    if HAS_H0:
        tl.store(DH0 + b * DC * D_STATE + nd, carry, mask=nd_ok)
    if HAS_D:
        tl.atomic_add(DD + offs_d, _sum(dd_acc, 0), mask=d_ok, sem="relaxed")
    if HAS_DELTA_BIAS:
        tl.atomic_add(DDeltaBias + offs_d, _sum(ddb_acc, 0), mask=d_ok,
                      sem="relaxed")


${tuner}


def _launch(config, dout, dh_last, u, delta, A, B, C, D, z, delta_bias, h0, grads, h_chunk):
    """One launch per slice of at most MAX_GRID_Y batch rows; grads = (du, ddelta, dz,
    da, db, dc, dd, ddb, dh0) as allocated by backward()."""
    bd, bl, warps = config
    batch, channels, length = u.shape
    groups = B.shape[1]
    du, ddelta, dz, da, db, dc, dd, ddb, dh0 = grads
    z_ = z if z is not None else u
    h0_ = h0 if h0 is not None else dh_last
    strides = (*dout.stride(), *u.stride(), *delta.stride(), *A.stride(), *B.stride(),
               *C.stride(), *z_.stride(), *h0_.stride())
    sizes = (channels, length, 1 << (length - 1).bit_length(), h_chunk.shape[2], groups,
             channels // groups)
    for lo in range(0, batch, MAX_GRID_Y):
        hi = min(lo + MAX_GRID_Y, batch)
        sl = slice(lo, hi)
        if lo == 0 and hi == batch:  # the usual case: no per-slice views to make
            sliced = (dout, dh_last, u, delta, B, C, z_, h0_, h_chunk, du, ddelta, dz, db,
                      dc, dh0)
        else:
            sliced = tuple(t[sl] for t in (dout, dh_last, u, delta, B, C, z_, h0_, h_chunk,
                                           du, ddelta, dz, db, dc, dh0))
        (dout_, dh_last_, u_, delta_, B_, C_, z__, h0__, h_chunk_, du_, ddelta_, dz_, db_,
         dc_, dh0_) = sliced
        launch(_selective_scan_bwd, (_cdiv(channels, bd), hi - lo),
               dout_, dh_last_, u_, delta_, A, B_, C_, D if D is not None else A, z__,
               delta_bias if delta_bias is not None else A, h0__, h_chunk_,
               du_, ddelta_, dz_, da, db_, dc_, dd, ddb, dh0_, *strides, *sizes,
               BLOCK_D=bd, BLOCK_L=bl, PREFETCH=PREFETCH, POLY_EVERY=POLY_EVERY,
               num_warps=warps)


def backward(dout, dh_last, u, delta, A, B, C, D, z, delta_bias, h0, dtypes, config=None):
    """Launch; returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in `dtypes`
    (one per input; absent inputs get empty [0] tensors). L >= 1. config: (BLOCK_D,
    BLOCK_L, num_warps), else chosen by timing once per (Dc, L bucket, channels per
    group) (`tuned_config`; the trials' atomic adds are zeroed after them)."""
    batch, channels, length = u.shape
    groups = B.shape[1]
    cpg = channels // groups
    dev = u.device
    f32 = torch.float32
    du = torch.empty(u.shape, dtype=dtypes[0], device=dev)
    ddelta = torch.empty(u.shape, dtype=dtypes[1], device=dev)
    dz = torch.empty(u.shape, dtype=dtypes[6], device=dev) if z is not None else du
    da = torch.zeros(A.shape, dtype=f32, device=dev)
    # One channel per group stores dB/dC directly; every other case adds into zeros.
    make = torch.empty if cpg == 1 else torch.zeros
    db = make((batch, groups, length, D_STATE), dtype=f32, device=dev)
    dc = make((batch, groups, length, D_STATE), dtype=f32, device=dev)
    dd = torch.zeros(channels, dtype=f32, device=dev)
    ddb = torch.zeros(channels, dtype=f32, device=dev)
    dh0 = torch.empty((batch, channels, D_STATE), dtype=f32, device=dev)
    if dh_last is None:
        dh_last = torch.zeros((batch, channels, D_STATE), dtype=f32, device=dev)
    dh_last = dh_last.to(f32).contiguous()
    grads = (du, ddelta, dz, da, db, dc, dd, ddb, dh0)
    args = (dout, dh_last, u, delta, A, B, C, D, z, delta_bias, h0, grads)

    def chunks(config):  # the chunk states' scratch, sized for config's BLOCK_L
        n_chunks = _cdiv(length, config[1])
        return torch.empty((batch, channels, n_chunks, N_PAD), dtype=f32, device=dev)

    def reset():  # what the trials added atomically
        for t in (da, dd, ddb) if cpg == 1 else (da, db, dc, dd, ddb):
            t.zero_()

    if config is None:
        big = batch * channels * length >= TUNE_MIN_STEPS
        key = (dev, channels, 1 << (length - 1).bit_length(), cpg)
        config = tuned_config("backward", TUNE_CONFIGS if big else (), DEFAULT_CONFIG, key,
                              lambda c: _launch(c, *args, chunks(c)), reset)
    _launch(config, *args, chunks(config))

    def empty():  # a fresh placeholder each: outputs of a custom op may not alias
        return u.new_empty((0,))

    return (
        du,
        ddelta,
        da.to(dtypes[2]),
        db.to(dtypes[3]),
        dc.to(dtypes[4]),
        dd.to(dtypes[5]) if D is not None else empty(),
        dz if z is not None else empty(),
        ddb.to(dtypes[7]) if delta_bias is not None else empty(),
        dh0.to(dtypes[8]) if h0 is not None else empty(),
    )
''')


def render_backward(spec: ScanSpec, *, interpret: bool = False,
                    profile: DeviceProfile | None = None) -> str:
    """Python source of the selective-scan backward module for `spec`.

    interpret=True renders fixed small tiles and no autotuner (Triton's interpreter).
    """
    return render_selective(_BACKWARD_TEMPLATE, __name__, LAUNCH_IMPORTS, spec,
                            interpret, profile, default_backward_config, backward_configs)
