"""Render the Triton source of the exact-attention backward (FlashAttention-2) for a Spec.

`render_backward(spec)` returns a module with three kernels and a launcher
`backward(do, q, k, v, out, lse, dlse, dq, dk, dv)`:

1. `_bwd_preprocess`: delta_i = rowsum(dO_i ∘ O_i) - dlse_i            (FA2 Alg. 2, l. 4)
2. `_bwd_dkdv`: one program per key/value block, resident in registers, streaming
   the query blocks that can see it (FA2 Algorithm 2, outer loop over K_j, V_j):
       P  = exp2(S·log2e - lse·log2e)     recomputed from the stored lse, no max/sum
       dV += Pᵀ dO          dP = dO Vᵀ          dS = P ∘ (dP - delta)
       dK += dSᵀ Q · scale
3. `_bwd_dq`: one program per query block, streaming key/value blocks:
       dQ += dS K · scale
   Splitting dQ out costs one more recomputation of S and dP (7 matmuls, not 5) but
   needs no atomics. Both kernels skip blocks above the causal diagonal by loop bounds
   and mask only the diagonal band and the ragged sequence ends.
   Or, for an "atomic" dK/dV config (the one-kernel backward, FA2 Algorithm 2 as the
   paper writes it): `_bwd_dkdv` also adds dQ_i += dS_ij K_j into a zeroed fp32
   accumulator, per element (relaxed atomics) or per tile ("bulk": TMA reduce-adds), and
   `_bwd_dq_convert` scales it into dQ; no dQ pass. Nondeterministic (addition order),
   so never tuned under torch.use_deterministic_algorithms; which of the two runs is
   decided by timing (`backward`).

The lse gradient: with lse_i = log Σ_j exp(S_ij), ∂lse_i/∂S_ij = P_ij, so an incoming
dlse adds P ∘ dlse to dS, which is the same as subtracting dlse from delta.

GQA: the dK/dV program of kv head g loops over the Hq/Hkv query heads that read it and
accumulates their contributions in registers. The alternative -- per-query-head dK/dV
in fp32, reduced in torch -- writes and re-reads G·Nk·(d + dv) fp32 per kv head and
launches one more kernel; the in-kernel loop moves nothing extra through HBM and only
lowers the program count (B·Hkv·Nk/BLOCK_N), which stays above the SM count for the
sequence lengths where the kernel time matters.

HBM traffic per (batch, query head), in elements, T_n = ceil(Nk / BLOCK_N),
T_m = ceil(Nq / BLOCK_M):
    preprocess  read O, dO: Nq·2dv             write delta: 4·Nq bytes
    dK/dV       read K, V once: Nk·(d+dv)      read Q, dO, lse, delta T_n times
                write dK, dV: Nk·(d+dv)
    dQ          read Q, dO, lse, delta once    read K, V T_m times    write dQ: Nq·d
    atomic      dK/dV's, plus T_n fp32 reductions of Nq·D_PAD into the accumulator (L2),
                its zeroing (4·Nq·D_PAD bytes), its conversion (read it, write dQ: Nq·d)
"""

from __future__ import annotations

import string

from ioaware import hardware
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.hardware import DeviceProfile

from ..expr import grad_params
from ..render import (
    TUNER,
    format_configs,
    module_preamble,
    shared_memory_budget,
)
from . import gluon_backward, header
from .tiles import attention_dkdv_tile_candidates, attention_dq_tile_candidates

# (BLOCK_M, BLOCK_N, num_warps, num_stages); a config may add a "+"-joined variant last:
# "tma" reads K, V, Q and dO through in-kernel TMA descriptors (sm_90), where the tensors
# allow it (dK/dV and dQ); for dK/dV, "atomic" also computes dQ, by fp32 atomics (the
# one-kernel backward; no dQ pass); "bulk" with it: by TMA reduce-adds of whole tiles
# (FA3's way) rather than per element; "dpfirst" issues dPᵀ before P's exp2; "gluon" runs
# the Gluon dK/dV kernel (gluon_bwd_kernel.py, FA3's warp-specialized schedule; plain
# Specs, where gluon_backward's gate admits it, else the default dK/dV config);
# "gluon+atomic" its fused-dQ form (gluon_bwd_dq_kernel.py: dQ by TMA reduce-adds, no dQ
# pass; refused, the two-kernel default, or pinned with no dQ config, the default tiles
# with "atomic"). Any variant runs when pinned; these are the tuning space.
Config = tuple
# (64, 128, 8, 2, "tma") won the old space at d = 128 on the H100; 64 kv rows
# with 8 warps compile with no or few spills there (Triton 3.6, sm_90; docs/kernels.md
# has the counts).
DKDV_VARIANT_CANDIDATES: list[Config] = [(64, 128, 8, 2, "tma"), (64, 64, 8, 2, "tma")]
# d > 128: only 32-row query tiles against 64 kv rows keep the spills to hundreds of
# bytes (~300 B of stack with TMA against 2.6 KB for the pointer (32, 64, 8, 3) that
# won the old space).
WIDE_DKDV_CANDIDATES: list[Config] = [(32, 64, 8, 2, "tma"), (32, 64, 8, 3)]
# The one-kernel backward (dQ by atomics, per element or by TMA reduce-adds) measured
# slower than the two kernels on the H100 (triton 3.6, 2026-12-07, backward alone, B=4
# N=4096): 2.0x at d = 128, 1.8x at d = 64, 1.1x at d = 256 (docs/performance.md). Out
# of the tuning space, so a first call does not compile and time it; pinned, or added
# to a module's TUNE_DKDV, it runs and is tested.
ATOMIC_DKDV_CANDIDATES: list[Config] = [
    (64, 64, 8, 2, "tma+atomic+bulk"), (64, 64, 8, 2, "tma+atomic")]
WIDE_ATOMIC_DKDV_CANDIDATES: list[Config] = [
    (32, 64, 8, 2, "tma+atomic+bulk"), (32, 64, 8, 2, "tma+atomic")]
# Study candidates (issue 15; pinnable through `backward(..., dkdv_config=, dq_config=)`,
# never tuned): what the sm_90 compile study (Triton 3.6, ptxas, no GPU; docs/kernels.md,
# "The backward's candidates") predicts faster, for `scripts/gpu_attention_backward.py
# --candidates` to time against the tuned configs. "dpfirst": dPᵀ issued before P's exp2,
# so the exp2 runs under the dPᵀ wgmma and dS under dV's (the SASS interleaves them; the
# tuned order waits on each). dQ "tma": Q, dO, K, V through descriptors; the pointer
# tiles were what spilled (d = 128: 360 B of stack and 888 instructions a tile, 0 and
# 286 with TMA; d = 256: 2.2 KB of stack, 0 at (64, 64, 8, 2)).
CANDIDATE_DKDV: list[Config] = [(64, 128, 8, 2, "tma+dpfirst"), (64, 64, 8, 2, "tma+dpfirst")]
# d > 128: 64 query rows a tile do twice the work per wgmma instruction of 32 (72 against
# 68 HGMMA a tile) for ~10 spill operations a tile
WIDE_CANDIDATE_DKDV: list[Config] = [
    (64, 64, 8, 2, "tma"), (64, 64, 8, 2, "tma+dpfirst"), (32, 64, 8, 2, "tma+dpfirst")]
CANDIDATE_DQ: list[Config] = [(128, 64, 8, 3, "tma"), (128, 128, 8, 2, "tma")]
WIDE_CANDIDATE_DQ: list[Config] = [
    (64, 32, 4, 2, "tma"), (64, 64, 8, 2, "tma"), (64, 32, 8, 3, "tma")]
# Configs timed per kernel at the first tuned call (a compile of a second or so each):
# dK/dV and dQ together at most six (issue 15's pruning, from the H100 sweep).
MAX_DKDV_CONFIGS = 4
MAX_DQ_CONFIGS = 2
# Transposed roles in dK/dV: BLOCK_N (kv, resident) = 32, BLOCK_M = 16.
INTERPRET_DKDV: Config = (header.INTERPRET_BLOCK_N, header.INTERPRET_BLOCK_M, 4, 1)
INTERPRET_DQ: Config = (header.INTERPRET_BLOCK_M, header.INTERPRET_BLOCK_N, 4, 1)


