"""The FlashAttention-3 forward schedule in Gluon, for sm_90 (Hopper): dense or causal,
fp16/bf16, head dims 64, 128 and 256 (d = dv). Imported only where gluon_forward's gate
finds the Triton whose Gluon API it is written against (3.6's).

One program owns 2·BLOCK_M query rows of one (batch, head) and runs four partitions
(Shah et al. 2024, FlashAttention-3, §3.1-3.2):

    loaders    2 warps, 24 registers each: TMA loads of the two Q tiles and the K ring,
               and of the V ring; each ring STAGES deep in shared memory, each slot
               guarded by mbarriers (k_ready / v_ready: the bytes landed; k_empty /
               v_empty: both consumers are done with it). V_j's slot frees a block
               later than K_j's, hence a warp each.
    consumer 0 the default partition (4 warps, one warpgroup): query rows [0, BLOCK_M)
    consumer 1 a worker partition (4 warps, 240 registers): rows [BLOCK_M, 2·BLOCK_M)

Each consumer overlaps within its warpgroup (FA3 §3.2, "intra-warpgroup pipelining"):

    S_0 = Q K_0ᵀ; P_0, m, l = softmax(S_0)
    for j = 1 ..:  wait for O += P_{j-2} V_{j-2};  issue S_j = Q K_jᵀ;  O ·= exp2(m'' - m)
                   issue O += P_{j-1} V_{j-1};  wait S_j
                   P_j, m', l = softmax(S_j)        <- exp2 under the P_{j-1} V_{j-1} wgmma
    O += P_last V_last;  O /= l;  lse = (m + log2 l)·ln 2

and, with PINGPONG, the two consumers take turns issuing their wgmma pairs (two
mbarriers `turn`), so one warpgroup's softmax runs while the other's matmuls hold the
tensor cores (FA3 §3.1, "pingpong scheduling"). `_kv_steps` says why the wait sits where
it does and why P goes through shared memory.

Layout: q, k, v, out are [B, H, N, d] with any strides whose last is 1 (16-byte aligned:
the tensor-map rules); every tile moves through an in-kernel TMA descriptor over one
(batch, head)'s [N, d] matrix, which zero-fills rows past N and drops them on store.
lse is [B·Hq, Nq] fp32, natural log, as the Triton forward writes it.

Floor (H100 SXM5: 132 SMs, 1.83 GHz boost; dense bf16 989 TFLOP/s = 4096 FLOP/cycle/SM,
the project's sustained floor 790; exp2 on the MUFU 16/cycle/SM). Per KV block of one
warpgroup (64 rows × BLOCK_N keys): 2 wgmma of 2·64·BLOCK_N·d FLOPs and 64·BLOCK_N exp2.
At d = 128, BLOCK_N = 128: 4.19 MFLOP = 1024 tensor-core cycles, 8192 exp2 = 512 MUFU
cycles, and ~500 SASS instructions a warp (the loop body: 1 issue slot per cycle per SM
quadrant, two consumer warps a quadrant: ~1000 issue cycles per block pair against
2048 tensor-core cycles). With the softmax hidden (ping-pong + the overlap above) the
kernel is tensor-core bound: docs/kernels.md ("The Gluon forward") has the prediction.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

LN2: gl.constexpr = gl.constexpr(0.6931471805599453)


@gluon.jit
def _load_ring(desc, ring, ready, empty, n_blocks, BLOCK_N: gl.constexpr,
               STAGES: gl.constexpr):
    """Rows [j·BLOCK_N, (j+1)·BLOCK_N) of `desc` into ring slot j % STAGES for every KV
    block j, each as soon as both consumers have freed the slot (a fresh mbarrier passes
    a wait on parity 1, so the first STAGES waits return at once)."""
    for j in range(n_blocks):
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(slot), desc.block_type.nbytes)
        tma.async_copy_global_to_shared(desc, [j * BLOCK_N, 0], ready.index(slot),
                                        ring.index(slot))


@gluon.jit
def _load_q_k(q_base, k_base, stride_qm, stride_kn, N_Q, N_K, q_smem, k_smem, q_bar,
              k_ready, k_empty, start_m, n_blocks, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    """One warp: both Q tiles, then the K ring. The descriptors are built here, by the
    warp that issues the copies (its tensormap acquire fence orders its own reads)."""
    layout: gl.constexpr = q_smem.type.layout
    q_desc = tma.make_tensor_descriptor(q_base, [N_Q, HEAD_DIM], [stride_qm, 1],
                                        [BLOCK_M, HEAD_DIM], layout)
    k_desc = tma.make_tensor_descriptor(k_base, [N_K, HEAD_DIM], [stride_kn, 1],
                                        [BLOCK_N, HEAD_DIM], layout)
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [start_m, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [start_m + BLOCK_M, 0], q_bar, q_smem.index(1))
    _load_ring(k_desc, k_smem, k_ready, k_empty, n_blocks, BLOCK_N, STAGES)


@gluon.jit
def _load_v(v_base, stride_vn, N_K, v_smem, v_ready, v_empty, n_blocks,
            BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    """One warp: the V ring (its own warp: V_j's slot frees a block later than K_j's,
    and a shared loader would hold K_{j+1} back behind it)."""
    v_desc = tma.make_tensor_descriptor(v_base, [N_K, HEAD_DIM], [stride_vn, 1],
                                        [BLOCK_N, HEAD_DIM], v_smem.type.layout)
    _load_ring(v_desc, v_smem, v_ready, v_empty, n_blocks, BLOCK_N, STAGES)


@gluon.jit
def _wait_turn(turn, k, FIRST: gl.constexpr, PINGPONG: gl.constexpr):
    """Wait for this warpgroup's k-th turn at the tensor cores. The first warpgroup's
    turn k needs the other's turn k-1 (its turn 0 passes: parity 1 of a fresh barrier);
    the second's turn k needs the first's turn k."""
    if PINGPONG:
        if FIRST:
            mbarrier.wait(turn, (k & 1) ^ 1)
        else:
            mbarrier.wait(turn, k & 1)


@gluon.jit
def _pass_turn(turn, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn, count=1)


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale):
    """FA2 Algorithm 1, lines 8-10, in log2 units (qk_scale = scale·log2 e): the new row
    max m', P = exp2(S·qk_scale - m'), l' = l·exp2(m - m') + rowsum P, and the
    accumulator's factor alpha = exp2(m - m'). Every row has seen key 0 in the first
    block (blocks run in ascending order), so m' is finite and alpha(-inf) = 0."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _mask_scores(s, start_n, row0, N_K, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 CAUSAL: gl.constexpr, s_layout: gl.constexpr):
    """-inf where key start_n + c is past N_K or (causal) after query row0 + r."""
    cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    visible = gl.expand_dims(cols < N_K, 0)
    if CAUSAL:
        rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
        visible = visible & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1))
    return gl.where(visible, s, float("-inf"))


