"""Render the Triton source of the exact-attention forward (FlashAttention-2) for a Spec.

`render_forward(spec)` returns the text of a Python module holding one `@triton.jit`
kernel, its tiling configs and a launcher `forward(q, k, v, out, lse)`. The Spec's
fields are baked in as module-level `tl.constexpr`s, so each Spec is its own module
and its own compiled binary; sequence lengths, batch and head counts stay runtime
values.

Algorithm (FlashAttention-2, Dao 2023, Algorithm 1 and §3.1), per query block Q_i:

    m = -inf, l = 0, acc = 0                      (fp32, in registers)
    for each key/value block (K_j, V_j):
        S   = Q_i K_jᵀ · scale · log2(e)          (log2 units: exp2 is one MUFU op)
        m'  = max(m, rowmax(S))
        P   = exp2(S - m')
        l   = l · exp2(m - m') + rowsum(P)
        acc = acc · exp2(m - m') + P V_j
        m   = m'
    O_i = acc / l                  lse_i = (m + log2 l) · ln 2   (natural log, fp32)

The division by l is deferred to the end (FA2 §3.1.1 "tweak 1"); only lse, not m and l,
is written for the backward (tweak 2).

HBM traffic per (batch, head), elements of the input dtype, T_m = ceil(Nq / BLOCK_M):
    read  Q: Nq·d                         once, kept in registers
    read  K: T_m·Nk·d,  V: T_m·Nk·dv      streamed once per query block (L2 absorbs most)
    write O: Nq·dv,     lse: 4·Nq bytes
versus the unfused chain (S and P written and read back): + 4·Nq·Nk elements.
Causal halves the K/V reads: blocks above the diagonal are never loaded.
"""

from __future__ import annotations

import string

from ioaware import hardware
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.hardware import DeviceProfile

from .. import exp2poly
from ..render import (
    TUNER,
    format_configs,
    launch_configs,
    module_preamble,
    reduction,
    shared_memory_budget,
)
from . import gluon_forward
from .header import (
    GENERAL_IMPORTS,
    INTERPRET_BLOCK_M,
    INTERPRET_BLOCK_N,
    SCALE_ARGS,
    TMA_LAUNCH_IMPORTS,
    TUNE_MIN_SCORES,
    element_bytes,
    general_substitutions,
    is_plain,
    padded_dims,
    primitives,
    spec_constants,
    with_default,
)
from .tiles import attention_tile_candidates

# (BLOCK_M, BLOCK_N, num_warps, num_stages) or the same with a variant (below) last
Config = tuple
INTERPRET_CONFIG: Config = (INTERPRET_BLOCK_M, INTERPRET_BLOCK_N, 4, 1)

# The sm_90 switches of the plain forward a config may name, "+"-joined, as its fifth
# entry; a 4-tuple is today's kernel (pointer loads, no warp specialisation, a rescale
# every block), the fallback everywhere:
#   tma   Q, K, V loads and the O store through in-kernel TMA tensor descriptors
#         (needs triton.set_allocator: `launch.ensure_scratch_allocator`); a call whose
#         tensors a descriptor cannot address runs the pointer loads instead
#   ws    tl.range(..., warp_specialize=True) on the unmasked K/V loop (producer warps
#         issue the loads, consumer warpgroups the wgmma); not on the causal diagonal
#         loop, whose two-loop shape crashed Triton 3.4
#   lazy  FA4's conditional rescale: the reference max moves only when a row max grows
#         past 2^RESCALE_THRESHOLD, and acc·alpha is skipped when no row's moved
#   poly  a fixed share of P's exp2 on the FMA pipe as a polynomial (FlashAttention-4's
#         split; `codegen/exp2poly.py`, degree by dtype), the rest on MUFU; "polyK" puts
#         1/K of the exp2 there (K in POLY_SHARES), "poly" 1/POLY_SHARE. Pinnable only,
#         out of the tuning space until a GPU has measured it
#   gluon the FA3-style Gluon kernel (gluon_kernel.py: a TMA loader warp, two consumer
#         warpgroups), where gluon_forward's gate admits it, else the default config;
#         "+pingpong" has the warpgroups take turns at the tensor cores
VARIANTS = ("tma", "ws", "lazy", "poly", "gluon")
RESCALE_THRESHOLD = 8.0
# "poly": the shares of P's exp2 the FMA pipe may take (1/K), and the default. The
# chosen entries are fixed per register of the wgmma accumulator (`_on_fma`), so no
# element computes both forms.
POLY_SHARES = (2, 4, 8, 16, 32)
POLY_SHARE = 8


