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

import dataclasses
import math
import string

from ioaware.spec import AttentionSpec

# Tiles used under the Triton interpreter: small, so tests are fast and many blocks,
# block boundaries and diagonal-band cases are exercised; BLOCK_M != BLOCK_N on
# purpose, so loop bounds that silently assume square tiles fail the tests.
INTERPRET_BLOCK_M = 32
INTERPRET_BLOCK_N = 16

# Autotune only where the launch is long enough for the choice to matter; below this
# many score entries (Nq·Nk) a fixed config is used and no tuning time is spent.
TUNE_MIN_SCORES = 1024 * 1024


def padded_dim(d: int) -> int:
    """Head dim rounded up to a power of two ≥ 16 (tl.arange and tl.dot need it)."""
    return max(16, 1 << (d - 1).bit_length())


def element_bytes(spec: AttentionSpec) -> int:
    return 4 if spec.dtype == "float32" else 2


def spec_constants(spec: AttentionSpec) -> dict[str, str]:
    """Substitutions shared by the forward and backward templates."""
    d_pad, dv_pad = padded_dim(spec.head_dim), padded_dim(spec.head_dim_v)
    values = {
        # one field per line: a mask expression can be long
        "spec_fields": "".join(f"\n    {f.name}={getattr(spec, f.name)!r},"
                               for f in dataclasses.fields(spec)),
        "head_dim": str(spec.head_dim),
        "head_dim_v": str(spec.head_dim_v),
        "d_pad": str(d_pad),
        "dv_pad": str(dv_pad),
        "causal": str(spec.causal),
        # repr() of a float round-trips exactly, so the baked scale is the Spec's scale.
        "scale": repr(float(spec.scale)),
        "qk_scale": repr(float(spec.scale) * math.log2(math.e)),
        # fp32 products in IEEE fp32 (matches eager fp32); the option only applies to
        # fp32 operands, 16-bit operands always run on tensor cores.
        "precision": '"ieee"' if spec.dtype == "float32" else '"tf32"',
    }
    values["spec_header"] = _SPEC_HEADER.substitute(values)
    return values


# The Spec's constants as the forward and backward modules both declare them.
_SPEC_HEADER = string.Template("""\
# ---- the Spec, baked in: a different Spec is a different module --------------------
HEAD_DIM = tl.constexpr(${head_dim})
HEAD_DIM_V = tl.constexpr(${head_dim_v})
D_PAD = tl.constexpr(${d_pad})  # power of two >= HEAD_DIM; padded lanes load as 0
DV_PAD = tl.constexpr(${dv_pad})
EVEN_D = tl.constexpr(${head_dim} == ${d_pad})  # no head-dim mask needed on loads
EVEN_DV = tl.constexpr(${head_dim_v} == ${dv_pad})
CAUSAL = tl.constexpr(${causal})
SCALE = tl.constexpr(${scale})
QK_SCALE = tl.constexpr(${qk_scale})  # scale * log2(e): scores in log2 units for exp2
DOT_PRECISION = tl.constexpr(${precision})""")


_PRIMITIVES_COMPILED = """\
@triton.jit
def _mm(a, b):
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _mma(a, b, acc):
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _row_max(x):
    return tl.max(x, 1)


@triton.jit
def _row_sum(x):
    return tl.sum(x, 1)"""

# Under the interpreter, two workarounds, both exact:
# - tl.dot on bf16 operands returns garbage in the interpreter (triton 3.9), so operands
#   are widened to fp32 first. A 16-bit product is exact in fp32, which is what the
#   tensor cores compute too.
# - tl.max and tl.sum are themselves @triton.jit functions, made compiled-only when
#   triton was imported without TRITON_INTERPRET, so an interpreted kernel cannot call
#   them. The interpreter runs tl.reduce natively (numpy) when handed their combine
#   functions, which is what tl.max / tl.sum reduce with when compiled.
_PRIMITIVES_INTERPRETED = """\
@triton.jit
def _mm(a, b):
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _mma(a, b, acc):
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _row_max(x):
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@triton.jit
def _row_sum(x):
    return tl.reduce(x, 1, tl.standard._sum_combine)"""