@gluon.jit
def _kv_steps(acc, p_smem, m_i, l_i, p, alpha, q_smem, k_smem, v_smem, k_ready, k_empty,
              v_ready, v_empty, turn_mine, turn_other, s_zero, row0, N_K, lo, hi, qk_scale,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, FIRST: gl.constexpr, PINGPONG: gl.constexpr,
              MASKED: gl.constexpr, s_layout: gl.constexpr, row_o: gl.constexpr):
    """KV blocks j in [lo, hi), j >= 1. On entry P_{j-2} V_{j-2} may be in flight (acc is
    its token) and P_{j-1} is in registers; per block:

        wait for P_{j-2} V_{j-2} (free V_{j-2});  P_{j-1} -> p_smem
        [turn]  issue S_j;  O ·= alpha_{j-1};  issue P_{j-1} V_{j-1}  [pass the turn]
        wait for S_j (free K_j)
        softmax S_j -> P_j, alpha_j          <- every exp2 under the P_{j-1} V_{j-1} wgmma

    Two ptxas rules shape this (Triton 3.6's ptxas, checked on the SASS):
      - it places a wgmma wait as early as it may within a basic block, above the
        softmax's row-max shuffles; so the wait for P_{j-1} V_{j-1} is at the top of
        the next block, behind its mbarrier waits, where it cannot be hoisted;
      - it serializes every wgmma of the kernel when the A operand of a wgmma in flight
        across the loop's back edge lives in registers ("insufficient register
        resources"); so P goes through shared memory (8 stmatrix a thread per block).
    MASKED=False: whole, fully visible blocks (no branch between issue and wait)."""
    for j in range(lo, hi):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        # P_{j-2} V_{j-2} done (it ran under the last softmax). Waiting for every group
        # before S_j is issued: ptxas serializes all wgmma when O's registers are read
        # while it cannot tell that their group is done
        acc = warpgroup_mma_wait(0, deps=(acc,))
        # (+STAGES: Triton's % keeps the sign of j - 2; the index must stay in range
        # where the predicate is off)
        mbarrier.arrive(v_empty.index((j + STAGES - 2) % STAGES), count=1, pred=j >= 2)
        p_smem.store(p.to(q_smem.dtype))
        fence_async_shared()
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        # the turn covers the issue of both products (and O's rescale, under S_j)
        _wait_turn(turn_mine, j, FIRST, PINGPONG)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        acc = warpgroup_mma(p_smem, v_smem.index(prev), acc, is_async=True)
        _pass_turn(turn_other, PINGPONG)
        s = warpgroup_mma_wait(1, deps=(s_tok,))  # S_j done; P_{j-1} V_{j-1} runs on
        mbarrier.arrive(k_empty.index(slot), count=1)
        if MASKED:
            s = _mask_scores(s, j * BLOCK_N, row0, N_K, BLOCK_M, BLOCK_N, CAUSAL, s_layout)
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale)
    return acc, m_i, l_i, p, alpha