def poly_share(variant: str) -> int:
    """K of a variant string's "polyK" ("poly": POLY_SHARE), 0 without one."""
    if "poly" not in variant:  # every launch asks: no split for the usual variant
        return 0
    for part in variant.split("+"):
        if part.startswith("poly"):
            share = int(part[4:] or POLY_SHARE)
            if share not in POLY_SHARES:
                raise ValueError(f"poly share 1/{share}: not one of {POLY_SHARES}")
            return share
    return 0

# The variant configs timed beside today's candidates on a GPU, best guess first: each
# compiles for sm_90 with Triton 3.6 and 3.9 (scripts/attention_templates_sm90.py
# --variants). The 64-row tiles serve d = 256, where no 128-row pointer tile fits.
# Pruned by the H100 sweep of 2026-12-07: "lazy" and "tma+lazy" never won (reachable
# when pinned, not tuned among).
VARIANT_CANDIDATES: list[Config] = [
    (128, 64, 8, 3, "tma"), (128, 128, 8, 2, "tma"), (128, 64, 8, 2, "tma"),
    (64, 64, 4, 2, "tma"), (64, 32, 4, 2, "tma"),
]
# Each candidate compiles at the first tuned call (a second or so apiece): at most this
# many.
MAX_FORWARD_CONFIGS = 6


def forward_smem_bytes(spec: AttentionSpec, block_m: int, block_n: int, warps: int,
                       stages: int, variant: str = "") -> int:
    """Shared memory of a forward config: the Q tile plus `stages` K and V tiles (the
    TMA variant's barriers and descriptors add bytes, not tiles)."""
    d, dv = padded_dims(spec)
    return element_bytes(spec) * (block_m * d + stages * block_n * (d + dv))


