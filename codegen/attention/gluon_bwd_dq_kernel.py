"""The Gluon dK/dV kernel with dQ fused in (the "gluon+atomic" variant): the one-kernel
attention backward of FlashAttention-3 (Shah et al. 2024, §3.1 and Appendix B) for
sm_90, dense or causal, fp16/bf16, d = dv in {64, 128}. Imported only where
gluon_backward's gate finds Triton 3.6 (the Gluon API it is written against).

It is gluon_bwd_kernel.py's kernel (the same loader warp, ring, programs of 2·BLOCK_N
kv rows and two consumer warpgroups of BLOCK_N kv rows each) plus, per query block i,
the dQ product that the two-kernel backward recomputes S and dP for in a second pass:

    dQ_i += dS_i,j K_j        (over this program's 2·BLOCK_N kv rows; unscaled)

added into an fp32 accumulator [B·Hq, Nq, d] in global memory (zeroed by the caller,
scaled by the softmax scale and converted by the backward module's `_bwd_dq_convert`)
by TMA reduce-adds (`cp.reduce.async.bulk.tensor.add.f32`, SASS UTMAREDG), which run
asynchronously: the issuing warpgroup goes on with the next block.

The split of dQ between the warpgroups (FA3's, AtomLayoutMdQ = 1): each computes half
of dQ_i's columns over both warpgroups' kv rows,

    dQ_i[:, w·d/2 : (w+1)·d/2] = dS_i,0 K_0[:, cols] + dS_i,1 K_1[:, cols]

so each block reduces BLOCK_M × d fp32 once in all (two reduce-adds of half the
columns, one per warpgroup), not twice (each warpgroup's own BLOCK_M × d partial over
its 64 kv rows), and no warpgroup sums the other's partial in shared memory. The price:
both dSᵀ tiles must be in shared memory before either dQ product, one mbarrier
exchange a block (`ds_bar`), and dSᵀ goes to shared memory (bf16, double-buffered so a
warpgroup one block ahead does not overwrite what the other still reads). Per
warpgroup and block, with t the block's ring position:

    issue Sᵀ = K_w Q_iᵀ;  issue dPᵀ = V_w dO_iᵀ
    wait Sᵀ;  Pᵀ = exp2(Sᵀ·scale·log2e − lse_i·log2e)     <- exp2 under dPᵀ
    issue dV += Pᵀ dO_i                                     (Pᵀ from registers)
    wait dPᵀ; dSᵀ = Pᵀ ⊙ (dPᵀ − delta_i)                    <- dS under dV
    dSᵀ -> ds[t % 2][w] (bf16);  issue dK += dSᵀ Q_i        (dSᵀ from registers)
    arrive ds_bar[t % 2]; wait ds_bar[t % 2]                <- under dV, dK
    issue dQ_w = dS_0 K_0[:, cols_w] + dS_1 K_1[:, cols_w]  (A: ds[t % 2][j]ᵀ, smem)
    wait all;  free the ring slot
    wait until the previous reduce-add has read the staging tile
    dQ_w -> staging[w] (fp32);  reduce-add staging[w] into DqAcc[rows of i, cols_w]

ds[t % 2][w] is rewritten at block t + 2, after this warpgroup passed ds_bar at t + 1,
which the other warpgroup arrives on only after its block-t products are done. The K
tiles are read by both warpgroups, so before the epilogue (which reuses them for dK)
both meet once more on ds_bar (position T, the block count).

Registers at d = 128 (fp32, a thread of a warpgroup): dK, dV 64 + 64, Sᵀ and dPᵀ 32 +
32 while they live, dQ_w 32 (64 × 64) after they are dead: the live set peaks where the
two-kernel variant's does (~192 plus addresses). At d = 64 half of that.

Shared memory, beside gluon_bwd_kernel's: ds 2·2·BLOCK_N·BLOCK_M in the input dtype,
the staging tiles 2·BLOCK_M·d/2 fp32, two mbarriers. K is swizzled by d bytes (128 at
d = 128, 64 at d = 64) so that half of its columns is whole swizzle atoms (a wgmma B
operand cannot start inside one).
"""

from __future__ import annotations