# Shared by forward and backward: a tile load that masks only where it can overhang.
_LOAD_ROWS = '''\
@triton.jit
def _load_rows(ptrs, rows, n_rows, cols, N_COLS: tl.constexpr, EVEN_COLS: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a [rows, cols] tile; masks only where the tile can overhang the tensor."""
    if CHECK_ROWS:
        if EVEN_COLS:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < N_COLS),
                           other=0.0)
    else:
        if EVEN_COLS:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=cols[None, :] < N_COLS, other=0.0)
    return tile'''


def primitives(interpret: bool) -> str:
    """Source of `_mm`, `_mma` (tile products, fp32 result), `_row_max`, `_row_sum` and
    `_load_rows` (a masked tile load), shared by the forward and backward modules."""
    body = _PRIMITIVES_INTERPRETED if interpret else _PRIMITIVES_COMPILED
    return body + "\n\n\n" + _LOAD_ROWS


def format_configs(configs: list[tuple[int, int, int, int]]) -> str:
    """A list literal of config tuples, one per line (rendered modules stay ≤ 100 columns)."""
    if not configs:
        return "[]"
    return "[\n" + "".join(f"    {c!r},\n" for c in configs) + "]"


def forward_smem_bytes(spec: AttentionSpec, block_m: int, block_n: int, warps: int,
                       stages: int) -> int:
    """Shared memory of a forward config: the Q tile plus `stages` K and V tiles."""
    d, dv = padded_dim(spec.head_dim), padded_dim(spec.head_dim_v)
    return element_bytes(spec) * (block_m * d + stages * block_n * (d + dv))


def forward_configs(spec: AttentionSpec) -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates for autotuning on a GPU.

    BLOCK_M=128 with 8 warps is the FA2 shape for d ≤ 128 on Hopper (each warpgroup
    owns 64 query rows for wgmma); 64-row tiles serve d = 256 and small Nq. Configs
    whose shared memory (Q tile + num_stages K/V tiles) clearly exceeds the ~227 KB of
    an H100 are dropped here; the autotuner skips any other that fails to fit.
    """
    candidates = [
        (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 64, 4, 3),
        (64, 64, 4, 3), (64, 128, 4, 2),
    ]
    fits = [c for c in candidates if forward_smem_bytes(spec, *c) <= 200 * 1024]
    return fits or [default_forward_config(spec)]


def default_forward_config(spec: AttentionSpec) -> tuple[int, int, int, int]:
    """A config that fits ~100 KB of shared memory for every head dim and dtype."""
    for config in ((128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)):
        if forward_smem_bytes(spec, *config) <= 100 * 1024:
            return config
    return 32, 32, 4, 1


_FORWARD_TEMPLATE = string.Template('''\
"""Generated by ioaware.codegen.attention_fwd. Do not edit.