def forward_configs(spec: AttentionSpec, profile: DeviceProfile | None = None) -> list[Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates for autotuning on a GPU.

    BLOCK_M=128 with 8 warps is the FA2 shape for d ≤ 128 on Hopper (each warpgroup
    owns 64 query rows for wgmma); 64-row tiles serve d = 256 and small Nq. Configs
    whose shared memory (Q tile + num_stages K/V tiles) exceeds the tile budget of
    `profile` (`render.shared_memory_budget`; the present device's for None) are dropped
    here; the autotuner skips any other that fails to fit. Today's pointer configs come
    first, then the sm_90 variants (`VARIANT_CANDIDATES`), the untuned default always
    among them; MAX_FORWARD_CONFIGS in all. Pruned by the H100 sweep of 2026-12-07:
    (128, 64, 8, 4), (128, 128, 8, 2) never won; (128, 64, 4, 3) and (64, 128, 4, 2) ran
    at 0.2-0.4× cuDNN. (128, 64, 8, 3) wins at d <= 128, N = 4096; tma at N = 16384 and
    at d = 256. Then the Gluon forward's configs where a GPU measured them ahead and
    this device and Triton admit them (`gluon_forward.tuned_configs`).
    """
    budget = shared_memory_budget(hardware.get_profile(profile))
    candidates = [(128, 64, 8, 3), VARIANT_CANDIDATES[0], VARIANT_CANDIDATES[1],
                  (64, 64, 4, 3), *VARIANT_CANDIDATES[2:]]
    fits = [c for c in candidates if forward_smem_bytes(spec, *c) <= budget]
    default = default_forward_config(spec, profile)  # tuning never ends worse than it
    limit = hardware.get_profile(profile).sram_per_block  # the Gluon kernel's own budget
    gluon = [c for c in gluon_forward.tuned_configs(spec)
             if gluon_forward.smem_bytes(spec, c) <= limit]
    return ([] if default in fits else [default]) + fits[:MAX_FORWARD_CONFIGS - 1] + gluon


def candidate_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                      ) -> list[Config]:
    """The forward's study candidates that fit the shared memory of `profile`'s device
    (the present one's for None): the Gluon kernel's configs (`gluon_forward.CANDIDATES`,
    none for a Spec it refuses), pinnable, out of the tuning space until a GPU has
    measured them."""
    limit = hardware.get_profile(profile).sram_per_block
    return [c for c in gluon_forward.candidate_configs(spec)
            if gluon_forward.smem_bytes(spec, c) <= limit]


def default_forward_config(spec: AttentionSpec, profile: DeviceProfile | None = None) -> Config:
    """A config that fits half the tile budget of `profile` (100 KB on an H100) for every
    head dim and dtype: the launch of short, untuned calls."""
    budget = shared_memory_budget(hardware.get_profile(profile)) // 2
    for config in ((128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)):
        if forward_smem_bytes(spec, *config) <= budget:
            return config
    return 32, 32, 4, 1


_FORWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}
LN2 = tl.constexpr(0.6931471805599453)
# LAZY variant: rescale only when a row max grows past 2^8 (P stays <= 256 in between)
RESCALE_THRESHOLD = tl.constexpr(${rescale_threshold})

INTERPRET = ${interpret}
# Why this Spec cannot take the Gluon forward (None: it can, where Triton and the device
# allow: gluon_forward.call_reason)
GLUON_REFUSED = ${gluon_refused}
# (BLOCK_M, BLOCK_N, num_warps, num_stages[, variant]); variant: "+"-joined sm_90
# switches of `VARIANTS` ("tma", "ws", "lazy", "poly", "gluon"); none is today's pointer
# kernel
DEFAULT_CONFIG = ${default_config}
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_SCORES = ${tune_min_scores}


${primitives}


@triton.jit
def _any(x):
    """Whether any entry of a boolean vector holds (a scalar: uniform control flow)."""
    return ${any_max} > 0


# POLY variant: P's exp2 on the FMA pipe, degree ${poly_degree} for a ${dtype} P (relative
# error ${poly_error} where the result is normal). x <= RESCALE_THRESHOLD here (scores
# minus a row max), so no upper clamp; x <= -127 (a masked -inf included) gives exactly 0.
${exp2_poly}


@triton.jit
def _on_fma(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POLY: tl.constexpr):
    """The entries of a [BLOCK_M, BLOCK_N] score tile whose exp2 takes the polynomial:
    1/POLY of them, chosen by index bits that are fixed per register in Hopper's wgmma
    accumulator (a thread holds rows r and r + 8 of its warp's 16 and the column pair
    2c, 2c + 1 of every 8 columns: column bit 0, column bits >= 3 and row bit 3 are the
    register's, the other bits the lane's or the warp's). The select then folds at
    compile time: no entry computes both forms, no value moves between threads."""
    tl.static_assert(POLY < 8 or BLOCK_N >= 2 * POLY, "poly share finer than the tile")
    rows = tl.arange(0, BLOCK_M)[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
    pick = (cols % 2) == 1  # 1/2: the odd column of each pair
    if POLY >= 4:  # 1/4: ... in the second 8 rows of the warp's 16
        pick = pick & ((rows // 8) % 2 == 1)
    if POLY >= 8:  # 1/8, 1/16, 1/32: ... in one 8-column group of every 2, 4, 8
        pick = pick & ((cols // 8) % (POLY // 4) == POLY // 4 - 1)
    return pick


@triton.jit
def _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn, stride_vn, offs_m,
              offs_n, offs_d, offs_dv, lo, hi, N_K, qk_scale, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
              LAZY: tl.constexpr, BLOCK_M: tl.constexpr, POLY: tl.constexpr):
    """FA2 Algorithm 1, lines 6-10: fold key/value blocks [lo, hi) into (acc, l, m).

    MASKED=False is the steady state: whole blocks, fully visible, no masks at all.
    MASKED=True covers the causal diagonal band and the ragged last block of Nk.
    Per block: read BLOCK_N·(d + dv) elements; 2·BLOCK_M·BLOCK_N·(d + dv) FLOPs.
    TMA: K and V tiles come through tensor descriptors (k_desc, v_desc; rows past Nk and
    lanes past the head dim load as 0), else through the pointer tiles k_ptrs, v_ptrs.
    WARP_SPEC: Triton splits the loop into producer (loads) and consumer (wgmma) warps.
    LAZY: the reference max m moves only when a row's max grows by more than
    RESCALE_THRESHOLD (log2 units), and acc·alpha runs only when some row's m moved.
    POLY: 1/POLY of P's exp2 by `_exp2_poly` on the FMA pipe (`_on_fma`), 0: none.
    qk_scale: QK_SCALE, times s_q·s_k when Q or K is FP8 (the scores' one multiply).
    """
    if not TMA:
        k_ptrs += lo * stride_kn
        v_ptrs += lo * stride_vn
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        cols = start_n + offs_n
        if TMA:
            k = k_desc.load([start_n, 0])
        else:
            k = _load_rows(k_ptrs, cols, N_K, offs_d, HEAD_DIM, EVEN_D, MASKED)
        if FP8_K and not FP8_Q:
            k = k.to(DTYPE)  # exact: every e4m3 value is a bf16 / fp16 value
        s = _mm(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]; FP8 Q and K: the FP8 rate
        if MASKED:
            visible = cols[None, :] < N_K
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None])
            s = tl.where(visible, s, float("-inf"))
        # Online softmax (FA2 §3.1): every row has seen key 0 by now (the first block
        # folded in always holds it), so m_new is finite and no NaN can arise.
        m_tile = _row_max(s) * qk_scale
        if LAZY:
            # FA4's threshold: keep a stale reference max while P = exp2(z - m) stays
            # below 2^RESCALE_THRESHOLD; the epilogue divides by l under the same m,
            # so the result is exact. m_i = -inf (first block) always moves.
            m_new = tl.where(m_tile - m_i > RESCALE_THRESHOLD, tl.maximum(m_i, m_tile), m_i)
        else:
            m_new = tl.maximum(m_i, m_tile)
        x = s * qk_scale - m_new[:, None]
        if POLY:
            p = tl.where(_on_fma(BLOCK_M, BLOCK_N, POLY), _exp2_poly(x), tl.math.exp2(x))
        else:
            p = tl.math.exp2(x)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + _row_sum(p)
        if TMA:
            v = v_desc.load([start_n, 0])
        else:
            v = _load_rows(v_ptrs, cols, N_K, offs_dv, HEAD_DIM_V, EVEN_DV, MASKED)
        if FP8_V:
            v = v.to(DTYPE)  # P V in the output dtype; s_v is applied to O at the end
        if LAZY:
            if _any(m_new > m_i):  # one branch for the whole tile: uniform control flow
                acc = acc * alpha[:, None]
        else:
            acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc)
        m_i = m_new
        if not TMA:
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, Lse,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              H_Q, GROUP, N_Q, N_K, N_Q_BUCKET, N_K_BUCKET, ScaleQ, ScaleK, ScaleV,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr = False,
              WARP_SPEC: tl.constexpr = False, LAZY: tl.constexpr = False,
              POLY: tl.constexpr = 0):
    """One program per (query block, batch·head). Out: [B, Hq, Nq, dv]; Lse: [B·Hq, Nq].

    IO of one program: read BLOCK_M·d of Q once, then every visible K/V block once;
    write BLOCK_M·dv of O and BLOCK_M fp32 of lse. S and P never leave registers.
    TMA, WARP_SPEC, LAZY, POLY: the sm_90 variants (`_kv_sweep`); TMA needs unit stride on
    the head dim and 16-byte aligned bases and strides (the launcher checks).
    ScaleQ, ScaleK, ScaleV: one fp32 each, the per-tensor scales of the FP8 operands
    (read only for those; the others are placeholders).
    """
    pid_m = tl.program_id(0)
    if CAUSAL:
        # Heavy (late) query blocks first: the tail of the launch is short blocks.
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = pid_bh % H_Q
    h_kv = (h // GROUP).to(tl.int64)  # GQA: query head h reads kv head h // (Hq / Hkv)
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    q_ptrs = (Q + b * stride_qb + h * stride_qh
              + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
    k_ptrs = (K + b * stride_kb + h_kv * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b * stride_vb + h_kv * stride_vh
              + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)

    if TMA:
        # One descriptor per (batch, head) matrix: the TMA unit clips at [N, HEAD_DIM],
        # zero-filling loads and dropping stores past it, so no masks are built.
        q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh,
                                           shape=[N_Q, HEAD_DIM], strides=[stride_qm, 1],
                                           block_shape=[BLOCK_M, D_PAD])
        k_desc = tl.make_tensor_descriptor(K + b * stride_kb + h_kv * stride_kh,
                                           shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, D_PAD])
        v_desc = tl.make_tensor_descriptor(V + b * stride_vb + h_kv * stride_vh,
                                           shape=[N_K, HEAD_DIM_V], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, DV_PAD])
        q = q_desc.load([start_m, 0])
    else:
        k_desc = K  # unused placeholders: the pointer tiles serve
        v_desc = V
        # FA2 Algorithm 1, line 4: Q_i read from HBM once, held in registers throughout.
        q = _load_rows(q_ptrs, offs_m, N_Q, offs_d, HEAD_DIM, EVEN_D, True)
    # FP8: S = s_q·s_k·(Q8 K8ᵀ), so the scales fold into the exp2 scale (no per-score
    # multiply); a lone FP8 Q widens to DTYPE to meet a 16-bit K.
    qk_scale = QK_SCALE
    if FP8_Q:
        qk_scale = qk_scale * tl.load(ScaleQ)
        if not FP8_K:
            q = q.to(DTYPE)
    if FP8_K:
        qk_scale = qk_scale * tl.load(ScaleK)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)

    # Split the key range into blocks every row of this query block sees whole
    # ([0, lo): no masks) and the rest ([lo, hi): causal diagonal band and/or the
    # ragged end of Nk). Causal: keys past the last row (>= start_m + BLOCK_M) are
    # never visited -- the loop bound is the block skipping.
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, N_K)
        lo = (tl.minimum(start_m + 1, N_K) // BLOCK_N) * BLOCK_N
    else:
        hi = N_K
        lo = (N_K // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn,
                              stride_vn, offs_m, offs_n, offs_d, offs_dv, 0, lo, N_K, qk_scale,
                              BLOCK_N, False, TMA, WARP_SPEC, LAZY, BLOCK_M, POLY)
    acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, stride_kn,
                              stride_vn, offs_m, offs_n, offs_d, offs_dv, lo, hi, N_K, qk_scale,
                              BLOCK_N, True, TMA, WARP_SPEC and not CAUSAL, LAZY, BLOCK_M,
                              POLY)

    # Epilogue (FA2 Algorithm 1, lines 12-15): one division per row, natural-log lse.
    if FP8_V:
        out = acc * (tl.load(ScaleV) / l_i)[:, None]  # O = s_v · P V8 / l
    else:
        out = acc * (1.0 / l_i)[:, None]
    lse = (m_i + tl.math.log2(l_i)) * LN2
    row_ok = offs_m < N_Q
    if TMA:
        o_desc = tl.make_tensor_descriptor(Out + b * stride_ob + h * stride_oh,
                                           shape=[N_Q, HEAD_DIM_V], strides=[stride_om, 1],
                                           block_shape=[BLOCK_M, DV_PAD])
        o_desc.store([start_m, 0], out.to(Out.dtype.element_ty))
    else:
        o_ptrs = (Out + b * stride_ob + h * stride_oh
                  + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od)
        if EVEN_DV:
            tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
        else:
            tl.store(o_ptrs, out.to(Out.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)


${tuner}


${scale_args}


def _launch(config, q, k, v, out, lse, scales):
    if gluon_forward.is_gluon(config):
        reason = GLUON_REFUSED or gluon_forward.call_reason(q, k, v, out)
        if reason is None:
            gluon_forward.launch(config, q, k, v, out, lse, SCALE.value, CAUSAL.value)
            return
        gluon_forward.note_fallback(reason)
        config = DEFAULT_CONFIG
    bm, bn, warps, stages = config[:4]
    variant = config[4] if len(config) > 4 else ""
    tma = "tma" in variant and tma_addressable(q, k, v, out)
    if tma:
        ensure_scratch_allocator()  # in-kernel descriptors live in global scratch
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    # Plain int arithmetic: triton.cdiv / next_power_of_2 cost microseconds per call.
    launch(_attn_fwd, (_cdiv(n_q, bm), batch * h_q),
           q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
           h_q, h_q // h_kv, n_q, n_k, 1 << (n_q - 1).bit_length(),
           1 << (n_k - 1).bit_length(), *scales,
           BLOCK_M=bm, BLOCK_N=bn, TMA=tma, WARP_SPEC="ws" in variant,
           LAZY="lazy" in variant, POLY=poly_share(variant), num_warps=warps,
           num_stages=stages)


def forward(q, k, v, out, lse, config=None, scales=()):
    """Launch: q [B,Hq,Nq,d], k [B,Hkv,Nk,d], v [B,Hkv,Nk,dv] (any strides) ->
    out [B,Hq,Nq,dv] (any strides), lse [B,Hq,Nq] fp32 contiguous. Nq, Nk >= 1.
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages[, variant]), else chosen by timing
    once per size class (`choose_config`). scales: the FP8 operands' one-element fp32
    scales, in the order of FP8_Q, FP8_K, FP8_V (none for a 16-bit Spec)."""
    scales = _scale_args(scales, lse)
    if config is None:
        config = choose_config("forward", TUNE_CONFIGS, DEFAULT_CONFIG, q.device, q.shape[2],
                               k.shape[2], lambda c: _launch(c, q, k, v, out, lse, scales))
    _launch(config, q, k, v, out, lse, scales)
''')


# The plain module's imports: the TMA launch helpers and the Gluon forward's gate.
_PLAIN_IMPORTS = (*TMA_LAUNCH_IMPORTS, "from ioaware.codegen.attention import gluon_forward",
                  "from ioaware.codegen.attention.forward import poly_share")


def render_forward(spec: AttentionSpec, *, interpret: bool = False,
                   profile: DeviceProfile | None = None) -> str:
    """Python source of the forward module for `spec`, its configs sized for `profile`
    (the present device's for None).

    interpret=True renders fixed small tiles (INTERPRET_BLOCK_M × INTERPRET_BLOCK_N)
    and no autotuner, for Triton's CPU interpreter. A Spec with masks, score mods,
    inputs or dropout renders the general template (`render_general_forward`).
    """
    if not is_plain(spec):
        return render_general_forward(spec, interpret=interpret, profile=profile)
    default, configs = launch_configs(interpret, INTERPRET_CONFIG,
                                      lambda: default_forward_config(spec, profile),
                                      lambda: forward_configs(spec, profile))
    degree = exp2poly.attention_degree(spec.dtype)
    return _FORWARD_TEMPLATE.substitute(
        spec_constants(spec),
        preamble=module_preamble(__name__, spec, _PLAIN_IMPORTS),
        gluon_refused=repr(gluon_forward.spec_reason(spec)),
        primitives=primitives(interpret),
        any_max=reduction("max", "x.to(tl.int32)", 0, interpret),
        rescale_threshold=repr(RESCALE_THRESHOLD),
        poly_degree=str(degree),
        poly_error=f"{exp2poly.ERROR[degree]:.2g}",
        exp2_poly=exp2poly.render("_exp2_poly", degree=degree, lower=-127.0, upper=None),
        tuner=TUNER,
        interpret=str(interpret),
        default_config=repr(default),
        tune_configs=format_configs(configs),
        tune_min_scores=str(TUNE_MIN_SCORES),
        scale_args=SCALE_ARGS,
    )


# ---- the general Spec: masks, score mods, extra inputs, dropout (issue 3) ------------

_GENERAL_FORWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}
${general_header}
LN2 = tl.constexpr(0.6931471805599453)

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
# Autotuned among (tiles included: the block map is built for the chosen tile)
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_SCORES = ${tune_min_scores}


${general_functions}


@triton.jit
def _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
              offs_d, offs_dv, lo, hi, List, b, h, H_Q, N_Q, N_K, seed, seed_offset,
              qk_deq${inputs},
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, LIST: tl.constexpr,
              EMPTY_ROWS: tl.constexpr):
    """FA2 Algorithm 1, lines 6-10, over key blocks [lo, hi) (LIST: over the block
    indices List[lo:hi] of the block map). MASKED=False: whole, fully visible tiles.
    qk_deq: s_q·s_k when Q or K is FP8 (one multiply per score: the masks and score
    mods read the dequantized score), unused otherwise."""
    q_i = offs_m[:, None]
    for it in range(lo, hi, 1 if LIST else BLOCK_N):
        if LIST:
            start_n = tl.load(List + it) * BLOCK_N
        else:
            start_n = it
        cols = start_n + offs_n
        k = _load_rows(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, EVEN_D, MASKED)
        if FP8_K and not FP8_Q:
            k = k.to(DTYPE)  # exact: every e4m3 value is a bf16 / fp16 value
        s = _mm(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        if FP8_Q or FP8_K:
            s = s * qk_deq
        # an unmasked tile is a whole key block: from the block map's full list (whole
        # tiles only), or below lo = a multiple of BLOCK_N no larger than N_K
        z, visible, nat = _logits(s, b, h, q_i, cols[None, :], N_Q, N_K${inputs},
                                  MASKED, EMPTY_ROWS, not MASKED)
        # Online softmax; a row that has seen only masked keys so far has m = -inf,
        # and exp2(-inf - 0) = 0 keeps it clean (no -inf - -inf).
        m_new = tl.maximum(m_i, _row_max(z))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(z - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + _row_sum(p)
        if DROPOUT:  # F.dropout on P: the normaliser l keeps every entry
            keep = _keep(seed, seed_offset, b, h, q_i, cols[None, :], H_Q, N_Q, N_K)
            p = tl.where(keep, p * KEEP_SCALE, 0.0)
        v = _load_rows(v_ptrs + start_n * stride_vn, cols, N_K, offs_dv, HEAD_DIM_V, EVEN_DV,
                       MASKED)
        if FP8_V:
            v = v.to(DTYPE)  # P V in the output dtype; s_v is applied to O at the end
        acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, Lse, Seed, FullCnt, FullList, PartCnt, PartList${inputs},
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              H_Q, GROUP, N_Q, N_K, H_MAP, B_MAP, T_Q, T_K, ScaleQ, ScaleK, ScaleV,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, head, batch). Out: [B, Hq, Nq, dv]; Lse: [B·Hq, Nq].
    ScaleQ, ScaleK, ScaleV: the FP8 operands' fp32 scales (placeholders for the rest)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # heavy (late) query blocks first
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // GROUP  # GQA: query head h reads kv head h // (Hq / Hkv)
    pid_bh = b * H_Q + h

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q_ptrs = (Q + b * stride_qb + h * stride_qh
              + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
    k_ptrs = (K + b * stride_kb + h_kv * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b * stride_vb + h_kv * stride_vh
              + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)
    q = _load_rows(q_ptrs, offs_m, N_Q, offs_d, HEAD_DIM, EVEN_D, True)
    qk_deq = 1.0
    if FP8_Q:
        qk_deq = tl.load(ScaleQ)
        if not FP8_K:
            q = q.to(DTYPE)
    if FP8_K:
        qk_deq = qk_deq * tl.load(ScaleK)
    if DROPOUT:
        seed = tl.load(Seed)
        seed_offset = tl.load(Seed + 1)
    else:
        seed = 0
        seed_offset = 0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)

    if USE_MAP:
        # The block map's lists for this query block: full tiles unmasked, partial masked.
        map_row = ((b % B_MAP) * H_MAP + h % H_MAP) * T_Q + pid_m
        n_full = tl.load(FullCnt + map_row)
        n_part = tl.load(PartCnt + map_row)
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, 0, n_full,
                                  FullList + map_row * T_K, b, h, H_Q, N_Q, N_K, seed,
                                  seed_offset, qk_deq${inputs}, BLOCK_N, False, True, False)
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, 0, n_part,
                                  PartList + map_row * T_K, b, h, H_Q, N_Q, N_K, seed,
                                  seed_offset, qk_deq${inputs}, BLOCK_N, True, True, False)
    else:
        # Causal without a mask: loop bounds skip the tiles above the diagonal. Masked
        # logits that do not drop (a mild fill) are visited everywhere, all masked.
        if CAUSAL and DROP_MASKED:
            hi = tl.minimum(start_m + BLOCK_M, N_K)
            lo = (tl.minimum(start_m + 1, N_K) // BLOCK_N) * BLOCK_N
        elif MASKS:
            hi = N_K
            lo = 0
        else:
            hi = N_K
            lo = (N_K // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, 0, lo, FullList, b, h,
                                  H_Q, N_Q, N_K, seed, seed_offset, qk_deq${inputs},
                                  BLOCK_N, False, False, False)
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, lo, hi, FullList, b, h,
                                  H_Q, N_Q, N_K, seed, seed_offset, qk_deq${inputs},
                                  BLOCK_N, True, False, False)
    # Rows that saw no visible key: under fill / add semantics eager gives them a
    # softmax over every key's masked logit. Rare (padding rows): one more sweep, only
    # when this block holds such a row.
    empty = (l_i == 0.0) & (offs_m < N_Q)
    if FIX_EMPTY:
        if _any(empty):
            acc2 = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)
            l2 = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
            m2 = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            acc2, l2, m2 = _kv_sweep(acc2, l2, m2, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                     offs_m, offs_n, offs_d, offs_dv, 0, N_K, FullList, b,
                                     h, H_Q, N_Q, N_K, seed, seed_offset, qk_deq${inputs},
                                     BLOCK_N, True, False, True)
            acc = tl.where(empty[:, None], acc2, acc)
            l_i = tl.where(empty, l2, l_i)
            m_i = tl.where(empty, m2, m_i)

    # Epilogue: a row with no visible key is NaN (neg_inf: 0/0, as eager) or 0 (safe).
    if SAFE:
        out = tl.where((l_i > 0.0)[:, None], acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None], 0.0)
    else:
        out = acc * (1.0 / l_i)[:, None]
    if FP8_V:
        out = out * tl.load(ScaleV)  # O = s_v · P V8 / l
    lse = (m_i + tl.math.log2(l_i)) * LN2
    if FIX_EMPTY:
        # Masked logits are clamped to fp32 in log2 units; the natural-log lse of such a
        # row is mask_fill + (its offset from the clamped fill) + ln l.
        lse = tl.where(empty, (m_i - FILL_Z + tl.math.log2(l_i)) * LN2 + MASK_FILL, lse)
    if TIE_ROWS:
        lse = tl.where((m_i == MIN_Z) & (l_i > 0.0),
                       TIE_BASE + tl.minimum(l_i, TIE_MAX_COUNT) * TIE_STEP, lse)
    o_ptrs = (Out + b * stride_ob + h * stride_oh
              + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od)
    row_ok = offs_m < N_Q
    if EVEN_DV:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + pid_bh * N_Q + offs_m, lse, mask=row_ok)


${scale_args}


def _launch(config, q, k, v, out, lse, inputs, seed, scales):
    bm, bn, warps, stages = config
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    t_q, t_k = _cdiv(n_q, bm), _cdiv(n_k, bn)
    if USE_MAP:
        full_cnt, full_list, part_cnt, part_list, h_map, b_map = block_map(
            inputs, batch, h_q, n_q, n_k, bm, bn, False, q.device)
    else:
        full_cnt = full_list = part_cnt = part_list = lse
        h_map = b_map = 1
    extra = [s for x in inputs for s in (x, *x.stride())]
    launch(
        _attn_fwd, (t_q, h_q, batch),
        q, k, v, out, lse, seed if seed is not None else lse, full_cnt, full_list, part_cnt,
        part_list, *extra, *q.stride(), *k.stride(), *v.stride(), *out.stride(), h_q,
        h_q // h_kv, n_q, n_k, h_map, b_map, t_q, t_k, *scales,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def forward(q, k, v, out, lse, inputs=(), seed=None, config=None, scales=()):
    """Launch: q [B,Hq,Nq,d], k [B,Hkv,Nk,d], v [B,Hkv,Nk,dv], inputs (any strides) ->
    out [B,Hq,Nq,dv], lse [B,Hq,Nq] fp32 contiguous. Nq, Nk >= 1; B <= 65535.
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to launch with, no autotuning
    (tile sweeps). scales: the FP8 operands' one-element fp32 scales (q, k, v order)."""
    scales = _scale_args(scales, lse)
    if config is None:
        config = choose_config(
            "forward", TUNE_CONFIGS, DEFAULT_CONFIG, q.device, q.shape[2], k.shape[2],
            lambda c: _launch(c, q, k, v, out, lse, inputs, seed, scales))
    _launch(config, q, k, v, out, lse, inputs, seed, scales)
''')


# Forward tiles measured fastest for masked / modified Specs, tried right after the
# default when the SRAM budget admits them: on an H100 (scripts/attn_sweep.py,
# 2026-11-22; bf16, d = 128, B=2, H=16, N=8192) 64 x 64 on 4 warps, 3 stages beat every
# 128-row tile for a 512 sliding window (252 against 289 µs), a document mask (494
# against 563) and ALiBi (1294 against 1357). The model ranks taller tiles first (fewer
# K/V re-reads), but with masks the shorter tile leaves fewer partial tiles and twice the
# programs.
MEASURED_FORWARD = [(64, 64, 4, 3)]


def general_forward_configs(spec: AttentionSpec, profile: DeviceProfile | None = None
                            ) -> list[Config]:
    """Forward configs a general Spec autotunes among: the default, then the candidates
    `tiles.py` takes from the SRAM budget of `profile` (the present device's for
    None), best modelled first; MAX_TUNE_CONFIGS in all."""
    profile = hardware.get_profile(profile)
    candidates = attention_tile_candidates(profile, spec.head_dim, spec.head_dim_v,
                                           element_bytes(spec), limit=None)
    measured = [c for c in MEASURED_FORWARD if c in candidates]
    return with_default(default_forward_config(spec, profile), measured + candidates)


def render_general_forward(spec: AttentionSpec, *, interpret: bool = False,
                           profile: DeviceProfile | None = None) -> str:
    """Python source of the forward module of a general (non-plain) `spec`."""
    default, tune = launch_configs(interpret, INTERPRET_CONFIG,
                                   lambda: default_forward_config(spec, profile),
                                   lambda: general_forward_configs(spec, profile))
    return _GENERAL_FORWARD_TEMPLATE.substitute(
        general_substitutions(spec, interpret),
        preamble=module_preamble(f"{__name__} (general Spec)", spec,
                                 GENERAL_IMPORTS),
        default_config=repr(default),
        tune_configs=format_configs(tune),
        tune_min_scores=str(TUNE_MIN_SCORES),
        scale_args=SCALE_ARGS,
    )