from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language import _core as gl_core
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .gluon_bwd_kernel import (
    LOADER_WARPS,
    _load,
    _masked_blocks,
    _output_descriptors,
    _probabilities,
    _program,
    _query_range,
    _store_dkdv,
)


@gl_core.builtin
def _async_reduce_add(tensor_desc, coord, src, _semantic=None):
    """TMA reduce-add of the shared tile `src` into global memory at `coord` of
    `tensor_desc` (`cp.reduce.async.bulk.tensor.*.add`; SASS UTMAREDG), asynchronous
    like `tma.async_copy_shared_to_global` and waited for by `tma.store_wait` the same
    way (a bulk async-group). Why it is ours: Triton 3.6's Gluon builds the op
    (ttng.async_tma_reduce, `GluonOpBuilder.create_async_tma_reduce(kind, desc, coord,
    src)`) but its `hopper.tma` module exports no function for it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD,
                                              tensor_desc.handle, coord, src.handle)


@gluon.jit
def _step(t, dk, dv, w: gl.constexpr, k_all, v_smem, q_ring, do_ring, lse_ring, delta_ring,
          ds_all, stage, ready, empty, ds_bar, dq_desc, s_zero, q_zero, n0, m, qk_scale,
          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
          STAGES: gl.constexpr, MASKED: gl.constexpr, s_layout: gl.constexpr,
          a_layout: gl.constexpr):
    """One query block (ring position t) against this warpgroup's kv rows [n0, n0 +
    BLOCK_N), in the order of the module docstring. MASKED: the causal diagonal."""
    HALF: gl.constexpr = HEAD_DIM // 2
    slot = t % STAGES
    mbarrier.wait(ready.index(slot), (t // STAGES) & 1)
    q = q_ring.index(slot)
    k_smem = k_all.index(w)
    dst, dv = _probabilities(slot, dv, k_smem, v_smem, q, do_ring.index(slot), lse_ring,
                             delta_ring, s_zero, n0, m, qk_scale, BLOCK_M, BLOCK_N, MASKED,
                             s_layout, a_layout)
    dtype: gl.constexpr = q_ring.dtype
    dst = dst.to(dtype)

    # dSᵀ to shared memory for both warpgroups' dQ products (the async proxy reads it)
    buf = t % 2
    ds_all.index(2 * buf + w).store(dst)
    fence_async_shared()
    gl.thread_barrier()  # every thread's part of the tile is written before the arrive
    dk = warpgroup_mma(gl.convert_layout(dst, a_layout), q, dk, is_async=True)
    # dV done (dK runs on): Pᵀ's registers (dV's A operand) are free before dQ's
    # accumulator is live
    dv = warpgroup_mma_wait(1, deps=(dv,))
    mbarrier.arrive(ds_bar.index(buf), count=1)
    mbarrier.wait(ds_bar.index(buf), (t // 2) & 1)  # the other warpgroup's dSᵀ is there
    # dQ_i[:, cols_w] = Σ_j dS_i,j K_j[:, cols_w]: A = dSᵀ_j viewed transposed (M = query
    # rows, K = kv rows, MN-major), B = K_j's column half (K = kv rows, N = d/2)
    dq = warpgroup_mma(ds_all.index(2 * buf).permute((1, 0)),
                       k_all.index(0).slice(w * HALF, HALF, dim=1), q_zero, use_acc=False,
                       is_async=True)
    dq = warpgroup_mma(ds_all.index(2 * buf + 1).permute((1, 0)),
                       k_all.index(1).slice(w * HALF, HALF, dim=1), dq, is_async=True)
    dk, dq = warpgroup_mma_wait(0, deps=(dk, dq))
    mbarrier.arrive(empty.index(slot), count=1)

    # The staging tile: the previous block's reduce-add must have read it (it was issued
    # a block ago, so this wait is normally free), then dQ_w goes out asynchronously.
    tma.store_wait(0)
    gl.thread_barrier()
    stage.store(dq)
    fence_async_shared()
    gl.thread_barrier()
    _async_reduce_add(dq_desc, [m, w * HALF], stage)
    return dk, dv


@gluon.jit
def _steps(lo, hi, base, m_lo, dk, dv, w: gl.constexpr, k_all, v_smem, q_ring, do_ring,
           lse_ring, delta_ring, ds_all, stage, ready, empty, ds_bar, dq_desc, s_zero, q_zero,
           n0, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
           HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, MASKED: gl.constexpr,
           s_layout: gl.constexpr, a_layout: gl.constexpr):
    """Query blocks [lo, hi) of the head whose first block is ring position `base`."""
    for i in range(lo, hi):
        dk, dv = _step(base + i, dk, dv, w, k_all, v_smem, q_ring, do_ring, lse_ring,
                       delta_ring, ds_all, stage, ready, empty, ds_bar, dq_desc, s_zero,
                       q_zero, n0, m_lo + i * BLOCK_M, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM,
                       STAGES, MASKED, s_layout, a_layout)
    return dk, dv


@gluon.jit
def _consume(w: gl.constexpr, smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh,
             stride_dkn, stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP, N_Q, N_K,
             qk_scale, scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
             HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Consumer warpgroup w (gluon_bwd_kernel._consume's loop structure): kv rows n0 =
    start_n + w·BLOCK_N .. + BLOCK_N; per query head, its dQ accumulator's descriptor,
    the masked then the whole blocks; then both warpgroups meet (the K tiles are read by
    both), and dK·scale and dV leave through its K, V tiles."""
    HALF: gl.constexpr = HEAD_DIM // 2
    k_all, v_all, q_ring, do_ring, lse_ring, delta_ring = smem
    ds_all, stage_all, ds_bar = extra
    kv_bar, ready, empty = bars
    b, h_kv, start_n = _program(H_KV, BLOCK_N)
    k_smem = k_all.index(w)
    v_smem = v_all.index(w)
    stage = stage_all.index(w)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout,
                                                 k_width=2)
    k_layout: gl.constexpr = k_smem.type.layout
    v_layout: gl.constexpr = v_smem.type.layout
    dk_desc, dv_desc = _output_descriptors(
        dK, dV, b, h_kv, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh,
        stride_dvn, N_K, BLOCK_N, HEAD_DIM, k_layout, v_layout)
    n0 = start_n + w * BLOCK_N
    m_lo, n_m = _query_range(start_n, N_Q, BLOCK_M, CAUSAL)
    full = _masked_blocks(n0, m_lo, n_m, BLOCK_M, BLOCK_N, CAUSAL)

    s_zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=s_layout)
    q_zero = gl.zeros([BLOCK_M, HALF], gl.float32, layout=dq_layout)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    mbarrier.wait(kv_bar, 0)
    for g in range(GROUP):
        base = g * n_m
        # this query head's rows of the accumulator; the previous head's reduce-adds
        # have read their tiles (store_wait) before its descriptor is overwritten
        tma.store_wait(0)
        h = h_kv * GROUP + g
        dq_desc = tma.make_tensor_descriptor(DqAcc + (b * H_Q + h) * N_Q * HEAD_DIM,
                                             [N_Q, HEAD_DIM], [HEAD_DIM, 1],
                                             [BLOCK_M, HALF], stage.type.layout)
        if CAUSAL:
            dk, dv = _steps(0, full, base, m_lo, dk, dv, w, k_all, v_smem, q_ring, do_ring,
                            lse_ring, delta_ring, ds_all, stage, ready, empty, ds_bar,
                            dq_desc, s_zero, q_zero, n0, qk_scale, BLOCK_M, BLOCK_N,
                            HEAD_DIM, STAGES, True, s_layout, a_layout)
        dk, dv = _steps(full, n_m, base, m_lo, dk, dv, w, k_all, v_smem, q_ring, do_ring,
                        lse_ring, delta_ring, ds_all, stage, ready, empty, ds_bar, dq_desc,
                        s_zero, q_zero, n0, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES,
                        False, s_layout, a_layout)

    # Both warpgroups' last dQ products (which read both K tiles) are done once both
    # arrived at position T = GROUP·n_m: then K_w may take dK_w.
    t_end = GROUP * n_m
    mbarrier.arrive(ds_bar.index(t_end % 2), count=1)
    mbarrier.wait(ds_bar.index(t_end % 2), (t_end // 2) & 1)
    _store_dkdv(dk, dv, scale, k_smem, v_smem, dk_desc, dv_desc, n0)  # waits for the
    # last reduce-add too (store_wait)


@gluon.jit
def _consume_first(smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh, stride_dkn,
                   stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP, N_Q, N_K, qk_scale,
                   scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """The default partition: the first warpgroup's kv rows, dQ's first column half."""
    _consume(0, smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh, stride_dkn,
             stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP, N_Q, N_K, qk_scale,
             scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)


@gluon.jit
def _consume_second(smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh, stride_dkn,
                    stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP, N_Q, N_K,
                    qk_scale, scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """A worker partition: the second warpgroup's kv rows, dQ's second column half."""
    _consume(1, smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh, stride_dkn,
             stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP, N_Q, N_K, qk_scale,
             scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)


@gluon.jit
def attention_bwd_fused_ws(Q, K, V, dO, dK, dV, Lse, Delta, DqAcc,
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
    """Grid (cdiv(Nk, 2·BLOCK_N), B·Hkv); num_warps=4. The arguments of
    gluon_bwd_kernel.attention_bwd_dkdv_ws plus DqAcc: [B·Hq, Nq, d] fp32 contiguous,
    zeroed; the kernel adds dS K (unscaled) into it.

    Shared memory (gluon_backward.smem_bytes): gluon_bwd_kernel's, plus 2·2·BLOCK_N·BLOCK_M
    of the input dtype (dSᵀ, double-buffered), 2·BLOCK_M·d/2 fp32 (dQ staging), two
    mbarriers. HBM/L2: `_bwd_dkdv`'s, plus Nq·d fp32 reduce-adds per program (L2)."""
    dtype: gl.constexpr = Q.dtype.element_ty
    tile_layout: gl.constexpr = gl.NVMMASharedLayout(
        swizzle_byte_width=128, element_bitwidth=16, rank=2)
    # K: a swizzle atom is d/2 columns (d bytes of 16-bit elements), so that the dQ
    # products' B operand, K's column half, starts on an atom
    k_layout: gl.constexpr = gl.NVMMASharedLayout(
        swizzle_byte_width=HEAD_DIM, element_bitwidth=16, rank=2)
    # dQ staging: fp32 rows of d/2 (128 or 256 bytes), 128-byte swizzle (the TMA box's
    # inner extent is one swizzle span: Triton splits wider boxes into several copies)
    stage_layout: gl.constexpr = gl.NVMMASharedLayout(
        swizzle_byte_width=128, element_bitwidth=32, rank=2)
    row_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], k_layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], tile_layout)
    q_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], tile_layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], tile_layout)
    lse_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], row_layout)
    delta_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], row_layout)
    # dSᵀ tiles [buffer·2 + warpgroup]: kv rows × query rows
    ds_all = gl.allocate_shared_memory(dtype, [4, BLOCK_N, BLOCK_M], tile_layout)
    stage_all = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M, HEAD_DIM // 2],
                                          stage_layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ds_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1 + 32 * LOADER_WARPS)
        mbarrier.init(empty.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(ds_bar.index(i), count=2)  # one arrival per consumer

    smem = (k_smem, v_smem, q_ring, do_ring, lse_ring, delta_ring)
    extra = (ds_all, stage_all, ds_bar)
    bars = (kv_bar, ready, empty)
    gl.warp_specialize([
        (_consume_first, (smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh,
                          stride_dkn, stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV, GROUP,
                          N_Q, N_K, qk_scale, scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES,
                          CAUSAL)),
        (_consume_second, (smem, extra, bars, dK, dV, DqAcc, stride_dkb, stride_dkh,
                           stride_dkn, stride_dvb, stride_dvh, stride_dvn, H_Q, H_KV,
                           GROUP, N_Q, N_K, qk_scale, scale, BLOCK_M, BLOCK_N, HEAD_DIM,
                           STAGES, CAUSAL)),
        (_load, (Q, K, V, dO, Lse, Delta, stride_qb, stride_qh, stride_qm, stride_kb,
                 stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_dob,
                 stride_doh, stride_dom, H_KV, GROUP, H_Q, N_Q, N_K, smem, bars,
                 BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL)),
    ], [4, LOADER_WARPS], [240, 24])