@gluon.jit
def _consume(q_smem, p_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, turn_mine,
             turn_other, o_base, stride_om, lse_ptr, row0, N_Q, N_K, n_blocks, qk_scale,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
             STAGES: gl.constexpr, CAUSAL: gl.constexpr, FIRST: gl.constexpr,
             PINGPONG: gl.constexpr):
    """One consumer warpgroup: BLOCK_M query rows starting at row0 (its Q tile in q_smem)
    against every KV block [0, n_blocks), then its O tile (through q_smem and TMA) and
    its lse rows (lse_ptr: this (batch, head)'s row 0). Reads per block one K and one V
    tile from shared memory; 2 wgmma of 2·BLOCK_M·BLOCK_N·d FLOPs each."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype
    o_desc = tma.make_tensor_descriptor(o_base, [N_Q, HEAD_DIM], [stride_om, 1],
                                        [BLOCK_M, HEAD_DIM], q_smem.type.layout)

    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    acc = warpgroup_mma_init(gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout))
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    mbarrier.wait(q_bar, 0)

    # Block 0: S_0 alone (nothing to multiply V by yet).
    mbarrier.wait(k_ready.index(0), 0)
    _wait_turn(turn_mine, 0, FIRST, PINGPONG)
    s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False,
                          is_async=True)
    _pass_turn(turn_other, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s_tok,))
    mbarrier.arrive(k_empty.index(0), count=1)
    if (BLOCK_N > N_K) | (CAUSAL and BLOCK_N - 1 > row0):  # no wgmma in flight here
        s = _mask_scores(s, 0, row0, N_K, BLOCK_M, BLOCK_N, CAUSAL, s_layout)
    p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale)

    # Blocks 1 .. n_blocks-1: whole blocks first, then the ragged end / causal diagonal.
    # A block is whole for every row of this warpgroup when it ends at or before Nk and
    # (causal) at or before the warpgroup's first row.
    if CAUSAL:
        n_whole = gl.minimum(N_K // BLOCK_N, (row0 + 1) // BLOCK_N)
    else:
        n_whole = N_K // BLOCK_N
    mid = gl.maximum(gl.minimum(n_whole, n_blocks), 1)
    acc, m_i, l_i, p, alpha = _kv_steps(
        acc, p_smem, m_i, l_i, p, alpha, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready,
        v_empty, turn_mine, turn_other, s_zero, row0, N_K, 1, mid, qk_scale, BLOCK_M,
        BLOCK_N, STAGES, CAUSAL, FIRST, PINGPONG, False, s_layout, row_o)
    acc, m_i, l_i, p, alpha = _kv_steps(
        acc, p_smem, m_i, l_i, p, alpha, q_smem, k_smem, v_smem, k_ready, k_empty, v_ready,
        v_empty, turn_mine, turn_other, s_zero, row0, N_K, mid, n_blocks, qk_scale, BLOCK_M,
        BLOCK_N, STAGES, CAUSAL, FIRST, PINGPONG, True, s_layout, row_o)

    # The last block's P V, after the one before it.
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(v_empty.index((n_blocks + STAGES - 2) % STAGES), count=1,
                    pred=n_blocks >= 2)
    last = (n_blocks - 1) % STAGES
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
    p_smem.store(p.to(dtype))
    fence_async_shared()
    mbarrier.wait(v_ready.index(last), ((n_blocks - 1) // STAGES) & 1)
    _wait_turn(turn_mine, n_blocks, FIRST, PINGPONG)
    acc = warpgroup_mma(p_smem, v_smem.index(last), acc, is_async=True)
    _pass_turn(turn_other, PINGPONG)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(v_empty.index(last), count=1)

    # Epilogue (FA2 Algorithm 1, lines 12-15): Q's tile is no longer read, so it holds O.
    l_o = gl.convert_layout(l_i, row_o)
    out = acc * gl.expand_dims(1.0 / l_o, 1)
    q_smem.store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [row0, 0], q_smem)
    rows = row0 + gl.arange(0, BLOCK_M, layout=row_s)
    gl.store(lse_ptr + rows, (m_i + gl.log2(l_i)) * LN2, mask=rows < N_Q)
    tma.store_wait(0)


@gluon.jit
def _consume_first(smem, bars, o_base, stride_om, lse_ptr, row0, N_Q, N_K, n_blocks, qk_scale,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                   STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):
    """The default partition: the first warpgroup's rows, first in each turn.
    smem: (Q tiles, P tiles, K ring, V ring); bars: (q, k_ready, k_empty, v_ready,
    v_empty, turn)."""
    q_smem, p_smem, k_smem, v_smem = smem
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    _consume(q_smem.index(0), p_smem.index(0), k_smem, v_smem, q_bar, k_ready, k_empty,
             v_ready, v_empty, turn.index(0), turn.index(1), o_base, stride_om, lse_ptr,
             row0, N_Q, N_K, n_blocks, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
             True, PINGPONG)


@gluon.jit
def _consume_second(smem, bars, o_base, stride_om, lse_ptr, row0, N_Q, N_K, n_blocks,
                    qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                    PINGPONG: gl.constexpr):
    """The worker partition: the second warpgroup's rows, second in each turn."""
    q_smem, p_smem, k_smem, v_smem = smem
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    _consume(q_smem.index(1), p_smem.index(1), k_smem, v_smem, q_bar, k_ready, k_empty,
             v_ready, v_empty, turn.index(1), turn.index(0), o_base, stride_om, lse_ptr,
             row0, N_Q, N_K, n_blocks, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
             False, PINGPONG)


