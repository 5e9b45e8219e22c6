"""The dK/dV half of the attention backward in Gluon, FlashAttention-3's backward schedule
for sm_90 (Hopper): dense or causal, fp16/bf16, d = dv in {64, 128}. Imported only where
gluon_backward's gate finds the Triton whose Gluon API it is written against (3.6's).

One program owns 2·BLOCK_N kv rows of one (batch, kv head) and runs three partitions
(Shah et al. 2024, FlashAttention-3, §3.1 and Appendix B, Algorithm 3):

    loader     1 warp: TMA loads of both warpgroups' K and V tiles (once), then, for
               every query head of the kv head's GQA group and every query block that
               can see the kv rows, Q_i and dO_i by TMA and the lse_i, delta_i rows by
               cp.async, into a ring STAGES deep; each slot guarded by mbarriers
               (ready: the bytes landed; empty: both consumers are done with it)
    consumer 0 the default partition (4 warps, one warpgroup): kv rows [0, BLOCK_N)
    consumer 1 a worker partition (4 warps): kv rows [BLOCK_N, 2·BLOCK_N)

Each consumer keeps dK_j, dV_j (BLOCK_N × d, fp32) in registers and its K_j, V_j in
shared memory, and per query block i (BLOCK_M rows) runs, in the transposed layout
(kv rows × query rows, so dK and dV come out of the products in kv-row order):

    issue Sᵀ = K_j Q_iᵀ;  issue dPᵀ = V_j dO_iᵀ
    wait Sᵀ;  Pᵀ = exp2(Sᵀ·scale·log2e − lse_i·log2e)      <- exp2 under the dPᵀ wgmma
    issue dV += Pᵀ dO_i   (Pᵀ from registers: the accumulator layout is the A operand's)
    wait dPᵀ; dSᵀ = Pᵀ ⊙ (dPᵀ − delta_i)                     <- dS under the dV wgmma
    issue dK += dSᵀ Q_i;  wait all;  free the slot

The two warpgroups run unsynchronised, so one's exp2 and dS also run under the other's
products. dK is scaled by the softmax scale once, in the epilogue (as `_bwd_dkdv`),
and both tiles leave through shared memory (the K, V tiles' space) by TMA stores.

Ragged ends need no masks: TMA zero-fills Q, dO rows past Nq and cp.async the lse and
delta entries, so a missing query column has Sᵀ = 0, Pᵀ = exp2(0) = 1, dO = 0, dPᵀ = 0
and delta = 0: it adds 0 to dV and dK. K, V rows past Nk give rows of dK, dV that the
TMA store drops. Causal (top-left: key c visible to row r iff c <= r) streams the query blocks from the
program's first kv row on and masks only the blocks up to each warpgroup's diagonal.

Floor (H100 SXM5, 132 SMs, 1.755 GHz: 4,270 dense bf16 FLOP/cycle/SM; MUFU 16
exp2/cycle/SM; shared memory 128 B/cycle/SM), per query block for both warpgroups
(2·BLOCK_N = 128 kv rows against BLOCK_M = 64 query rows), d = 128: 4 products of
2·128·64·128 FLOPs = 8.39 MFLOP = 1965 tensor cycles; 8192 exp2 = 512 MUFU cycles;
shared memory read by the wgmma (K, Q, V, dO for Sᵀ and dPᵀ; dO, Q as B of dV, dK) and
written by TMA: 2·(32 + 32 + 16 + 16) + 32 KB = 224 KB = 1750 cycles. Tensor-bound if
the overlap holds: docs/kernels.md ("The Gluon dK/dV kernel") has the prediction.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

LOG2E: gl.constexpr = gl.constexpr(1.4426950408889634)
LOADER_WARPS: gl.constexpr = gl.constexpr(1)


@gluon.jit
def _opaque(x):
    """x, through an asm statement the optimizer must keep where it stands. The
    warp-specialized lowering runs each worker partition inside a loop; LLVM hoists
    what a partition derives from kernel arguments alone (a sign-extended Nq, Nq·GROUP)
    out of it, into the kernel's prologue, and ptxas keeps such values on the stack
    across the partitions' register reallocation. Derived from this copy, they stay."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _program(H_KV, BLOCK_N: gl.constexpr):
    """(batch, kv head, first kv row) of this program. Each partition computes them from
    the program id: values carried from the kernel's prologue into the partitions stay
    live across their register reallocation, and ptxas keeps those on the stack."""
    pid_bkv = gl.program_id(1)
    b = (pid_bkv // H_KV).to(gl.int64)
    h_kv = (pid_bkv % H_KV).to(gl.int64)
    return b, h_kv, gl.program_id(0) * (2 * BLOCK_N)  # causal: low kv blocks see most rows


@gluon.jit
def _query_range(start_n, N_Q, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """(first row, number of query blocks) the program streams: causal, the rows before
    the program's first kv row see none of it (whole blocks of BLOCK_M, so the blocks
    line up with the forward's and the dQ kernel's)."""
    if CAUSAL:
        m_lo = (start_n // BLOCK_M) * BLOCK_M
    else:
        m_lo = 0
    return m_lo, gl.cdiv(gl.maximum(N_Q - m_lo, 0), BLOCK_M)


@gluon.jit
def _load(Q, K, V, dO, Lse, Delta, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
          stride_kn, stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
          H_KV, GROUP, H_Q, N_Q, N_K, smem, bars, BLOCK_M: gl.constexpr,
          BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
          CAUSAL: gl.constexpr):
    """The loader warp. K_j, V_j (both warpgroups' halves) once, on kv_bar; then per
    query head g of the group and query block i, into slot t % STAGES (t counts the
    blocks over all heads): Q_i, dO_i by TMA (ready's expected bytes) and lse_i, delta_i
    by cp.async (each lane's copies arrive on ready when they land: `noinc`, so ready
    counts 1 + 32 arrivals). A fresh mbarrier passes a wait on parity 1, so the first
    STAGES waits for an empty slot return at once."""
    k_smem, v_smem, q_ring, do_ring, lse_ring, delta_ring = smem
    kv_bar, ready, empty = bars
    b, h_kv, start_n = _program(H_KV, BLOCK_N)
    layout: gl.constexpr = q_ring.type.layout
    # K's own layout: the fused-dQ kernel (gluon_bwd_dq_kernel.py) swizzles K narrower at
    # d = 64, so that half of its columns is a whole swizzle atom; here it is Q's
    k_desc = tma.make_tensor_descriptor(K + b * stride_kb + h_kv * stride_kh, [N_K, HEAD_DIM],
                                        [stride_kn, 1], [BLOCK_N, HEAD_DIM],
                                        k_smem.type.layout)
    v_desc = tma.make_tensor_descriptor(V + b * stride_vb + h_kv * stride_vh, [N_K, HEAD_DIM],
                                        [stride_vn, 1], [BLOCK_N, HEAD_DIM], layout)
    mbarrier.expect(kv_bar, 4 * k_desc.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(k_desc, [start_n + w * BLOCK_N, 0], kv_bar,
                                        k_smem.index(w))
        tma.async_copy_global_to_shared(v_desc, [start_n + w * BLOCK_N, 0], kv_bar,
                                        v_smem.index(w))

    row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [LOADER_WARPS], [0])
    offs = gl.arange(0, BLOCK_M, layout=row_layout)
    n_q = _opaque(N_Q)
    m_lo, n_m = _query_range(start_n, n_q, BLOCK_M, CAUSAL)
    t = 0
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_desc = tma.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh,
                                            [N_Q, HEAD_DIM], [stride_qm, 1],
                                            [BLOCK_M, HEAD_DIM], layout)
        do_desc = tma.make_tensor_descriptor(dO + b * stride_dob + h * stride_doh,
                                             [N_Q, HEAD_DIM], [stride_dom, 1],
                                             [BLOCK_M, HEAD_DIM], layout)
        row0 = (b * H_Q + h) * n_q  # this query head's lse and delta rows
        for i in range(n_m):
            slot = t % STAGES
            m = m_lo + i * BLOCK_M
            mbarrier.wait(empty.index(slot), ((t // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(slot), 2 * q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [m, 0], ready.index(slot),
                                            q_ring.index(slot))
            tma.async_copy_global_to_shared(do_desc, [m, 0], ready.index(slot),
                                            do_ring.index(slot))
            rows = m + offs
            async_copy.async_copy_global_to_shared(lse_ring.index(slot), Lse + row0 + rows,
                                                   mask=rows < n_q)
            async_copy.async_copy_global_to_shared(delta_ring.index(slot),
                                                   Delta + row0 + rows, mask=rows < n_q)
            async_copy.mbarrier_arrive(ready.index(slot), increment_count=False)
            t += 1


@gluon.jit
def _probabilities(slot, dv, k_smem, v_smem, q, do, lse_ring, delta_ring, s_zero, n0, m,
                   qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   MASKED: gl.constexpr, s_layout: gl.constexpr, a_layout: gl.constexpr):
    """Sᵀ and dPᵀ issued, Pᵀ, dV += Pᵀ dO issued, dSᵀ = Pᵀ ⊙ (dPᵀ − delta) (fp32) for
    ring slot `slot` (Q_i = q, dO_i = do) against kv rows [n0, n0 + BLOCK_N): the part
    of a query block's step this kernel and the fused-dQ one (gluon_bwd_dq_kernel.py)
    share. Returns (dSᵀ, dV's token, its products still in flight)."""
    st_tok = warpgroup_mma(k_smem, q.permute((1, 0)), s_zero, use_acc=False, is_async=True)
    dpt_tok = warpgroup_mma(v_smem, do.permute((1, 0)), s_zero, use_acc=False,
                            is_async=True)
    col: gl.constexpr = gl.SliceLayout(0, s_layout)
    lse2 = lse_ring.index(slot).load(col) * LOG2E
    st = warpgroup_mma_wait(1, deps=(st_tok,))  # Sᵀ done, dPᵀ runs on
    zt = st * qk_scale - gl.expand_dims(lse2, 0)
    if MASKED:
        kv = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
        rows = m + gl.arange(0, BLOCK_M, layout=col)
        zt = gl.where(gl.expand_dims(kv, 1) <= gl.expand_dims(rows, 0), zt, float("-inf"))
    pt = gl.exp2(zt)
    dv = warpgroup_mma(gl.convert_layout(pt.to(q.dtype), a_layout), do, dv, is_async=True)
    # read here, not with lse: 16 registers fewer across the exp2
    delta = delta_ring.index(slot).load(col)
    dpt = warpgroup_mma_wait(1, deps=(dpt_tok,))  # dPᵀ done, dV runs on
    return pt * (dpt - gl.expand_dims(delta, 0)), dv


@gluon.jit
def _step(t, dk, dv, k_smem, v_smem, q_ring, do_ring, lse_ring, delta_ring, ready, empty,
          s_zero, n0, m, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
          STAGES: gl.constexpr, MASKED: gl.constexpr, s_layout: gl.constexpr,
          a_layout: gl.constexpr):
    """One query block (slot t % STAGES) against this warpgroup's kv rows [n0, n0 +
    BLOCK_N): FA2 Algorithm 2, lines 11-17 transposed, in the order of the module
    docstring. MASKED: the causal diagonal (query rows m .. m + BLOCK_M)."""
    slot = t % STAGES
    mbarrier.wait(ready.index(slot), (t // STAGES) & 1)
    q = q_ring.index(slot)
    dst, dv = _probabilities(slot, dv, k_smem, v_smem, q, do_ring.index(slot), lse_ring,
                             delta_ring, s_zero, n0, m, qk_scale, BLOCK_M, BLOCK_N, MASKED,
                             s_layout, a_layout)
    dk = warpgroup_mma(gl.convert_layout(dst.to(q.dtype), a_layout), q, dk, is_async=True)
    dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))
    mbarrier.arrive(empty.index(slot), count=1)
    return dk, dv


@gluon.jit
def _steps(lo, hi, base, m_lo, dk, dv, k_smem, v_smem, q_ring, do_ring, lse_ring, delta_ring,
           ready, empty, s_zero, n0, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
           STAGES: gl.constexpr, MASKED: gl.constexpr, s_layout: gl.constexpr,
           a_layout: gl.constexpr):
    """Query blocks [lo, hi) of the head whose first block is ring position `base`."""
    for i in range(lo, hi):
        dk, dv = _step(base + i, dk, dv, k_smem, v_smem, q_ring, do_ring, lse_ring,
                       delta_ring, ready, empty, s_zero, n0, m_lo + i * BLOCK_M, qk_scale,
                       BLOCK_M, BLOCK_N, STAGES, MASKED, s_layout, a_layout)
    return dk, dv


@gluon.jit
def _output_descriptors(dK, dV, b, h_kv, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
                        stride_dvh, stride_dvn, N_K, BLOCK_N: gl.constexpr,
                        HEAD_DIM: gl.constexpr, k_layout: gl.constexpr,
                        v_layout: gl.constexpr):
    """The TMA descriptors dK and dV of this (batch, kv head) leave through, each in the
    layout of the shared tile it is stored from (K's, V's)."""
    dk_desc = tma.make_tensor_descriptor(dK + b * stride_dkb + h_kv * stride_dkh,
                                         [N_K, HEAD_DIM], [stride_dkn, 1],
                                         [BLOCK_N, HEAD_DIM], k_layout)
    dv_desc = tma.make_tensor_descriptor(dV + b * stride_dvb + h_kv * stride_dvh,
                                         [N_K, HEAD_DIM], [stride_dvn, 1],
                                         [BLOCK_N, HEAD_DIM], v_layout)
    return dk_desc, dv_desc


@gluon.jit
def _masked_blocks(n0, m_lo, n_m, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   CAUSAL: gl.constexpr):
    """Causal: the query blocks [0, full) holding a row before some kv row of this
    warpgroup, which run masked. The second warpgroup's first block sees none of its
    rows (P = 0); it runs masked rather than released unread: a skip loop's scalars
    spill (ptxas, 240 registers), one wasted block in ~N/128 costs less."""
    if CAUSAL:
        full = gl.minimum(gl.cdiv(n0 + BLOCK_N - 1 - m_lo, BLOCK_M), n_m)
    else:
        full = 0
    return full


@gluon.jit
def _store_dkdv(dk, dv, scale, k_smem, v_smem, dk_desc, dv_desc, n0):
    """Epilogue: K_j and V_j are no longer read (the last products are done), so their
    tiles carry dK_j·scale and dV_j to the TMA stores (rows past Nk dropped)."""
    dtype: gl.constexpr = k_smem.dtype
    k_smem.store((dk * scale).to(dtype))
    v_smem.store(dv.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(dk_desc, [n0, 0], k_smem)
    tma.async_copy_shared_to_global(dv_desc, [n0, 0], v_smem)
    tma.store_wait(0)


@gluon.jit
def _consume(w: gl.constexpr, smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn,
             stride_dvb, stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale,
             scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
             STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Consumer warpgroup w: kv rows n0 = start_n + w·BLOCK_N .. + BLOCK_N. Per query
    head: causal, the blocks up to its diagonal masked; then the whole blocks. Then
    dK·scale and dV out through its K, V tiles."""
    k_all, v_all, q_ring, do_ring, lse_ring, delta_ring = smem
    kv_bar, ready, empty = bars
    b, h_kv, start_n = _program(H_KV, BLOCK_N)
    k_smem = k_all.index(w)
    v_smem = v_all.index(w)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16])
    # Pᵀ and dSᵀ feed the dV, dK products from registers: the fp32 accumulator of an
    # m64nBLOCK_M product holds, per thread, what the A operand of a K = BLOCK_M product
    # wants (two 16-bit values per 32-bit register), so the conversion moves no data
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout,
                                                 k_width=2)
    # the output descriptors now, not after the loop: their global scratch address
    # would otherwise be carried around the partition's dispatch loop (on the stack)
    k_layout: gl.constexpr = k_smem.type.layout
    v_layout: gl.constexpr = v_smem.type.layout
    dk_desc, dv_desc = _output_descriptors(
        dK, dV, b, h_kv, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh,
        stride_dvn, N_K, BLOCK_N, HEAD_DIM, k_layout, v_layout)
    n0 = start_n + w * BLOCK_N
    m_lo, n_m = _query_range(start_n, N_Q, BLOCK_M, CAUSAL)
    full = _masked_blocks(n0, m_lo, n_m, BLOCK_M, BLOCK_N, CAUSAL)

    s_zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=s_layout)
    # fp32 tensors between steps: each step waits for its products (`_step`)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    mbarrier.wait(kv_bar, 0)
    for g in range(GROUP):
        base = g * n_m
        if CAUSAL:
            dk, dv = _steps(0, full, base, m_lo, dk, dv, k_smem, v_smem, q_ring, do_ring,
                            lse_ring, delta_ring, ready, empty, s_zero, n0, qk_scale, BLOCK_M,
                            BLOCK_N, STAGES, True, s_layout, a_layout)
        dk, dv = _steps(full, n_m, base, m_lo, dk, dv, k_smem, v_smem, q_ring, do_ring,
                        lse_ring, delta_ring, ready, empty, s_zero, n0, qk_scale, BLOCK_M,
                        BLOCK_N, STAGES, False, s_layout, a_layout)

    _store_dkdv(dk, dv, scale, k_smem, v_smem, dk_desc, dv_desc, n0)


@gluon.jit
def _consume_first(smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
                   stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale, scale,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                   STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """The default partition: the first warpgroup's kv rows."""
    _consume(0, smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
             stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale, scale,
             BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)


@gluon.jit
def _consume_second(smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
                    stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale,
                    scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """A worker partition: the second warpgroup's kv rows."""
    _consume(1, smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
             stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale, scale,
             BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)


@gluon.jit
def attention_bwd_dkdv_ws(Q, K, V, dO, dK, dV, Lse, Delta,
                          stride_qb, stride_qh, stride_qm,
                          stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          stride_dob, stride_doh, stride_dom,
                          stride_dkb, stride_dkh, stride_dkn,
                          stride_dvb, stride_dvh, stride_dvn,
                          H_Q, H_KV, GROUP, N_Q, N_K, qk_scale, scale,
                          HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                          CAUSAL: gl.constexpr):
    """Grid (cdiv(Nk, 2·BLOCK_N), B·Hkv); launched with num_warps=4 (the first consumer).
    q, dO [B, Hq, Nq, d], k, v, dK, dV [B, Hkv, Nk, d], head-dim stride 1 (not passed);
    Lse (natural log), Delta = rowsum(dO ∘ O): [B·Hq, Nq] fp32. qk_scale = scale·log2 e;
    dK is written times `scale`, dV as is (as `_bwd_dkdv`).

    Shared memory (gluon_backward.smem_bytes): 2·BLOCK_N·2d (K, V, later dK, dV),
    STAGES·(BLOCK_M·2d) (the Q, dO ring) in the input dtype, STAGES·2·BLOCK_M fp32 (lse,
    delta), 2·STAGES + 1 mbarriers. HBM traffic as `_bwd_dkdv`'s at BLOCK_N = 128: K, V
    read and dK, dV written once; Q, dO, lse, delta read once per 128 kv rows."""
    dtype: gl.constexpr = Q.dtype.element_ty
    tile_layout: gl.constexpr = gl.NVMMASharedLayout(  # rows of d >= 64 16-bit elements
        swizzle_byte_width=128, element_bitwidth=16, rank=2)
    row_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], tile_layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], tile_layout)
    q_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], tile_layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], tile_layout)
    lse_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], row_layout)
    delta_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], row_layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        # the TMA bytes' arrival plus one per loader lane's cp.async (`noinc`)
        mbarrier.init(ready.index(i), count=1 + 32 * LOADER_WARPS)
        mbarrier.init(empty.index(i), count=2)  # one arrival per consumer

    smem = (k_smem, v_smem, q_ring, do_ring, lse_ring, delta_ring)
    bars = (kv_bar, ready, empty)
    gl.warp_specialize([
        (_consume_first, (smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn, stride_dvb,
                          stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K, qk_scale,
                          scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)),
        (_consume_second, (smem, bars, dK, dV, stride_dkb, stride_dkh, stride_dkn,
                           stride_dvb, stride_dvh, stride_dvn, H_KV, GROUP, N_Q, N_K,
                           qk_scale, scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES,
                           CAUSAL)),
        (_load, (Q, K, V, dO, Lse, Delta, stride_qb, stride_qh, stride_qm, stride_kb,
                 stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_dob,
                 stride_doh, stride_dom, H_KV, GROUP, H_Q, N_Q, N_K, smem, bars,
                 BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)),
    ], [4, LOADER_WARPS], [240, 24])