def _smem_bytes(spec: AttentionSpec, resident_rows: int, streamed_rows: int, stages: int) -> int:
    """Shared memory of one program: a resident tile plus `stages` streamed tiles."""
    width = sum(header.padded_dims(spec))
    return header.element_bytes(spec) * width * (resident_rows + stages * streamed_rows)


def dkdv_smem_bytes(spec: AttentionSpec, config: Config) -> int:
    """Shared memory of a dK/dV config; an atomic one also stages its fp32 dQ tile
    (BLOCK_M × D_PAD) for the atomic adds (what ptxas reports for sm_90, to a KB)."""
    block_m, block_n, _, stages = config[:4]
    atomic = 4 * block_m * header.padded_dims(spec)[0] if is_atomic(config) else 0
    return _smem_bytes(spec, block_n, block_m, stages) + atomic


def is_atomic(config: Config) -> bool:
    """Whether a dK/dV config computes dQ too, by atomics (no dQ pass then)."""
    return len(config) > 4 and "atomic" in config[4]


def _budget(profile: DeviceProfile | None) -> int:
    return shared_memory_budget(hardware.get_profile(profile))


def dkdv_configs(spec: AttentionSpec, profile: DeviceProfile | None = None) -> list[Config]:
    """Candidates for the dK/dV kernel: BLOCK_N kv rows resident, BLOCK_M query rows
    streamed; those over the tile budget of `profile` dropped, MAX_DKDV_CONFIGS kept.

    K_j and V_j (the A operands of the S and dP products) stay in registers next to the
    two fp32 accumulators of BLOCK_N × d, so every config at d = 128 spills some
    (docs/kernels.md has the counts); the TMA loads spill least. Pruned by the H100
    sweep of 2026-12-07: 16-row query tiles and the pointer tiles never won at d <= 128;
    (32, 64, 8, 3) stays for d = 256, where it was the best of the old space. The
    atomic configs (`atomic_dkdv_configs`) are a tuning decision when a module's space
    holds them (`backward()`); measured slower, they are not in this one. Then the Gluon
    dK/dV kernel's configs where a GPU measured them ahead and this device and Triton
    admit them (`gluon_backward.tuned_configs`).
    """
    wide = header.padded_dims(spec)[0] > 128
    candidates = WIDE_DKDV_CANDIDATES if wide else DKDV_VARIANT_CANDIDATES
    budget = _budget(profile)
    fits = [c for c in candidates if dkdv_smem_bytes(spec, c) <= budget]
    limit = hardware.get_profile(profile).sram_per_block  # the Gluon kernel's own budget
    gluon = [c for c in gluon_backward.tuned_configs(spec)
             if gluon_backward.smem_bytes(spec, c) <= limit]
    return (fits[:MAX_DKDV_CONFIGS] or [default_dkdv_config(spec, profile)]) + gluon


def atomic_dkdv_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                        ) -> list[Config]:
    """The one-kernel backward's dK/dV configs (dQ by atomics) that fit `profile`."""
    wide = header.padded_dims(spec)[0] > 128
    candidates = WIDE_ATOMIC_DKDV_CANDIDATES if wide else ATOMIC_DKDV_CANDIDATES
    return [c for c in candidates if dkdv_smem_bytes(spec, c) <= _budget(profile)]


def candidate_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                      ) -> tuple[list[Config], list[Config]]:
    """(dK/dV, dQ) study candidates (`CANDIDATE_DKDV`, `CANDIDATE_DQ`) that fit the tile
    budget of `profile`: pinnable, out of the tuning spaces until measured."""
    wide = header.padded_dims(spec)[0] > 128
    budget = _budget(profile)
    dkdv = WIDE_CANDIDATE_DKDV if wide else CANDIDATE_DKDV
    dq = WIDE_CANDIDATE_DQ if wide else CANDIDATE_DQ
    return ([c for c in dkdv if dkdv_smem_bytes(spec, c) <= budget],
            [c for c in dq if _smem_bytes(spec, c[0], c[1], c[3]) <= budget])


def gluon_candidate_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                            ) -> list[Config]:
    """The Gluon dK/dV kernel's configs (`gluon_backward.CANDIDATES`; none for a Spec it
    refuses) that fit the shared memory of `profile`'s device (the present one's for
    None): pinnable as `dkdv_config`, out of the tuning space until a GPU has measured
    them. Apart from `candidate_configs`, whose dK/dV configs are `_bwd_dkdv`'s."""
    limit = hardware.get_profile(profile).sram_per_block
    return [c for c in gluon_backward.candidate_configs(spec)
            if gluon_backward.smem_bytes(spec, c) <= limit]


def gluon_fused_candidate_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                                  ) -> list[Config]:
    """The fused-dQ Gluon kernel's configs ("gluon+atomic": dQ by TMA reduce-adds inside
    the dK/dV kernel; `gluon_backward.FUSED_CANDIDATES`) that fit `profile`'s device:
    pinnable as `dkdv_config`; those a GPU measured ahead join the tuning space through
    `gluon_backward.TUNED`. `is_atomic` holds for them, so a module's tuning under
    torch.use_deterministic_algorithms drops them as it drops the Triton atomics."""
    limit = hardware.get_profile(profile).sram_per_block
    return [c for c in gluon_backward.fused_candidate_configs(spec)
            if gluon_backward.smem_bytes(spec, c) <= limit]


def dq_configs(spec: AttentionSpec, profile: DeviceProfile | None = None) -> list[Config]:
    """Candidates for the dQ kernel: BLOCK_M query rows resident, BLOCK_N kv streamed;
    those over the tile budget of `profile` dropped, MAX_DQ_CONFIGS kept:
    (128, 64, 8, 3) won at d = 128 on the H100, (64, 32, 4, 2) is all d = 256 fits."""
    candidates = [(128, 64, 8, 3), (64, 32, 4, 2), (64, 64, 4, 3)]
    budget = _budget(profile)
    fits = [c for c in candidates if _smem_bytes(spec, c[0], c[1], c[3]) <= budget]
    return fits[:MAX_DQ_CONFIGS] or [default_dq_config(spec, profile)]


def default_dkdv_config(spec: AttentionSpec, profile: DeviceProfile | None = None) -> Config:
    """Fixed config for short sequences: fits half the tile budget of `profile` (100 KB
    on an H100)."""
    budget = _budget(profile) // 2
    for c in ((32, 128, 8, 2), (32, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 1)):
        if _smem_bytes(spec, c[1], c[0], c[3]) <= budget:
            return c
    return (16, 32, 4, 1)


def default_dq_config(spec: AttentionSpec, profile: DeviceProfile | None = None) -> Config:
    budget = _budget(profile) // 2
    for c in ((128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1)):
        if _smem_bytes(spec, c[0], c[1], c[3]) <= budget:
            return c
    return (32, 16, 4, 1)


_BACKWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}
LOG2E = tl.constexpr(1.4426950408889634)

INTERPRET = ${interpret}
# Why this Spec cannot take the Gluon dK/dV kernel (None: it can, where Triton and the
# device allow: gluon_backward.call_reason)
GLUON_REFUSED = ${gluon_refused}
PRE_BLOCK_M = ${pre_block_m}
DEFAULT_DKDV = ${default_dkdv}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
DEFAULT_DQ = ${default_dq}
TUNE_DKDV = ${tune_dkdv}
TUNE_DQ = ${tune_dq}
TUNE_MIN_SCORES = ${tune_min_scores}


${primitives}