AttentionSpec(${spec_fields})
"""

import triton
import triton.language as tl

${spec_header}
LN2 = tl.constexpr(0.6931471805599453)

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_SCORES = ${tune_min_scores}


${primitives}


@triton.jit
def _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
              offs_d, offs_dv, lo, hi, N_K, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """FA2 Algorithm 1, lines 6-10: fold key/value blocks [lo, hi) into (acc, l, m).

    MASKED=False is the steady state: whole blocks, fully visible, no masks at all.
    MASKED=True covers the causal diagonal band and the ragged last block of Nk.
    Per block: read BLOCK_N·(d + dv) elements; 2·BLOCK_M·BLOCK_N·(d + dv) FLOPs.
    """
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(k_ptrs, cols, N_K, offs_d, HEAD_DIM, EVEN_D, MASKED)
        s = _mm(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        if MASKED:
            visible = cols[None, :] < N_K
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None])
            s = tl.where(visible, s, float("-inf"))
        # Online softmax (FA2 §3.1): every row has seen key 0 by now (the first block
        # folded in always holds it), so m_new is finite and no NaN can arise.
        m_new = tl.maximum(m_i, _row_max(s) * QK_SCALE)
        p = tl.math.exp2(s * QK_SCALE - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + _row_sum(p)
        v = _load_rows(v_ptrs, cols, N_K, offs_dv, HEAD_DIM_V, EVEN_DV, MASKED)
        acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, Lse,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              H_Q, GROUP, N_Q, N_K, N_Q_BUCKET, N_K_BUCKET,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, batch·head). Out: [B, Hq, Nq, dv]; Lse: [B·Hq, Nq].

    IO of one program: read BLOCK_M·d of Q once, then every visible K/V block once;
    write BLOCK_M·dv of O and BLOCK_M fp32 of lse. S and P never leave registers.
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

    # FA2 Algorithm 1, line 4: Q_i read from HBM once, held in registers throughout.
    q = _load_rows(q_ptrs, offs_m, N_Q, offs_d, HEAD_DIM, EVEN_D, True)

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
    acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                              offs_m, offs_n, offs_d, offs_dv, 0, lo, N_K, BLOCK_N, False)
    acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                              offs_m, offs_n, offs_d, offs_dv, lo, hi, N_K, BLOCK_N, True)

    # Epilogue (FA2 Algorithm 1, lines 12-15): one division per row, natural-log lse.
    out = acc * (1.0 / l_i)[:, None]
    lse = (m_i + tl.math.log2(l_i)) * LN2
    o_ptrs = (Out + b * stride_ob + h * stride_oh
              + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od)
    row_ok = offs_m < N_Q
    if EVEN_DV:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)


if INTERPRET or not TUNE_CONFIGS:
    _attn_fwd_tuned = None
else:
    # Keyed on the power-of-two buckets of Nq and Nk: one tuning per size class.
    _attn_fwd_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                 for bm, bn, w, s in TUNE_CONFIGS],
        key=["N_Q_BUCKET", "N_K_BUCKET"],
    )(_attn_fwd)


def forward(q, k, v, out, lse):
    """Launch: q [B,Hq,Nq,d], k [B,Hkv,Nk,d], v [B,Hkv,Nk,dv] (any strides) ->
    out [B,Hq,Nq,dv] (any strides), lse [B,Hq,Nq] fp32 contiguous. Nq, Nk >= 1."""
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    args = (q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            h_q, h_q // h_kv, n_q, n_k,
            triton.next_power_of_2(n_q), triton.next_power_of_2(n_k))

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * h_q)

    if _attn_fwd_tuned is not None and n_q * n_k >= TUNE_MIN_SCORES:
        _attn_fwd_tuned[grid](*args)
    else:
        bm, bn, warps, stages = DEFAULT_CONFIG
        _attn_fwd[grid](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
''')


def render_forward(spec: AttentionSpec, *, interpret: bool = False) -> str:
    """Python source of the forward module for `spec`.

    interpret=True renders fixed small tiles (INTERPRET_BLOCK_M × INTERPRET_BLOCK_N)
    and no autotuner, for Triton's CPU interpreter.
    """
    if interpret:
        default = (INTERPRET_BLOCK_M, INTERPRET_BLOCK_N, 4, 1)
        configs: list[tuple[int, int, int, int]] = []
    else:
        default, configs = default_forward_config(spec), forward_configs(spec)
    return _FORWARD_TEMPLATE.substitute(
        spec_constants(spec),
        primitives=primitives(interpret),
        interpret=str(interpret),
        default_config=repr(default),
        tune_configs=format_configs(configs),
        tune_min_scores=str(TUNE_MIN_SCORES),
    )
