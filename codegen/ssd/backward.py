"""Render the chunked SSD backward for an SSDSpec.

`render_backward(spec)` returns a module with the forward kernel (forward.py, for the
recompute) and a launcher `backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, h0)` ->
[dx, ddt, dA, dB, dC, dD, ddt_bias, dh0] (None for an absent input).

Two launches and a few small reductions:

1. The forward kernel again, storing the state S_in entering every chunk
   ([Bt, chunks, H, P, N] fp32) instead of y: states are recomputed, not saved, so
   inference pays nothing for training.
2. One program per (head_dim block, batch·head) walks the chunks backwards carrying
   dS = ∂loss/∂S_out [BLOCK_P, N] in fp32 (dh_last at the end). Per chunk, with
   M = (C Bᵀ) ⊙ exp(cs_t - cs_s)[s ≤ t] and w_s = exp(cs_Q - cs_s)·dt_s:

     dx̄    = Mᵀ dy + exp(cs_Q - cs_s) · B dSᵀ             dx = dt · dx̄ + D · dy
     W     = (dy xᵀ) ⊙ exp(cs_t - cs_s)[s ≤ t] ⊙ dt_s
     dC    = W B + exp(cs_t) · dy S_in                   dB = Wᵀ C + w · x dS
     ∂cs_t = Σ_s V[t,s] - Σ_s V[s,t] + exp(cs_t) C_t·(dy S_in)_t - w_t B_t·(x dS)_t,
             V = W ⊙ C Bᵀ;  ∂cs_Q += Σ_t w_t B_t·(x dS)_t + exp(cs_Q) Σ dS ⊙ S_in
     ∂(dt·A)_r = Σ_{t ≥ r} ∂cs_t                        (a reverse cumsum)
     dS   ← exp(cs_Q) · dS + (exp(cs) ⊙ dy)ᵀ C

   dt's own factor gives ∂dt_s = Σ_p x_s · dx̄_s. dB, dC, ∂dt, ∂(dt·A) are written per
   (head_dim block, head) in fp32 and summed by torch over the blocks and the heads
   of a group; dA, dD, ddt_bias and the softplus derivative are reductions of [Bt, L, H]
   tensors, done in torch.

The per-head dB, dC partials cost 2·2·Bt·L·H·N·4 bytes (written and read back): at
H / G = 64 heads per group they are the largest HBM term of the backward
(tiles.ssd_step_bytes). With `spec.bc_atomic` (config.ssd_bc_atomic) the kernel instead
adds each program's dB, dC tiles into fp32 [Bt, L, G, N] buffers with relaxed atomic
adds: HBM sees 2·2·Bt·L·G·N·4 zeroed, accumulated in L2 and read once (H / G times less),
at the price of H / G · n_p atomic adds per element and a summation order that varies
from run to run. Which is faster is for the GPU to say (scripts/gpu_ssd.py times both).

With `spec.backward == "chunked"` (config.ssd_backward) step 2 is split so that only an
elementwise recurrence is sequential (docs/kernels.md, the SSD section):

  (a) `_ssd_bwd_state_grad`, per (head_dim block, batch·head, chunk):
      G_c = (exp(cs) ⊙ dy)ᵀ C [P, N] fp32 into ds, and cs_Q of the chunk;
  (b) `_ssd_bwd_state_pass`, per (P·N / PASS_BLOCK, batch·head), chunks backwards from
      dS = dh_last: ds[c] ← dS (∂loss/∂S_out of chunk c), dS ← exp(cs_Q,c)·dS + G_c, in
      place; dh0 = the last dS;
  (c) `_ssd_bwd_chunk`, per (head_dim block, batch·head, chunk): the loop body above
      (`_chunk_backward`, shared with the sequential kernel) with S_in and dS read from
      HBM; D's gradient per chunk. The reductions after are the same.
"""

from __future__ import annotations

import string

from ioaware.codegen.ssd.spec import SSDSpec
from ioaware.hardware import DeviceProfile

from ..render import TORCH_TRITON_IMPORTS, format_configs, module_preamble
from .forward import CHUNK_HELPERS, FORWARD_KERNEL, spec_constants
from .tiles import choose_block_p, padded