@triton.jit
def _bwd_preprocess(O, dO, dLse, Delta,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_dob, stride_doh, stride_dom, stride_dod,
                    H_Q, N_Q, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO ∘ O) - dlse, fp32 [B·Hq, Nq]. Reads 2·BLOCK_M·dv, writes BLOCK_M."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, DV_PAD)
    o = _load_rows(O + b * stride_ob + h * stride_oh
                   + rows[:, None] * stride_om + offs_dv[None, :] * stride_od,
                   rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    do = _load_rows(dO + b * stride_dob + h * stride_doh
                    + rows[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                    rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    delta = _row_sum(o.to(tl.float32) * do.to(tl.float32))
    row_ptr = pid_bh.to(tl.int64) * N_Q + rows
    if HAS_DLSE:
        delta -= tl.load(dLse + row_ptr, mask=rows < N_Q, other=0.0)
    tl.store(Delta + row_ptr, delta, mask=rows < N_Q)


@triton.jit
def _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, q_desc, do_desc, lse_ptr, delta_ptr, dq_ptrs,
             dq_desc, stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv, lo, hi, N_Q,
             BLOCK_M: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr,
             ATOMIC: tl.constexpr, BULK: tl.constexpr, DP_FIRST: tl.constexpr):
    """FA2 Algorithm 2, lines 8-20, for query blocks [lo, hi) against one kv block.

    Transposed layout ([kv rows, query rows]) so that dV and dK come out of the dots
    already in kv-row order. MASKED=False: whole, fully visible query blocks.
    Per block: read BLOCK_M·(d + dv) elements + 2 fp32 rows; 4 dots of
    2·BLOCK_M·BLOCK_N·d FLOPs each (S, dV, dP, dK).
    TMA: Q and dO tiles through tensor descriptors (zero past Nq and the head dim).
    ATOMIC: a fifth dot, dQ_i += dS_ij K_j (FA2 Alg. 2, l. 15 as written), added with
    relaxed fp32 atomics into the [Nq, D_PAD] accumulator at dq_ptrs (unscaled); BULK:
    the tile added at once by a TMA reduction through dq_desc (rows past Nq dropped).
    DP_FIRST: dPᵀ = V dOᵀ is issued right after Sᵀ, before the exp2 of P, so that the
    tensor cores work on it while the warps compute P (the wgmma is asynchronous); the
    cost is Sᵀ and dPᵀ live at once (2·BLOCK_N·BLOCK_M fp32).
    """
    if not TMA:
        q_ptrs += lo * stride_qm
        do_ptrs += lo * stride_dom
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        if TMA:
            q = q_desc.load([start_m, 0])
        else:
            q = _load_rows(q_ptrs, rows, N_Q, offs_d, HEAD_DIM, EVEN_D, MASKED)
        if MASKED:
            lse = tl.load(lse_ptr + rows, mask=rows < N_Q, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < N_Q, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        s_t = _mm(k, tl.trans(q))  # [BLOCK_N, BLOCK_M]
        if DP_FIRST:
            if TMA:
                do = do_desc.load([start_m, 0])
            else:
                do = _load_rows(do_ptrs, rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, MASKED)
            dp_t = _mm(v, tl.trans(do))
        # Recompute P from the stored lse: exact softmax, no running max needed.
        z_t = s_t * QK_SCALE - (lse * LOG2E)[None, :]
        if MASKED:  # masked before exp2: hidden entries may be huge, never inf
            visible = rows[None, :] < N_Q
            if CAUSAL:
                visible = visible & (rows[None, :] >= offs_n[:, None])
            z_t = tl.where(visible, z_t, float("-inf"))
        p_t = tl.math.exp2(z_t)
        if not DP_FIRST:
            if TMA:
                do = do_desc.load([start_m, 0])
            else:
                do = _load_rows(do_ptrs, rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, MASKED)
        dv = _mma(p_t.to(do.dtype), do, dv)
        if not DP_FIRST:
            dp_t = _mm(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _mma(ds_t.to(q.dtype), q, dk)
        if ATOMIC:
            dq = _mm(tl.trans(ds_t.to(k.dtype)), k)  # [BLOCK_M, D_PAD]
            if BULK:
                dq_desc.atomic_add([start_m, 0], dq)
            elif MASKED:
                tl.atomic_add(dq_ptrs + start_m * D_PAD, dq, mask=rows[:, None] < N_Q,
                              sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs + start_m * D_PAD, dq, sem="relaxed")
        if not TMA:
            q_ptrs += BLOCK_M * stride_qm
            do_ptrs += BLOCK_M * stride_dom
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, dO, dK, dV, Lse, Delta, DqAcc,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_dob, stride_doh, stride_dom, stride_dod,
              stride_dkb, stride_dkh, stride_dkn, stride_dkd,
              stride_dvb, stride_dvh, stride_dvn, stride_dvd,
              H_Q, H_KV, GROUP, N_Q, N_K, N_Q_BUCKET, N_K_BUCKET,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr = False,
              ATOMIC: tl.constexpr = False, BULK: tl.constexpr = False,
              DP_FIRST: tl.constexpr = False):
    """One program per (kv block, batch·kv head): dK, dV of BLOCK_N rows, summed over
    the GROUP query heads that read this kv head (GQA). TMA: K, V, Q and dO tiles
    through in-kernel tensor descriptors (the launcher checks the tensors allow it).
    ATOMIC: also dQ, added into DqAcc [B·Hq, Nq, D_PAD] fp32 (zeroed by the launcher,
    scaled and converted by `_bwd_dq_convert`): the one-kernel backward. BULK: each dQ
    tile added by one TMA reduce-add (sm_90; FA3's way) instead of per-element atomics.
    DP_FIRST: the matmul order of `_q_sweep` (dPᵀ issued before P's exp2)."""
    pid_n = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    b = (pid_bkv // H_KV).to(tl.int64)
    h_kv = (pid_bkv % H_KV).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    # K_j, V_j read once and kept on chip for the whole sweep (FA2 Alg. 2, l. 6).
    if TMA:
        k = tl.make_tensor_descriptor(K + b * stride_kb + h_kv * stride_kh,
                                      shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                      block_shape=[BLOCK_N, D_PAD]).load([start_n, 0])
        v = tl.make_tensor_descriptor(V + b * stride_vb + h_kv * stride_vh,
                                      shape=[N_K, HEAD_DIM_V], strides=[stride_vn, 1],
                                      block_shape=[BLOCK_N, DV_PAD]).load([start_n, 0])
    else:
        k = _load_rows(K + b * stride_kb + h_kv * stride_kh
                       + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                       offs_n, N_K, offs_d, HEAD_DIM, EVEN_D, True)
        v = _load_rows(V + b * stride_vb + h_kv * stride_vh
                       + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                       offs_n, N_K, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    dk = tl.full([BLOCK_N, D_PAD], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, DV_PAD], 0.0, dtype=tl.float32)

    # Query blocks that see this kv block: causal starts at the block holding row
    # start_n (earlier rows see none of it); from m_full on, every row sees every key.
    # Three ranges: [m_lo, band_hi) the diagonal band, masked; [m_full, n_q_whole)
    # whole blocks, unmasked; [tail_lo, N_Q) the ragged last query block, masked.
    n_q_whole = (N_Q // BLOCK_M) * BLOCK_M
    if CAUSAL:
        m_lo = (start_n // BLOCK_M) * BLOCK_M
        m_full = ((start_n + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        band_hi = tl.minimum(m_full, N_Q)
        tail_lo = tl.maximum(n_q_whole, m_full)
    else:
        m_lo = 0
        m_full = 0
        band_hi = 0
        tail_lo = n_q_whole
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_ptrs = (Q + b * stride_qb + h * stride_qh
                  + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
        do_ptrs = (dO + b * stride_dob + h * stride_doh
                   + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod)
        if TMA:
            q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh,
                                               shape=[N_Q, HEAD_DIM], strides=[stride_qm, 1],
                                               block_shape=[BLOCK_M, D_PAD])
            do_desc = tl.make_tensor_descriptor(dO + b * stride_dob + h * stride_doh,
                                                shape=[N_Q, HEAD_DIM_V],
                                                strides=[stride_dom, 1],
                                                block_shape=[BLOCK_M, DV_PAD])
        else:
            q_desc = Q  # unused placeholders: the pointer tiles serve
            do_desc = dO
        row0 = (b * H_Q + h) * N_Q
        dq_ptrs = DqAcc + row0 * D_PAD + offs_m[:, None] * D_PAD + offs_d[None, :]
        if BULK:
            dq_desc = tl.make_tensor_descriptor(DqAcc + row0 * D_PAD, shape=[N_Q, D_PAD],
                                                strides=[D_PAD, 1],
                                                block_shape=[BLOCK_M, D_PAD])
        else:
            dq_desc = DqAcc  # unused placeholder
        dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, q_desc, do_desc, Lse + row0,
                          Delta + row0, dq_ptrs, dq_desc, stride_qm, stride_dom, offs_m, offs_n,
                          offs_d, offs_dv, m_lo, band_hi, N_Q, BLOCK_M, True, TMA, ATOMIC,
                          BULK, DP_FIRST)
        dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, q_desc, do_desc, Lse + row0,
                          Delta + row0, dq_ptrs, dq_desc, stride_qm, stride_dom, offs_m, offs_n,
                          offs_d, offs_dv, m_full, n_q_whole, N_Q, BLOCK_M, False, TMA,
                          ATOMIC, BULK, DP_FIRST)
        dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, q_desc, do_desc, Lse + row0,
                          Delta + row0, dq_ptrs, dq_desc, stride_qm, stride_dom, offs_m, offs_n,
                          offs_d, offs_dv, tail_lo, N_Q, N_Q, BLOCK_M, True, TMA, ATOMIC,
                          BULK, DP_FIRST)

    row_ok = offs_n[:, None] < N_K
    dk_ptrs = (dK + b * stride_dkb + h_kv * stride_dkh
               + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
    dv_ptrs = (dV + b * stride_dvb + h_kv * stride_dvh
               + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd)
    dk = dk * SCALE
    if EVEN_D:
        tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=row_ok)
    else:
        tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=row_ok & (offs_d[None, :] < HEAD_DIM))
    if EVEN_DV:
        tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=row_ok)
    else:
        tl.store(dv_ptrs, dv.to(dV.dtype.element_ty),
                 mask=row_ok & (offs_dv[None, :] < HEAD_DIM_V))


@triton.jit
def _kv_sweep(dq, q, do, lse2, delta, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn, stride_vn,
              offs_m, offs_n, offs_d, offs_dv, lo, hi, N_K,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):
    """dQ_i += dS_ij K_j over key/value blocks [lo, hi) (FA2 Alg. 2, l. 15, as a loop).

    Per block: read BLOCK_N·(d + dv) elements; 3 dots (S, dP, dQ).
    TMA: K and V tiles through tensor descriptors (zero past Nk and the head dim), so
    no [BLOCK_N, D_PAD] pointer tiles (64-bit each) occupy registers across the loop.
    """
    if not TMA:
        k_ptrs += lo * stride_kn
        v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if TMA:
            k = k_desc.load([start_n, 0])
            v = v_desc.load([start_n, 0])
        else:
            k = _load_rows(k_ptrs, cols, N_K, offs_d, HEAD_DIM, EVEN_D, MASKED)
            v = _load_rows(v_ptrs, cols, N_K, offs_dv, HEAD_DIM_V, EVEN_DV, MASKED)
        s = _mm(q, tl.trans(k))
        z = s * QK_SCALE - lse2[:, None]
        if MASKED:
            visible = cols[None, :] < N_K
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None])
            z = tl.where(visible, z, float("-inf"))
        p = tl.math.exp2(z)
        dp = _mm(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = _mma(ds.to(k.dtype), k, dq)
        if not TMA:
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def _bwd_dq(Q, K, V, dO, dQ, Lse, Delta,
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_dob, stride_doh, stride_dom, stride_dod,
            stride_dqb, stride_dqh, stride_dqm, stride_dqd,
            H_Q, GROUP, N_Q, N_K, N_Q_BUCKET, N_K_BUCKET,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr = False):
    """One program per (query block, batch·head): dQ of BLOCK_M rows. TMA: Q, dO, K and
    V tiles through in-kernel tensor descriptors (the launcher checks the tensors)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # heavy blocks first
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = pid_bh % H_Q
    h_kv = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    if TMA:
        q = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh,
                                      shape=[N_Q, HEAD_DIM], strides=[stride_qm, 1],
                                      block_shape=[BLOCK_M, D_PAD]).load([start_m, 0])
        do = tl.make_tensor_descriptor(dO + b * stride_dob + h * stride_doh,
                                       shape=[N_Q, HEAD_DIM_V], strides=[stride_dom, 1],
                                       block_shape=[BLOCK_M, DV_PAD]).load([start_m, 0])
    else:
        q = _load_rows(Q + b * stride_qb + h * stride_qh
                       + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                       offs_m, N_Q, offs_d, HEAD_DIM, EVEN_D, True)
        do = _load_rows(dO + b * stride_dob + h * stride_doh
                        + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                        offs_m, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    row_ptr = pid_bh.to(tl.int64) * N_Q + offs_m
    lse2 = tl.load(Lse + row_ptr, mask=offs_m < N_Q, other=0.0) * LOG2E
    delta = tl.load(Delta + row_ptr, mask=offs_m < N_Q, other=0.0)
    k_ptrs = (K + b * stride_kb + h_kv * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b * stride_vb + h_kv * stride_vh
              + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)
    dq = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)

    # Same split of the key range as the forward: whole visible blocks, then the band.
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, N_K)
        lo = (tl.minimum(start_m + 1, N_K) // BLOCK_N) * BLOCK_N
    else:
        hi = N_K
        lo = (N_K // BLOCK_N) * BLOCK_N
    if TMA:
        k_desc = tl.make_tensor_descriptor(K + b * stride_kb + h_kv * stride_kh,
                                           shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, D_PAD])
        v_desc = tl.make_tensor_descriptor(V + b * stride_vb + h_kv * stride_vh,
                                           shape=[N_K, HEAD_DIM_V], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, DV_PAD])
    else:
        k_desc = K  # unused placeholders: the pointer tiles serve
        v_desc = V
    dq = _kv_sweep(dq, q, do, lse2, delta, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn,
                   stride_vn, offs_m, offs_n, offs_d, offs_dv, 0, lo, N_K, BLOCK_N, False, TMA)
    dq = _kv_sweep(dq, q, do, lse2, delta, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn,
                   stride_vn, offs_m, offs_n, offs_d, offs_dv, lo, hi, N_K, BLOCK_N, True, TMA)

    dq_ptrs = (dQ + b * stride_dqb + h * stride_dqh
               + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd)
    dq = dq * SCALE
    if EVEN_D:
        tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=offs_m[:, None] < N_Q)
    else:
        tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty),
                 mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _bwd_dq_convert(DqAcc, dQ, stride_dqb, stride_dqh, stride_dqm, stride_dqd, H_Q, N_Q,
                    BLOCK_M: tl.constexpr):
    """dQ = scale · DqAcc in dQ's dtype and strides, after the atomic dK/dV kernel.
    Reads BLOCK_M·D_PAD fp32, writes BLOCK_M·d."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    acc = tl.load(DqAcc + (pid_bh.to(tl.int64) * N_Q + rows[:, None]) * D_PAD
                  + offs_d[None, :], mask=rows[:, None] < N_Q, other=0.0)
    tl.store(dQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqm
             + offs_d[None, :] * stride_dqd, (acc * SCALE).to(dQ.dtype.element_ty),
             mask=(rows[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


${tuner}
# whether a dK/dV config also computes dQ (by atomics): the tuning space's own rule
from ioaware.codegen.attention.backward import is_atomic  # noqa: E402


def _launch(kernel, config, grid_rows, grid_heads, args):
    bm, bn, warps, stages = config[:4]
    # (..., "tma") reads the streamed tiles through descriptors where the tensors allow it
    variant = config[4] if len(config) > 4 else ""
    tma = "tma" in variant and tma_addressable(*args[:4])
    if kernel is _bwd_dq:
        if tma:
            ensure_scratch_allocator()
        launch(kernel, (_cdiv(grid_rows, bm), grid_heads), *args,
               BLOCK_M=bm, BLOCK_N=bn, TMA=tma, num_warps=warps, num_stages=stages)
        return
    # dK/dV: (..., "atomic") adds dQ into args[8], a zeroed fp32 accumulator
    # (..., "atomic+bulk"): TMA reduce-adds (compiled only: Triton's interpreter has no
    # descriptor reductions, so it runs the per-element atomics there)
    bulk = "bulk" in variant and not INTERPRET
    if tma or bulk:
        ensure_scratch_allocator()
    launch(kernel, (_cdiv(grid_rows, bn), grid_heads), *args,
           BLOCK_M=bm, BLOCK_N=bn, TMA=tma, ATOMIC="atomic" in variant, BULK=bulk,
           DP_FIRST="dpfirst" in variant, num_warps=warps, num_stages=stages)


def _rest_of_backward(dkdv_config, dq_config, dq, dkdv_args, dq_args, shape):
    """dK/dV, then dQ: by its own pass, or (an atomic dK/dV config, Triton's or the
    fused Gluon kernel) from the accumulator the dK/dV kernel added into
    (`_dq_by_atomics`). shape: (B, Hq, Hkv, Nq, Nk)."""
    batch, h_q, h_kv, n_q, n_k = shape
    if gluon_backward.is_gluon(dkdv_config):
        q, k, v, do, dk, dv, lse, delta = dkdv_args[:8]
        reason = GLUON_REFUSED or gluon_backward.call_reason(q, k, v, do, dk, dv)
        fused = gluon_backward.is_fused(dkdv_config)  # "gluon+atomic": dQ inside
        if reason is None and fused:
            _dq_by_atomics(dq, shape, lambda acc: gluon_backward.launch(
                dkdv_config, q, k, v, do, dk, dv, lse, delta, SCALE.value, CAUSAL.value,
                dq_acc=acc))
            return
        if reason is None:
            gluon_backward.launch(dkdv_config, q, k, v, do, dk, dv, lse, delta, SCALE.value,
                                  CAUSAL.value)
            _launch(_bwd_dq, dq_config, n_q, batch * h_q, dq_args)
            return
        gluon_backward.note_fallback(reason)
        if fused and dq_config is None:  # pinned, no dQ config chosen: the Triton
            dkdv_config = (*DEFAULT_DKDV[:4], "atomic")  # one-kernel backward, default tiles
        else:  # the module's default two kernels with the tuned dQ, or (when the default
            # is the refused Gluon config) its tiles
            dkdv_config = DEFAULT_DKDV if dkdv_config != DEFAULT_DKDV else dkdv_config[:4]
    if not is_atomic(dkdv_config):
        _launch(_bwd_dkdv, dkdv_config, n_k, batch * h_kv, dkdv_args)
        _launch(_bwd_dq, dq_config, n_q, batch * h_q, dq_args)
        return
    _dq_by_atomics(dq, shape, lambda acc: _launch(
        _bwd_dkdv, dkdv_config, n_k, batch * h_kv, (*dkdv_args[:8], acc, *dkdv_args[9:])))


def _dq_by_atomics(dq, shape, dkdv):
    """The one-kernel backward's dQ: `dkdv(acc)` adds dS K into a zeroed fp32
    accumulator [B·Hq, Nq, D_PAD] (allocated here, so the two-kernel backward holds no
    such buffer), then `_bwd_dq_convert` scales it into dQ. shape: (B, Hq, Hkv, Nq, Nk)."""
    batch, h_q, _, n_q, _ = shape
    acc = torch.zeros((batch * h_q, n_q, D_PAD), device=dq.device, dtype=torch.float32)
    dkdv(acc)
    launch(_bwd_dq_convert, (_cdiv(n_q, PRE_BLOCK_M), batch * h_q), acc, dq, *dq.stride(),
           h_q, n_q, BLOCK_M=PRE_BLOCK_M)


def backward(do, q, k, v, out, lse, dlse, dq, dk, dv, dkdv_config=None, dq_config=None):
    """Launch the three kernels. do/q/k/v/out/dq/dk/dv: any strides; lse and dlse
    (or None): [B, Hq, Nq] fp32 contiguous. Nq, Nk >= 1. Writes dq, dk, dv. Each
    kernel's config is chosen by timing once per size class unless given: dQ's first,
    then dK/dV's, each dK/dV candidate timed with the dQ work it implies, so that an
    atomic config (dQ inside the dK/dV kernel, `is_atomic`; never under
    torch.use_deterministic_algorithms) wins only where one kernel beats two."""
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    group = h_q // h_kv
    delta = torch.empty((batch * h_q, n_q), device=q.device, dtype=torch.float32)
    launch(_bwd_preprocess, (_cdiv(n_q, PRE_BLOCK_M), batch * h_q),
           out, do, dlse if dlse is not None else lse, delta, *out.stride(), *do.stride(),
           h_q, n_q, HAS_DLSE=dlse is not None, BLOCK_M=PRE_BLOCK_M)

    # Plain int arithmetic: triton.cdiv / next_power_of_2 cost microseconds per call.
    buckets = (1 << (n_q - 1).bit_length(), 1 << (n_k - 1).bit_length())
    tune_dkdv = TUNE_DKDV
    if torch.are_deterministic_algorithms_enabled():  # atomics add in any order
        tune_dkdv = [c for c in tune_dkdv if not is_atomic(c)]
    # args[8], the atomic configs' dQ accumulator, is set by _rest_of_backward
    dkdv_args = (q, k, v, do, dk, dv, lse, delta, delta, *q.stride(), *k.stride(),
                 *v.stride(), *do.stride(), *dk.stride(), *dv.stride(), h_q, h_kv, group,
                 n_q, n_k, *buckets)
    dq_args = (q, k, v, do, dq, lse, delta, *q.stride(), *k.stride(), *v.stride(),
               *do.stride(), *dq.stride(), h_q, group, n_q, n_k, *buckets)
    shape = (batch, h_q, h_kv, n_q, n_k)
    if dq_config is None and not (dkdv_config is not None and is_atomic(dkdv_config)):
        dq_config = choose_config(
            "dq", TUNE_DQ, DEFAULT_DQ, q.device, n_q, n_k,
            lambda c: _launch(_bwd_dq, c, n_q, batch * h_q, dq_args))
    if dkdv_config is None:
        # Timed with the dQ work each config implies (the tuned dQ pass, or the zeroing
        # and conversion of the atomic accumulator): the choice of one kernel or two.
        dkdv_config = choose_config(
            "dkdv", tune_dkdv, DEFAULT_DKDV, q.device, n_q, n_k,
            lambda c: _rest_of_backward(c, dq_config, dq, dkdv_args, dq_args, shape))
    _rest_of_backward(dkdv_config, dq_config, dq, dkdv_args, dq_args, shape)
''')


# The plain module's imports: the TMA launch helpers and the Gluon dK/dV kernel's gate.
_PLAIN_IMPORTS = (*header.TMA_LAUNCH_IMPORTS,
                  "from ioaware.codegen.attention import gluon_backward")


def render_backward(spec: AttentionSpec, *, interpret: bool = False,
                    profile: DeviceProfile | None = None) -> str:
    """Python source of the backward module for `spec` (see the module docstring), its
    configs sized for `profile` (the present device's for None).

    interpret=True renders fixed small tiles and no autotuner (Triton's interpreter).
    """
    if not header.is_plain(spec):
        return render_general_backward(spec, interpret=interpret, profile=profile)
    (dkdv, dq), (tune_dkdv, tune_dq) = _configs(
        spec, interpret, profile, lambda: (dkdv_configs(spec, profile), dq_configs(spec, profile)))
    return _BACKWARD_TEMPLATE.substitute(
        header.spec_constants(spec),
        preamble=module_preamble(__name__, spec, _PLAIN_IMPORTS),
        gluon_refused=repr(gluon_backward.spec_reason(spec)),
        primitives=header.primitives(interpret),
        tuner=TUNER,
        interpret=str(interpret),
        **_launch_constants(interpret, dkdv, dq, tune_dkdv, tune_dq),
    )


def _configs(spec: AttentionSpec, interpret: bool, profile: DeviceProfile | None,
             candidates) -> tuple[tuple[Config, Config], tuple[list[Config], list[Config]]]:
    """((default dK/dV, default dQ), candidates()) of a module: the interpreter's fixed
    tiles and no tuning under the interpreter."""
    if interpret:
        return (INTERPRET_DKDV, INTERPRET_DQ), ([], [])
    return (default_dkdv_config(spec, profile), default_dq_config(spec, profile)), candidates()


def _launch_constants(interpret: bool, dkdv: Config, dq: Config, tune_dkdv: list[Config],
                      tune_dq: list[Config]) -> dict[str, str]:
    """The launch constants both backward templates declare."""
    return {
        "pre_block_m": str(header.INTERPRET_BLOCK_M if interpret else 64),
        "default_dkdv": repr(dkdv),
        "default_dq": repr(dq),
        "tune_dkdv": format_configs(tune_dkdv),
        "tune_dq": format_configs(tune_dq),
        "tune_min_scores": str(header.TUNE_MIN_SCORES),
    }


# ---- the general Spec: masks, score mods, extra inputs, dropout (issue 3) ------------
#
# Per element, with z the logit in log2 units and P = exp2(z - lse·log2 e):
#     dV += (P ∘ keep / (1-p))ᵀ dO             dP = (dO Vᵀ) ∘ keep / (1-p)
#     dlogit = P ∘ (dP - delta)                 zero where masked, unless semantics "add"
#     dscore = dlogit · ∂score_mod/∂score       dQ += dscore K · scale,  dK += dscoreᵀ Q · scale
#     d input[idx(load)] += dlogit · ∂score_mod/∂load      (atomics, in the dQ kernel)
# Tiles come from the same block map as the forward, built for each kernel's own tile
# (kv-major for dK/dV; kept across calls when the mask reads no tensor); each kernel's
# tile is tuned by its launcher (`choose_config`; the dQ trials' atomic adds are reset).
# Rows with no visible key under fill/add take an all-keys sweep, as forward; under
# neg_inf their NaN reaches dQ and their kv heads' dK, dV, flagged by the preprocess.

_GENERAL_BACKWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}
${general_header}

INTERPRET = ${interpret}
PRE_BLOCK_M = ${pre_block_m}
DEFAULT_DKDV = ${default_dkdv}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
DEFAULT_DQ = ${default_dq}
# Autotuned among, tiles included (each kernel builds its block map for its tile)
TUNE_DKDV = ${tune_dkdv}
TUNE_DQ = ${tune_dq}
TUNE_MIN_SCORES = ${tune_min_scores}


${general_functions}


@triton.jit
def _bwd_preprocess(O, dO, dLse, Delta, Lse, EmptyHeads,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_dob, stride_doh, stride_dom, stride_dod,
                    H_Q, GROUP, N_Q, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO ∘ O) - dlse, fp32 [B·Hq, Nq]. SPREAD_NAN: flags in
    EmptyHeads [B·Hkv] the kv heads read by a row with no visible key (lse = -inf)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, DV_PAD)
    o = _load_rows(O + b * stride_ob + h * stride_oh
                   + rows[:, None] * stride_om + offs_dv[None, :] * stride_od,
                   rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    do = _load_rows(dO + b * stride_dob + h * stride_doh
                    + rows[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                    rows, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    delta = _row_sum(o.to(tl.float32) * do.to(tl.float32))
    row_ptr = pid_bh.to(tl.int64) * N_Q + rows
    if HAS_DLSE:
        delta -= tl.load(dLse + row_ptr, mask=rows < N_Q, other=0.0)
    tl.store(Delta + row_ptr, delta, mask=rows < N_Q)
    if SPREAD_NAN:
        lse = tl.load(Lse + row_ptr, mask=rows < N_Q, other=0.0)
        if _any(lse == float("-inf")):
            tl.atomic_max(EmptyHeads + b * (H_Q // GROUP) + h // GROUP, 1)


@triton.jit
def _lse2(lse):
    """The row's lse in the log2 units of z: a safe empty row (-inf) gives P = 0; a
    fill/add empty row is re-expressed against the clamped fill (forward epilogue)."""
    lse2 = lse * LOG2E
    if SAFE:
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse2)
    if FIX_EMPTY:
        lse2 = tl.where(lse < EMPTY_LSE, (lse - MASK_FILL) * LOG2E + FILL_Z, lse2)
    if TIE_ROWS:
        lse2 = tl.where(_is_tie(lse), MIN_Z, lse2)
    return lse2


@triton.jit
def _is_tie(lse):
    return (lse < TIE_LSE) & (lse > float("-inf"))  # -inf: a row with no visible key


@triton.jit
def _tie_rel(lse):
    """log2 l of a tie row (forward epilogue), 0 elsewhere: P = exp2((z - lse2) - rel)."""
    if TIE_ROWS:
        return tl.where(_is_tie(lse), tl.math.log2((lse - TIE_BASE) / TIE_STEP), 0.0)
    return tl.full(lse.shape, 0.0, tl.float32)


@triton.jit
def _empty_rel(lse, N_K):
    """For a row with no visible key (fill/add): log2 Σ_j exp2(z_j - FILL_Z), so that
    P = exp2((z - FILL_Z) - rel) without subtracting two numbers near -FLT_MAX. A
    constant masked logit (fill, or add with a fill that clamps) gives a uniform row."""
    if UNIFORM_EMPTY:
        return lse * 0.0 + tl.math.log2(tl.full([], 0.0, tl.float32) + N_K)
    return (lse - MASK_FILL) * LOG2E


@triton.jit
def _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom,
             offs_m, offs_n, offs_d, offs_dv, lo, hi, List, b, h, H_Q, N_Q, N_K, seed,
             seed_offset${inputs}, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
             LIST: tl.constexpr, EMPTY_ROWS: tl.constexpr):
    """dK, dV of one kv block from query blocks [lo, hi) (LIST: List[lo:hi]), in the
    transposed layout [kv rows, query rows]. EMPTY_ROWS: only the rows with no visible
    key (fill/add), with every key masked; blocks without such a row are skipped."""
    kv_i = offs_n[:, None]
    for it in range(lo, hi, 1 if LIST else BLOCK_M):
        if LIST:
            start_m = tl.load(List + it) * BLOCK_M
        else:
            start_m = it
        rows = start_m + offs_m
        # MASKED=False: whole query tiles (the map's full tiles are whole), no bounds masks
        if MASKED:
            lse = tl.load(lse_ptr + rows, mask=rows < N_Q, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
        go = True
        if EMPTY_ROWS:
            empty = (lse < EMPTY_LSE) & (rows < N_Q)
            go = _any(empty)
        if go:
            q = _load_rows(q_ptrs + start_m * stride_qm, rows, N_Q, offs_d, HEAD_DIM, EVEN_D,
                           MASKED)
            if MASKED:
                delta = tl.load(delta_ptr + rows, mask=rows < N_Q, other=0.0)
            else:
                delta = tl.load(delta_ptr + rows)
            s_t = _mm(k, tl.trans(q))  # [BLOCK_N, BLOCK_M]
            z_t, visible_t, nat_t = _logits(s_t, b, h, rows[None, :], kv_i, N_Q, N_K${inputs},
                                            MASKED, EMPTY_ROWS)
            if MASKED:
                z_t = tl.where(rows[None, :] < N_Q, z_t, float("-inf"))
            if EMPTY_ROWS:
                p_t = tl.math.exp2((z_t - FILL_Z) - _empty_rel(lse, N_K)[None, :])
                p_t = tl.where(empty[None, :], p_t, 0.0)
            else:
                p_t = tl.math.exp2((z_t - _lse2(lse)[None, :]) - _tie_rel(lse)[None, :])
            do = _load_rows(do_ptrs + start_m * stride_dom, rows, N_Q, offs_dv, HEAD_DIM_V,
                            EVEN_DV, MASKED)
            dp_t = _mm(v, tl.trans(do))
            if DROPOUT:
                keep_t = _keep(seed, seed_offset, b, h, rows[None, :], kv_i, H_Q, N_Q, N_K)
                dv = _mma(tl.where(keep_t, p_t * KEEP_SCALE, 0.0).to(do.dtype), do, dv)
                dp_t = tl.where(keep_t, dp_t * KEEP_SCALE, 0.0)
            else:
                dv = _mma(p_t.to(do.dtype), do, dv)
            ds_t = p_t * (dp_t - delta[None, :])
            if MASKED and not ADD_FILL:
                ds_t = tl.where(visible_t, ds_t, 0.0)
            if HAS_MOD:
                ds_t = ds_t * _dscore(s_t * SCALE, b, h, rows[None, :], kv_i, N_Q, N_K${inputs})
            dk = _mma(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, dO, dK, dV, Lse, Delta, Seed, EmptyHeads, FullCnt, FullList,
              PartCnt, PartList${inputs},
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_dob, stride_doh, stride_dom, stride_dod,
              stride_dkb, stride_dkh, stride_dkn, stride_dkd,
              stride_dvb, stride_dvh, stride_dvn, stride_dvd,
              H_Q, H_KV, GROUP, N_Q, N_K, H_MAP, B_MAP, T_Q, T_K,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (kv block, kv head, batch): dK, dV of BLOCK_N rows, summed over
    the GROUP query heads that read this kv head."""
    pid_n = tl.program_id(0)
    h_kv = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    k = _load_rows(K + b * stride_kb + h_kv * stride_kh
                   + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                   offs_n, N_K, offs_d, HEAD_DIM, EVEN_D, True)
    v = _load_rows(V + b * stride_vb + h_kv * stride_vh
                   + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                   offs_n, N_K, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    dk = tl.full([BLOCK_N, D_PAD], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, DV_PAD], 0.0, dtype=tl.float32)
    if DROPOUT:
        seed = tl.load(Seed)
        seed_offset = tl.load(Seed + 1)
    else:
        seed = 0
        seed_offset = 0
    n_q_whole = (N_Q // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_ptrs = (Q + b * stride_qb + h * stride_qh
                  + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
        do_ptrs = (dO + b * stride_dob + h * stride_doh
                   + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod)
        row0 = (b * H_Q + h) * N_Q
        if USE_MAP:
            map_row = ((b % B_MAP) * H_MAP + h % H_MAP) * T_K + pid_n
            n_full = tl.load(FullCnt + map_row)
            n_part = tl.load(PartCnt + map_row)
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv, 0,
                              n_full, FullList + map_row * T_Q, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, False, True, False)
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv, 0,
                              n_part, PartList + map_row * T_Q, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, True, True, False)
        else:
            # Causal without a mask: query blocks before this kv block's diagonal see none
            # of it. Otherwise (no mask, or a fill that does not drop) every block.
            if CAUSAL and DROP_MASKED:
                m_lo = (start_n // BLOCK_M) * BLOCK_M
                m_full = ((start_n + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
            elif MASKS:
                m_lo = 0
                m_full = N_Q + BLOCK_M  # everything masked: one sweep below
            else:
                m_lo = 0
                m_full = 0
            band_hi = tl.minimum(m_full, N_Q)
            tail_lo = tl.maximum(n_q_whole, tl.minimum(m_full, N_Q))
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv, m_lo,
                              band_hi, FullList, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, True, False, False)
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv,
                              m_full, n_q_whole, FullList, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, False, False, False)
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv,
                              tail_lo, N_Q, FullList, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, True, False, False)
        if FIX_EMPTY:
            dk, dv = _q_sweep(dk, dv, k, v, q_ptrs, do_ptrs, Lse + row0, Delta + row0,
                              stride_qm, stride_dom, offs_m, offs_n, offs_d, offs_dv, 0,
                              N_Q, FullList, b, h, H_Q, N_Q, N_K, seed,
                              seed_offset${inputs}, BLOCK_M, True, False, True)

    if SPREAD_NAN:  # eager: a row with no visible key makes its kv head's dV NaN
        nan_head = tl.load(EmptyHeads + b * H_KV + h_kv) != 0
        if SPREAD_NAN_QK:  # and dK too, when the -inf was added (not filled)
            dk = tl.where(nan_head, float("nan"), dk)
        dv = tl.where(nan_head, float("nan"), dv)
    row_ok = offs_n[:, None] < N_K
    dk_ptrs = (dK + b * stride_dkb + h_kv * stride_dkh
               + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
    dv_ptrs = (dV + b * stride_dvb + h_kv * stride_dvh
               + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd)
    dk = dk * SCALE
    tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=row_ok & (offs_d[None, :] < HEAD_DIM))
    tl.store(dv_ptrs, dv.to(dV.dtype.element_ty),
             mask=row_ok & (offs_dv[None, :] < HEAD_DIM_V))


@triton.jit
def _kv_sweep(dq, q, do, lse2, rel, delta, empty, k_ptrs, v_ptrs, stride_kn, stride_vn,
              start_m, offs_m, offs_n, offs_d, offs_dv, lo, hi, List, b, h, H_Q, N_Q, N_K, seed,
              seed_offset${inputs}${grads}, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              LIST: tl.constexpr, EMPTY_ROWS: tl.constexpr):
    """dQ of one query block (rows start_m + offs_m) from key blocks [lo, hi) (LIST:
    List[lo:hi]); also adds the requires-grad inputs' gradients."""
    q_i = offs_m[:, None]
    for it in range(lo, hi, 1 if LIST else BLOCK_N):
        if LIST:
            start_n = tl.load(List + it) * BLOCK_N
        else:
            start_n = it
        cols = start_n + offs_n
        # MASKED=False: whole key tiles, no bounds masks
        k = _load_rows(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, EVEN_D,
                       MASKED)
        v = _load_rows(v_ptrs + start_n * stride_vn, cols, N_K, offs_dv, HEAD_DIM_V, EVEN_DV,
                       MASKED)
        s = _mm(q, tl.trans(k))
        z, visible, nat = _logits(s, b, h, q_i, cols[None, :], N_Q, N_K${inputs}, MASKED,
                                  EMPTY_ROWS)
        if EMPTY_ROWS:  # lse2 holds _empty_rel here
            p = tl.where(empty[:, None], tl.math.exp2((z - FILL_Z) - lse2[:, None]), 0.0)
        else:
            p = tl.math.exp2((z - lse2[:, None]) - rel[:, None])
        dp = _mm(do, tl.trans(v))
        if DROPOUT:
            keep = _keep(seed, seed_offset, b, h, q_i, cols[None, :], H_Q, N_Q, N_K)
            dp = tl.where(keep, dp * KEEP_SCALE, 0.0)
        dlogit = p * (dp - delta[:, None])
        if MASKED and not ADD_FILL:
            dlogit = tl.where(visible, dlogit, 0.0)
        if MASKED or HAS_MOD:
            # Rows past Nq (a ragged last query block) give dlogit = P·0 without a score
            # mod; a mod's P there may overflow, and its input gradients are atomic adds.
            dlogit = tl.where((q_i < N_Q) & (cols[None, :] < N_K), dlogit, 0.0)
        if HAS_MOD:
            score = s * SCALE
            _input_grads(dlogit, score, b, h, q_i, cols[None, :], N_Q, N_K${inputs}, start_m,
                         start_n${grads})
            ds = dlogit * _dscore(score, b, h, q_i, cols[None, :], N_Q, N_K${inputs})
        else:
            ds = dlogit
        dq = _mma(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _bwd_dq(Q, K, V, dO, dQ, Lse, Delta, Seed, FullCnt, FullList, PartCnt,
            PartList${inputs}${grads},
            stride_qb, stride_qh, stride_qm, stride_qd,
            stride_kb, stride_kh, stride_kn, stride_kd,
            stride_vb, stride_vh, stride_vn, stride_vd,
            stride_dob, stride_doh, stride_dom, stride_dod,
            stride_dqb, stride_dqh, stride_dqm, stride_dqd,
            H_Q, GROUP, N_Q, N_K, H_MAP, B_MAP, T_Q, T_K,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, head, batch): dQ of BLOCK_M rows."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // GROUP
    pid_bh = b * H_Q + h
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q = _load_rows(Q + b * stride_qb + h * stride_qh
                   + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   offs_m, N_Q, offs_d, HEAD_DIM, EVEN_D, True)
    do = _load_rows(dO + b * stride_dob + h * stride_doh
                    + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                    offs_m, N_Q, offs_dv, HEAD_DIM_V, EVEN_DV, True)
    row_ptr = pid_bh * N_Q + offs_m
    lse = tl.load(Lse + row_ptr, mask=offs_m < N_Q, other=0.0)
    lse2 = _lse2(lse)
    rel = _tie_rel(lse)
    empty = (lse < EMPTY_LSE) & (offs_m < N_Q)
    delta = tl.load(Delta + row_ptr, mask=offs_m < N_Q, other=0.0)
    k_ptrs = (K + b * stride_kb + h_kv * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b * stride_vb + h_kv * stride_vh
              + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)
    dq = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)
    if DROPOUT:
        seed = tl.load(Seed)
        seed_offset = tl.load(Seed + 1)
    else:
        seed = 0
        seed_offset = 0

    if USE_MAP:
        map_row = ((b % B_MAP) * H_MAP + h % H_MAP) * T_Q + pid_m
        n_full = tl.load(FullCnt + map_row)
        n_part = tl.load(PartCnt + map_row)
        dq = _kv_sweep(dq, q, do, lse2, rel, delta, empty, k_ptrs, v_ptrs, stride_kn, stride_vn,
                       start_m, offs_m, offs_n, offs_d, offs_dv, 0, n_full,
                       FullList + map_row * T_K, b, h, H_Q, N_Q, N_K, seed,
                       seed_offset${inputs}${grads}, BLOCK_N, False, True, False)
        dq = _kv_sweep(dq, q, do, lse2, rel, delta, empty, k_ptrs, v_ptrs, stride_kn, stride_vn,
                       start_m, offs_m, offs_n, offs_d, offs_dv, 0, n_part,
                       PartList + map_row * T_K, b, h, H_Q, N_Q, N_K, seed,
                       seed_offset${inputs}${grads}, BLOCK_N, True, True, False)
    else:
        if CAUSAL and DROP_MASKED:
            hi = tl.minimum(start_m + BLOCK_M, N_K)
            lo = (tl.minimum(start_m + 1, N_K) // BLOCK_N) * BLOCK_N
        elif MASKS:
            hi = N_K
            lo = 0
        else:
            hi = N_K
            lo = (N_K // BLOCK_N) * BLOCK_N
        dq = _kv_sweep(dq, q, do, lse2, rel, delta, empty, k_ptrs, v_ptrs, stride_kn, stride_vn,
                       start_m, offs_m, offs_n, offs_d, offs_dv, 0, lo, FullList, b, h, H_Q,
                       N_Q, N_K, seed, seed_offset${inputs}${grads}, BLOCK_N, False, False, False)
        dq = _kv_sweep(dq, q, do, lse2, rel, delta, empty, k_ptrs, v_ptrs, stride_kn, stride_vn,
                       start_m, offs_m, offs_n, offs_d, offs_dv, lo, hi, FullList, b, h, H_Q,
                       N_Q, N_K, seed, seed_offset${inputs}${grads}, BLOCK_N, True, False, False)
    if FIX_EMPTY and ADD_FILL:  # under "fill" a masked logit is constant: no gradient
        if _any(empty):
            dq = _kv_sweep(dq, q, do, _empty_rel(lse, N_K), rel, delta, empty, k_ptrs,
                           v_ptrs, stride_kn, stride_vn, start_m, offs_m, offs_n, offs_d,
                           offs_dv, 0, N_K, FullList, b, h, H_Q, N_Q, N_K, seed,
                           seed_offset${inputs}${grads}, BLOCK_N, True, False, True)

    if SPREAD_NAN_QK:  # eager: a row with no visible key, -inf added: a NaN dQ row
        dq = tl.where((lse == float("-inf"))[:, None], float("nan"), dq)
    dq_ptrs = (dQ + b * stride_dqb + h * stride_dqh
               + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd)
    dq = dq * SCALE
    tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty),
             mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


def _maps(config, inputs, batch, h_q, n_q, n_k, kv_major, device):
    if not USE_MAP:
        return None
    return block_map(inputs, batch, h_q, n_q, n_k, config[0], config[1], kv_major, device)


def _launch_dkdv(config, do, q, k, v, lse, delta, empty_heads, dk, dv, inputs, seed):
    bm, bn, warps, stages = config
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    maps = _maps(config, inputs, batch, h_q, n_q, n_k, True, q.device)
    full_cnt, full_list, part_cnt, part_list, h_map, b_map = maps or (lse,) * 4 + (1, 1)
    extra = [s for x in inputs for s in (x, *x.stride())]
    launch(
        _bwd_dkdv, (_cdiv(n_k, bn), h_kv, batch),
        q, k, v, do, dk, dv, lse, delta, seed if seed is not None else lse, empty_heads,
        full_cnt, full_list, part_cnt, part_list, *extra, *q.stride(), *k.stride(), *v.stride(),
        *do.stride(), *dk.stride(), *dv.stride(), h_q, h_kv, h_q // h_kv, n_q, n_k, h_map,
        b_map, _cdiv(n_q, bm), _cdiv(n_k, bn),
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _launch_dq(config, do, q, k, v, lse, delta, dq, inputs, dinputs, seed):
    bm, bn, warps, stages = config
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    maps = _maps(config, inputs, batch, h_q, n_q, n_k, False, q.device)
    full_cnt, full_list, part_cnt, part_list, h_map, b_map = maps or (lse,) * 4 + (1, 1)
    extra = [s for x in inputs for s in (x, *x.stride())]
    grads = [s for x in dinputs for s in (x, *x.stride())]
    launch(
        _bwd_dq, (_cdiv(n_q, bm), h_q, batch),
        q, k, v, do, dq, lse, delta, seed if seed is not None else lse, full_cnt, full_list,
        part_cnt, part_list, *extra, *grads, *q.stride(), *k.stride(), *v.stride(),
        *do.stride(), *dq.stride(), h_q, h_q // h_kv, n_q, n_k, h_map, b_map,
        _cdiv(n_q, bm), _cdiv(n_k, bn),
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _zero(buffers):
    """Zero gradient buffers, stride-0 broadcast views through the storage they view."""
    for x in buffers:
        (x if x._base is None else x._base).zero_()


def backward(do, q, k, v, out, lse, dlse, dq, dk, dv, inputs=(), dinputs=(), seed=None,
             dkdv_config=None, dq_config=None):
    """Launch preprocess, dK/dV and dQ. lse, dlse (or None): [B, Hq, Nq] fp32
    contiguous; dinputs: fp32 gradient buffers of the requires-grad inputs (zeroed,
    atomically added into). Nq, Nk >= 1; B <= 65535. dkdv_config, dq_config:
    (BLOCK_M, BLOCK_N, num_warps, num_stages) to launch with, no autotuning (tile
    sweeps). dq, dk, dv are written whole (any contents on entry)."""
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    delta = torch.empty((batch * h_q, n_q), device=q.device, dtype=torch.float32)
    # SPREAD_NAN: kv heads read by a row with no visible key, flagged in the kernels
    # (no host sync to find them)
    empty_heads = (torch.zeros(batch * h_kv, device=q.device, dtype=torch.int32)
                   if SPREAD_NAN else delta)
    launch(
        _bwd_preprocess, (_cdiv(n_q, PRE_BLOCK_M), batch * h_q),
        out, do, dlse if dlse is not None else lse, delta, lse, empty_heads, *out.stride(),
        *do.stride(), h_q, h_q // h_kv, n_q, HAS_DLSE=dlse is not None, BLOCK_M=PRE_BLOCK_M)
    if dkdv_config is None:
        dkdv_config = choose_config(
            "dkdv", TUNE_DKDV, DEFAULT_DKDV, q.device, n_q, n_k,
            lambda c: _launch_dkdv(c, do, q, k, v, lse, delta, empty_heads, dk, dv, inputs,
                                   seed))
    _launch_dkdv(dkdv_config, do, q, k, v, lse, delta, empty_heads, dk, dv, inputs, seed)
    if dq_config is None:
        # The dQ kernel adds the inputs' gradients atomically: zeroed after the trials.
        dq_config = choose_config(
            "dq", TUNE_DQ, DEFAULT_DQ, q.device, n_q, n_k,
            lambda c: _launch_dq(c, do, q, k, v, lse, delta, dq, inputs, dinputs, seed),
            lambda: _zero(dinputs))
    _launch_dq(dq_config, do, q, k, v, lse, delta, dq, inputs, dinputs, seed)
''')


def render_general_backward(spec: AttentionSpec, *, interpret: bool = False,
                            profile: DeviceProfile | None = None) -> str:
    """Python source of the backward module of a general (non-plain) `spec`."""
    (dkdv, dq), (tune_dkdv, tune_dq) = _configs(
        spec, interpret, profile, lambda: general_backward_configs(spec, profile))
    return _GENERAL_BACKWARD_TEMPLATE.substitute(
        header.general_substitutions(spec, interpret),
        preamble=module_preamble(f"{__name__} (general Spec)", spec,
                                 header.GENERAL_IMPORTS),
        grads=grad_params(spec),
        **_launch_constants(interpret, dkdv, dq, tune_dkdv, tune_dq),
    )


def general_backward_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                             ) -> tuple[list[Config], list[Config]]:
    """(dK/dV, dQ) configs a general Spec autotunes among: each kernel's default, then
    the candidates `tiles.py` takes from the SRAM budget of `profile` (the present
    device's for None), best modelled first (`header.with_default`)."""
    profile = hardware.get_profile(profile)
    sizes = (profile, spec.head_dim, spec.head_dim_v, header.element_bytes(spec))
    return (header.with_default(default_dkdv_config(spec, profile),
                         attention_dkdv_tile_candidates(*sizes, limit=None)),
            header.with_default(default_dq_config(spec, profile),
                         attention_dq_tile_candidates(*sizes, limit=None)))