@gluon.jit
def attention_fwd_ws(Q, K, V, Out, Lse,
                     stride_qb, stride_qh, stride_qm,
                     stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh, stride_om,
                     H_Q, GROUP, N_Q, N_K, qk_scale,
                     HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):
    """Grid (cdiv(Nq, 2·BLOCK_M), B·Hq); launched with num_warps=4 (the first consumer).
    Strides of the head dim are 1 (not passed). qk_scale = scale·log2(e).

    Shared memory (gluon_forward.smem_bytes): 2·BLOCK_M·d (Q, later O), 2·BLOCK_M·BLOCK_N
    (P), STAGES·BLOCK_N·2d (the K and V rings), in the input dtype, and 4·STAGES + 3
    mbarriers. HBM traffic as the Triton forward's (forward.py): K and V read once per
    2·BLOCK_M query rows."""
    dtype: gl.constexpr = Q.dtype.element_ty
    tile_layout: gl.constexpr = gl.NVMMASharedLayout(
        swizzle_byte_width=128, element_bitwidth=16, rank=2)

    pid_m = gl.program_id(0)
    if CAUSAL:
        pid_m = gl.num_programs(0) - 1 - pid_m  # heavy (late) query blocks first
    pid_bh = gl.program_id(1)
    b = (pid_bh // H_Q).to(gl.int64)
    h = pid_bh % H_Q
    h_kv = (h // GROUP).to(gl.int64)  # GQA: query head h reads kv head h // (Hq / Hkv)
    h = h.to(gl.int64)
    start_m = pid_m * (2 * BLOCK_M)

    q_base = Q + b * stride_qb + h * stride_qh  # this (batch, head)'s [N, d] matrices
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    o_base = Out + b * stride_ob + h * stride_oh

    # Causal: keys past the program's last row are never loaded (block skipping).
    if CAUSAL:
        hi = gl.minimum(start_m + 2 * BLOCK_M, N_K)
    else:
        hi = N_K
    n_blocks = gl.cdiv(hi, BLOCK_N)

    q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], tile_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], tile_layout)
    p_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_N], tile_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], tile_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # one arrival per consumer
        mbarrier.init(v_empty.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)

    lse_ptr = Lse + pid_bh.to(gl.int64) * N_Q
    smem = (q_smem, p_smem, k_smem, v_smem)
    bars = (q_bar, k_ready, k_empty, v_ready, v_empty, turn)
    gl.warp_specialize([
        (_consume_first, (smem, bars, o_base, stride_om, lse_ptr, start_m, N_Q, N_K, n_blocks,
                          qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PINGPONG)),
        (_consume_second, (smem, bars, o_base, stride_om, lse_ptr, start_m + BLOCK_M, N_Q,
                           N_K, n_blocks, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES,
                           CAUSAL, PINGPONG)),
        (_load_q_k, (q_base, k_base, stride_qm, stride_kn, N_Q, N_K, q_smem, k_smem, q_bar,
                     k_ready, k_empty, start_m, n_blocks, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES)),
        (_load_v, (v_base, stride_vn, N_K, v_smem, v_ready, v_empty, n_blocks, BLOCK_N,
                   HEAD_DIM, STAGES)),
    ], [4, 1, 1], [240, 24, 24])