BACKWARD_KERNEL = '''
BWD_BLOCK_P = $bwd_block_p
BWD_CONFIGS = $bwd_configs  # (num_warps, num_stages), autotuned on a GPU
BC_ATOMIC = $bc_atomic
SPLIT = "$split"  # "sequential" or "chunked": which backward `backward` launches
PASS_BLOCK = 1024  # state elements per program of the chunked split's sequential pass


@triton.jit
def _chunk_backward(
    c, dS, A, D, pid_p, batch, b, h, g, L, H, P, N, heads_per_group, n_chunks,
    x_base, dy_base, dx_base, dt_base, b_base, c_base, st_ptr, dtb_ptr,
    dB_ptr, dC_ptr, ddt_ptr, ddA_ptr,
    offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask, causal, last,
    sx_l, sx_p, sdx_l, sdx_p, sdy_l, sdy_p, sdt_l, sb_l, sb_n, sc_l, sc_n,
    CHUNK: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr,
    DT_MAX: tl.constexpr, BC_ATOMIC: tl.constexpr,
):
    \"\"\"Chunk c's gradients given dS = ∂loss/∂S_out of the chunk: stores dx and the
    ddt, ddA, dB, dC partials; returns (Σ_t dy ⊙ x [BLOCK_P] (D's gradient, 0 without
    D), G = (exp(cs) ⊙ dy)ᵀ C [BLOCK_P, BLOCK_N], cs_Q): dS entering the chunk is
    exp(cs_Q) · dS + G.\"\"\"
    t = c * CHUNK + offs_t
    t_mask = t < L
    tp_mask = t_mask[:, None] & p_mask[None, :]
    tn_mask = t_mask[:, None] & n_mask[None, :]
    state_pn = offs_p[:, None] * N + offs_n[None, :]
    dt = _chunk_dt(dt_base, dtb_ptr, h, t, t_mask, sdt_l, HAS_DT_BIAS, DT_SOFTPLUS,
                   HAS_DT_LIMIT, DT_MIN, DT_MAX)
    cs = tl.associative_scan(dt * A, 0, _add)
    total = tl.reduce(dt * A, 0, _add)
    x = tl.load(x_base + t[:, None] * sx_l + offs_p[None, :] * sx_p, mask=tp_mask,
                other=0.0)
    dy = tl.load(dy_base + t[:, None] * sdy_l + offs_p[None, :] * sdy_p, mask=tp_mask,
                 other=0.0)
    xo = x.to($op_dtype)
    dyo = dy.to($op_dtype)
    Bc = tl.load(b_base + t[:, None] * sb_l + offs_n[None, :] * sb_n, mask=tn_mask,
                 other=0.0).to($op_dtype)
    Cc = tl.load(c_base + t[:, None] * sc_l + offs_n[None, :] * sc_n, mask=tn_mask,
                 other=0.0).to($op_dtype)
    s_in = tl.load(st_ptr + ((b * n_chunks + c) * H + h) * P * N + state_pn,
                   mask=pn_mask, other=0.0)
    scores = _dot(Cc, tl.trans(Bc))  # C_t · B_s
    decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))
    m = scores * decay
    to_end = tl.exp(total - cs)
    dS_o = dS.to($op_dtype)
    # dx
    dxbar = _dot(tl.trans(m).to($op_dtype), dyo)
    dxbar += to_end[:, None] * _dot(Bc, tl.trans(dS_o))
    dx = dxbar * dt[:, None]
    dD = tl.full((offs_p.shape[0],), 0.0, tl.float32)
    if HAS_D:
        dx += D * dy.to(tl.float32)
        dD = tl.reduce(dy.to(tl.float32) * x.to(tl.float32), 0, _add)
    tl.store(dx_base + t[:, None] * sdx_l + offs_p[None, :] * sdx_p,
             dx.to(dx_base.dtype.element_ty), mask=tp_mask)
    part = ((pid_p * batch + b) * L + t) * H + h  # [Q] rows of the partials
    ddt = tl.reduce(x.to(tl.float32) * dxbar, 1, _add)
    tl.store(ddt_ptr + part, ddt, mask=t_mask)
    # dB, dC
    w_mat = tl.where(causal, _dot(dyo, tl.trans(xo)) * decay * dt[None, :], 0.0)
    y_in = _dot(dyo, s_in.to($op_dtype))  # dy S_in
    x_ds = _dot(xo, dS_o)  # x dS
    w = to_end * dt
    dC = _dot(w_mat.to($op_dtype), Bc)
    dC += tl.exp(cs)[:, None] * y_in
    dB = _dot(tl.trans(w_mat).to($op_dtype), Cc)
    dB += w[:, None] * x_ds
    if BC_ATOMIC:  # summed over the group's heads and head_dim blocks here
        grp = (b * L + t) * (H // heads_per_group) + g  # [Q] rows of [Bt, L, G, N]
        tn_offs = grp[:, None] * N + offs_n[None, :]
        tl.atomic_add(dB_ptr + tn_offs, dB, mask=tn_mask, sem="relaxed")
        tl.atomic_add(dC_ptr + tn_offs, dC, mask=tn_mask, sem="relaxed")
    else:  # per (head_dim block, head): summed by torch after the kernel
        tn_offs = part[:, None] * N + offs_n[None, :]
        tl.store(dB_ptr + tn_offs, dB, mask=tn_mask)
        tl.store(dC_ptr + tn_offs, dC, mask=tn_mask)
    # the decay's cumsum: intra-chunk, output from S_in, the chunk's state, the carry
    v = w_mat * scores
    dcs = tl.reduce(v, 1, _add) - tl.reduce(v, 0, _add)
    dcs += tl.exp(cs) * tl.reduce(y_in * Cc.to(tl.float32), 1, _add)
    to_state = w * tl.reduce(x_ds * Bc.to(tl.float32), 1, _add)
    dcs -= to_state
    carry = tl.reduce(tl.reduce(dS * s_in, 1, _add), 0, _add)
    dtotal = tl.reduce(to_state, 0, _add) + tl.exp(total) * carry
    dcs += tl.where(last, dtotal, 0.0)
    # ∂(dt·A)_r = Σ_{t ≥ r} ∂cs_t
    dda = tl.reduce(dcs, 0, _add) - tl.associative_scan(dcs, 0, _add) + dcs
    tl.store(ddA_ptr + part, dda, mask=t_mask)
    dy_in = (dy.to(tl.float32) * tl.exp(cs)[:, None]).to($op_dtype)
    return dD, _dot(tl.trans(dy_in), Cc), total


@triton.jit
def _ssd_bwd(
    dy_ptr, dhl_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, st_ptr,
    dx_ptr, dB_ptr, dC_ptr, ddt_ptr, ddA_ptr, dD_ptr, dh0_ptr,
    batch, L, H, P, N, heads_per_group,
    sx_b, sx_l, sx_h, sx_p, sdx_b, sdx_l, sdx_h, sdx_p, sdy_b, sdy_l, sdy_h, sdy_p, sdt_b, sdt_l, sdt_h,
    sb_b, sb_l, sb_g, sb_n, sc_b, sc_l, sc_g, sc_n, sg_b, sg_h, sg_p, sg_n,
    BLOCK_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_DHL: tl.constexpr, HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr,
    DT_MAX: tl.constexpr, BC_ATOMIC: tl.constexpr,
):
    \"\"\"The sequential backward: one program per (head_dim block, batch·head) walks
    the chunks backwards, carrying dS.\"\"\"
    pid_p, pid_bh, b, h, g, offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask = _program(
        H, P, N, heads_per_group, BLOCK_P, CHUNK, BLOCK_N)
    A = tl.load(A_ptr + h).to(tl.float32)
    x_base = x_ptr + b * sx_b + h * sx_h
    dy_base = dy_ptr + b * sdy_b + h * sdy_h
    dx_base = dx_ptr + b * sdx_b + h * sdx_h
    dt_base = dt_ptr + b * sdt_b + h * sdt_h
    b_base = B_ptr + b * sb_b + g * sb_g
    c_base = C_ptr + b * sc_b + g * sc_g
    if HAS_DHL:
        dS = tl.load(dhl_ptr + b * sg_b + h * sg_h + offs_p[:, None] * sg_p
                     + offs_n[None, :] * sg_n, mask=pn_mask, other=0.0).to(tl.float32)
    else:
        dS = tl.full((BLOCK_P, BLOCK_N), 0.0, tl.float32)
    D = 0.0
    if HAS_D:
        D = tl.load(D_ptr + h).to(tl.float32)
    dD_acc = tl.full((BLOCK_P,), 0.0, tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    last = offs_t == CHUNK - 1
    n_chunks = (L + CHUNK - 1) // CHUNK
    for i in range(0, n_chunks):
        dD, g_c, total = _chunk_backward(
            n_chunks - 1 - i, dS, A, D, pid_p, batch, b, h, g, L, H, P, N,
            heads_per_group, n_chunks, x_base, dy_base, dx_base, dt_base, b_base, c_base,
            st_ptr, dtb_ptr, dB_ptr, dC_ptr, ddt_ptr, ddA_ptr,
            offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask, causal, last,
            sx_l, sx_p, sdx_l, sdx_p, sdy_l, sdy_p, sdt_l, sb_l, sb_n, sc_l, sc_n,
            CHUNK, HAS_D, HAS_DT_BIAS, DT_SOFTPLUS, HAS_DT_LIMIT, DT_MIN, DT_MAX, BC_ATOMIC)
        dD_acc += dD
        dS = tl.exp(total) * dS + g_c
    tl.store(dh0_ptr + b * H * P * N + h * P * N + offs_p[:, None] * N + offs_n[None, :],
             dS, mask=pn_mask)
    if HAS_D:
        tl.store(dD_ptr + pid_p * batch * H + pid_bh, tl.reduce(dD_acc, 0, _add))


@triton.jit
def _ssd_bwd_state_grad(
    dy_ptr, dt_ptr, A_ptr, C_ptr, dtb_ptr, ds_ptr, tot_ptr,
    L, H, P, N, heads_per_group,
    sdy_b, sdy_l, sdy_h, sdy_p, sdt_b, sdt_l, sdt_h, sc_b, sc_l, sc_g, sc_n,
    BLOCK_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_DT_LIMIT: tl.constexpr,
    DT_MIN: tl.constexpr, DT_MAX: tl.constexpr,
):
    \"\"\"Chunked split (a), per (head_dim block, batch·head, chunk): chunk c's own part of
    the gradient of the state entering it, G_c = (exp(cs) ⊙ dy)ᵀ C [P, N] fp32, into
    ds[b, c, h]; and cs_Q, the chunk's log decay, into tot[b, h, c].\"\"\"
    pid_p, pid_bh, b, h, g, offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask = _program(
        H, P, N, heads_per_group, BLOCK_P, CHUNK, BLOCK_N)
    c = tl.program_id(2)
    n_chunks = (L + CHUNK - 1) // CHUNK
    t = c * CHUNK + offs_t
    t_mask = t < L
    dt = _chunk_dt(dt_ptr + b * sdt_b + h * sdt_h, dtb_ptr, h, t, t_mask, sdt_l,
                   HAS_DT_BIAS, DT_SOFTPLUS, HAS_DT_LIMIT, DT_MIN, DT_MAX)
    A = tl.load(A_ptr + h).to(tl.float32)
    cs = tl.associative_scan(dt * A, 0, _add)
    dy = tl.load(dy_ptr + b * sdy_b + h * sdy_h + t[:, None] * sdy_l + offs_p[None, :] * sdy_p,
                 mask=t_mask[:, None] & p_mask[None, :], other=0.0)
    Cc = tl.load(C_ptr + b * sc_b + g * sc_g + t[:, None] * sc_l + offs_n[None, :] * sc_n,
                 mask=t_mask[:, None] & n_mask[None, :], other=0.0).to($op_dtype)
    dy_in = (dy.to(tl.float32) * tl.exp(cs)[:, None]).to($op_dtype)
    g_c = _dot(tl.trans(dy_in), Cc)
    tl.store(ds_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
             + offs_n[None, :], g_c, mask=pn_mask)
    if pid_p == 0:
        tl.store(tot_ptr + pid_bh * n_chunks + c, tl.reduce(dt * A, 0, _add))


@triton.jit
def _ssd_bwd_state_pass(
    ds_ptr, tot_ptr, dhl_ptr, dh0_ptr, H, P, N, n_chunks, sg_b, sg_h, sg_p, sg_n,
    BLOCK: tl.constexpr, HAS_DHL: tl.constexpr,
):
    \"\"\"Chunked split (b), per (block of the P·N state elements, batch·head): the only
    sequential part, elementwise. Walking the chunks backwards from dS = dh_last,
    replaces ds[b, c, h] (holding G_c) by dS_c = ∂loss/∂S_out of chunk c, then
    dS ← exp(cs_Q,c) · dS + G_c; dh0 = the dS entering chunk 0.\"\"\"
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P * N
    if HAS_DHL:
        dS = tl.load(dhl_ptr + b * sg_b + h * sg_h + (offs // N) * sg_p + (offs % N) * sg_n,
                     mask=mask, other=0.0).to(tl.float32)
    else:
        dS = tl.full((BLOCK,), 0.0, tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        at = ds_ptr + ((b * n_chunks + c) * H + h) * P * N + offs
        g_c = tl.load(at, mask=mask, other=0.0)
        total = tl.load(tot_ptr + pid_bh * n_chunks + c)
        tl.store(at, dS, mask=mask)
        dS = tl.exp(total) * dS + g_c
    tl.store(dh0_ptr + pid_bh * P * N + offs, dS, mask=mask)


@triton.jit
def _ssd_bwd_chunk(
    dy_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, st_ptr, ds_ptr,
    dx_ptr, dB_ptr, dC_ptr, ddt_ptr, ddA_ptr, dD_ptr,
    batch, L, H, P, N, heads_per_group,
    sx_b, sx_l, sx_h, sx_p, sdx_b, sdx_l, sdx_h, sdx_p, sdy_b, sdy_l, sdy_h, sdy_p, sdt_b, sdt_l, sdt_h,
    sb_b, sb_l, sb_g, sb_n, sc_b, sc_l, sc_g, sc_n,
    BLOCK_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr, DT_MAX: tl.constexpr,
    BC_ATOMIC: tl.constexpr,
):
    \"\"\"Chunked split (c), per (head_dim block, batch·head, chunk): the sequential
    kernel's loop body for chunk c, with S_in and dS = ∂loss/∂S_out read from the
    recompute's states and the pass's ds; dD's part per chunk into dD[p, c, b·h].\"\"\"
    pid_p, pid_bh, b, h, g, offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask = _program(
        H, P, N, heads_per_group, BLOCK_P, CHUNK, BLOCK_N)
    c = tl.program_id(2)
    n_chunks = (L + CHUNK - 1) // CHUNK
    A = tl.load(A_ptr + h).to(tl.float32)
    dS = tl.load(ds_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                 + offs_n[None, :], mask=pn_mask, other=0.0)
    D = 0.0
    if HAS_D:
        D = tl.load(D_ptr + h).to(tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    last = offs_t == CHUNK - 1
    dD, g_c, total = _chunk_backward(
        c, dS, A, D, pid_p, batch, b, h, g, L, H, P, N, heads_per_group, n_chunks,
        x_ptr + b * sx_b + h * sx_h, dy_ptr + b * sdy_b + h * sdy_h,
        dx_ptr + b * sdx_b + h * sdx_h, dt_ptr + b * sdt_b + h * sdt_h,
        B_ptr + b * sb_b + g * sb_g, C_ptr + b * sc_b + g * sc_g, st_ptr, dtb_ptr,
        dB_ptr, dC_ptr, ddt_ptr, ddA_ptr,
        offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask, causal, last,
        sx_l, sx_p, sdx_l, sdx_p, sdy_l, sdy_p, sdt_l, sb_l, sb_n, sc_l, sc_n,
        CHUNK, HAS_D, HAS_DT_BIAS, DT_SOFTPLUS, HAS_DT_LIMIT, DT_MIN, DT_MAX, BC_ATOMIC)
    if HAS_D:
        tl.store(dD_ptr + (pid_p * n_chunks + c) * batch * H + pid_bh, tl.reduce(dD, 0, _add))


def _bwd_autotuned(kernel):
    if INTERPRET or not BWD_CONFIGS:
        return kernel
    configs = [triton.Config({}, num_warps=w, num_stages=s) for w, s in BWD_CONFIGS]
    # The autotuner times each config by launching it many times on the first call's own
    # buffers; atomic adds would pile every trial into dB, dC. reset_to_zero zeroes them
    # before each trial and once more before the call's own launch.
    reset = ["dB_ptr", "dC_ptr"] if BC_ATOMIC and "dB_ptr" in kernel.arg_names else None
    return triton.autotune(configs, key=["L", "H", "P", "N"], reset_to_zero=reset)(kernel)


_ssd_bwd_tuned = _bwd_autotuned(_ssd_bwd)
_ssd_bwd_state_grad_tuned = _bwd_autotuned(_ssd_bwd_state_grad)
_ssd_bwd_chunk_tuned = _bwd_autotuned(_ssd_bwd_chunk)
# _ssd_bwd_state_pass is not autotuned: it rewrites ds in place, which a second trial
# launch would read back as its input.


def _partials(batch, length, heads, groups, d_state, n_p, f32):
    \"\"\"dB, dC, ddt, ddA partials: per head_dim block (dB, dC summed over the group's
    heads in place by atomic adds with BC_ATOMIC).\"\"\"
    if BC_ATOMIC:  # accumulated in place by the kernel's atomic adds
        dB_part, dC_part = torch.zeros((2, batch, length, groups, d_state), **f32)
    else:
        dB_part = torch.empty((n_p, batch, length, heads, d_state), **f32)
        dC_part = torch.empty((n_p, batch, length, heads, d_state), **f32)
    ddt_part = torch.empty((n_p, batch, length, heads), **f32)
    ddA_part = torch.empty((n_p, batch, length, heads), **f32)
    return dB_part, dC_part, ddt_part, ddA_part


def backward(dy, dh_last, x, dt, A, B, C, D, dt_bias, h0):
    \"\"\"[dx, ddt, dA, dB, dC, dD, ddt_bias, dh0]: the gradients, None for absent inputs.\"\"\"
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    n_chunks = _cdiv(length, CHUNK)
    f32 = dict(dtype=torch.float32, device=x.device)
    states = torch.empty((batch, n_chunks, heads, head_dim, d_state), **f32)
    h_last = torch.empty((batch, heads, head_dim, d_state), **f32)
    forward(x, dt, A, B, C, D, dt_bias, h0, None, h_last, states)
    n_p = _cdiv(head_dim, BWD_BLOCK_P)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dB_part, dC_part, ddt_part, ddA_part = _partials(batch, length, heads, groups, d_state,
                                                     n_p, f32)
    dh0 = torch.empty((batch, heads, head_dim, d_state), **f32)
    dhl_strides = dh_last.stride() if dh_last is not None else (0, 0, 0, 0)
    flags = dict(BLOCK_P=BWD_BLOCK_P, CHUNK=CHUNK, BLOCK_N=BLOCK_N, HAS_DT_BIAS=HAS_DT_BIAS,
                 DT_SOFTPLUS=DT_SOFTPLUS, HAS_DT_LIMIT=HAS_DT_LIMIT, DT_MIN=DT_MIN,
                 DT_MAX=DT_MAX)
    if SPLIT == "sequential":
        dD_part = torch.empty((n_p, batch, heads), **f32)
        _ssd_bwd_tuned[(n_p, batch * heads)](
            dy, dh_last, x, dt, A, B, C, D, dt_bias, states,
            dx, dB_part, dC_part, ddt_part, ddA_part, dD_part, dh0,
            batch, length, heads, head_dim, d_state, heads // groups,
            *x.stride(), *dx.stride(), *dy.stride(), *dt.stride(), *B.stride(), *C.stride(),
            *dhl_strides, HAS_D=HAS_D, HAS_DHL=dh_last is not None, BC_ATOMIC=BC_ATOMIC,
            **flags)
    else:
        # (a) G_c per chunk, in parallel; (b) the sequential pass turns them into the dS
        # at every chunk boundary, in place; (c) every chunk's gradients, in parallel
        ds = torch.empty((batch, n_chunks, heads, head_dim, d_state), **f32)
        totals = torch.empty((batch, heads, n_chunks), **f32)
        grid = (n_p, batch * heads, n_chunks)
        _ssd_bwd_state_grad_tuned[grid](
            dy, dt, A, C, dt_bias, ds, totals, length, heads, head_dim, d_state,
            heads // groups, *dy.stride(), *dt.stride(), *C.stride(), **flags)
        _ssd_bwd_state_pass[(_cdiv(head_dim * d_state, PASS_BLOCK), batch * heads)](
            ds, totals, dh_last, dh0, heads, head_dim, d_state, n_chunks, *dhl_strides,
            BLOCK=PASS_BLOCK, HAS_DHL=dh_last is not None)
        dD_part = torch.empty((n_p, n_chunks, batch, heads), **f32)
        _ssd_bwd_chunk_tuned[grid](
            dy, x, dt, A, B, C, D, dt_bias, states, ds,
            dx, dB_part, dC_part, ddt_part, ddA_part, dD_part,
            batch, length, heads, head_dim, d_state, heads // groups,
            *x.stride(), *dx.stride(), *dy.stride(), *dt.stride(), *B.stride(), *C.stride(),
            HAS_D=HAS_D, BC_ATOMIC=BC_ATOMIC, **flags)
    if BC_ATOMIC:
        dB, dC = dB_part.to(B.dtype), dC_part.to(C.dtype)
    else:
        per_group = (n_p, batch, length, groups, heads // groups, d_state)
        dB = dB_part.view(per_group).sum((0, 4)).to(B.dtype)
        dC = dC_part.view(per_group).sum((0, 4)).to(C.dtype)
    ddA = ddA_part.sum(0)
    raw = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    dt_v = torch.nn.functional.softplus(raw) if DT_SOFTPLUS else raw
    ddt_v = ddt_part.sum(0) + ddA * A.float()
    if HAS_DT_LIMIT:  # torch.clamp's gradient: 1 inside [min, max], 0 outside
        ddt_v = ddt_v * ((dt_v >= DT_MIN) & (dt_v <= DT_MAX))
        dt_v = torch.clamp(dt_v, DT_MIN, DT_MAX)
    dA = (ddA * dt_v).sum((0, 1)).to(A.dtype)
    if DT_SOFTPLUS:  # d softplus(u)/du = sigmoid(u) below the threshold 20, 1 above
        ddt_v = ddt_v * torch.where(raw <= 20.0, torch.sigmoid(raw), 1.0)
    ddt = ddt_v.to(dt.dtype)
    dD = dD_part.reshape(-1, heads).sum(0).to(D.dtype) if D is not None else None
    ddt_bias = ddt_v.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dh0_out = dh0.to(h0.dtype) if h0 is not None else None
    return [dx, ddt, dA, dB, dC, dD, ddt_bias, dh0_out]
'''


def render_backward(spec: SSDSpec, *, interpret: bool = False,
                    profile: DeviceProfile | None = None) -> str:
    """The backward module's source for `spec`: the forward kernel (the recompute) and
    the backward kernel, tiled for `profile`."""
    values = spec_constants(spec, interpret=interpret, profile=profile)
    values["bwd_block_p"] = str(padded(spec.head_dim) if interpret
                                else choose_block_p(spec.head_dim))
    values["bc_atomic"] = str(spec.bc_atomic)
    values["split"] = spec.backward
    values["bwd_configs"] = format_configs(
        [] if interpret else [(w, s) for w in (4, 8) for s in (1, 2)])
    body = string.Template(CHUNK_HELPERS + FORWARD_KERNEL + BACKWARD_KERNEL).substitute(values)
    return module_preamble("ioaware.codegen.ssd.backward.render_backward", spec,
                           TORCH_TRITON_IMPORTS) + "\n" + body
