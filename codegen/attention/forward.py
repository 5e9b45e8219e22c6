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
# Configs a general kernel is timed under at its first launch per size class (each one
# compiles: a few seconds apiece).
MAX_TUNE_CONFIGS = 6


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
    # Plain int arithmetic: triton.cdiv / next_power_of_2 cost microseconds per call.
    args = (q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            h_q, h_q // h_kv, n_q, n_k, 1 << (n_q - 1).bit_length(),
            1 << (n_k - 1).bit_length())

    def grid(meta):
        return (-(-n_q // meta["BLOCK_M"]), batch * h_q)

    if _attn_fwd_tuned is not None and n_q * n_k >= TUNE_MIN_SCORES:
        _attn_fwd_tuned[grid](*args)
    else:
        bm, bn, warps, stages = DEFAULT_CONFIG
        _attn_fwd[grid](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
''')


def render_forward(spec: AttentionSpec, *, interpret: bool = False) -> str:
    """Python source of the forward module for `spec`.

    interpret=True renders fixed small tiles (INTERPRET_BLOCK_M × INTERPRET_BLOCK_N)
    and no autotuner, for Triton's CPU interpreter. A Spec with masks, score mods,
    inputs or dropout renders the general template (`render_general_forward`).
    """
    if not is_plain(spec):
        return render_general_forward(spec, interpret=interpret)
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


# ---- the general Spec: masks, score mods, extra inputs, dropout (issue 3) ------------

# A masked logit whose exp underflows to exactly 0 in fp32 next to any visible logit
# can be dropped (the tile skipped, the element set to -inf), as eager's softmax makes
# it 0 too. -inf does; so does a fill of -1e4 or below (finfo.min of every dtype) as
# long as the visible logits stay above fill + 104.
DROPPABLE_FILL = -1.0e4
FLOAT32_MAX = 3.4028234663852886e38


def is_plain(spec: AttentionSpec) -> bool:
    """True when `spec` is what the FlashAttention template handles (no mask, no score
    mod, no inputs, no dropout; causal under semantics that never fill a causal row)."""
    return (spec.mask is None and spec.score_mod is None and not spec.inputs
            and spec.dropout_p == 0.0
            and (not spec.causal or drops_masked(spec)))


def drops_masked(spec: AttentionSpec) -> bool:
    """Masked logits contribute exactly 0 to rows that see any key (see DROPPABLE_FILL)."""
    return spec.mask_semantics in ("neg_inf", "safe") or spec.mask_fill <= DROPPABLE_FILL


def _lit(x: float) -> str:
    """A float as Python source (inf included)."""
    return repr(x) if math.isfinite(x) else f'float("{x}")'


def adds_loaded_values(spec: AttentionSpec) -> bool:
    """Whether the score mod may add a tensor's value as it is: some summand holds a load
    that is not scaled by index arithmetic (`bias[b, h, q_idx, kv_idx]`, a learned
    table's entry, a Piecewise of loads). Such a value may be finfo(fp32).min, which is
    finite in natural units but overflows in log2 units. ALiBi's
    `slopes[h]*(kv_idx - q_idx)` and soft-capping cannot reach it and skip the check."""
    import sympy

    from ioaware.spec import KV_IDX, Q_IDX

    expr = spec.score_mod_expr()
    if expr is None:
        return False
    for term in sympy.Add.make_args(expr):
        if not term.atoms(sympy.Indexed):
            continue
        scaled = term.is_Mul and any(
            not f.atoms(sympy.Indexed) and f.free_symbols & {Q_IDX, KV_IDX}
            for f in term.args)
        if not scaled:
            return True
    return False


def general_constants(spec: AttentionSpec) -> dict[str, str]:
    """The general Spec's switches, baked in as constexprs (both directions)."""
    from .reference import dropout_threshold

    masks = spec.causal or spec.mask is not None
    drop = drops_masked(spec)
    semantics = spec.mask_semantics
    fill_z = max(spec.mask_fill * math.log2(math.e), -FLOAT32_MAX) if math.isfinite(
        spec.mask_fill) else float("-inf")
    p = spec.dropout_p
    fix_empty = drop and spec.mask is not None and semantics in ("fill", "add")
    empty_lse = spec.mask_fill / 2 if fix_empty else float("-inf")
    uniform_empty = semantics == "fill" or spec.mask_fill * math.log2(math.e) <= -FLOAT32_MAX
    data_bias = adds_loaded_values(spec)
    lines = [
        f"HAS_MASK = tl.constexpr({spec.mask is not None})",
        f"HAS_MOD = tl.constexpr({spec.score_mod is not None})",
        f"MASKS = tl.constexpr({masks})  # anything masked at all (causal or a mask)",
        f"DROP_MASKED = tl.constexpr({drop})  # masked logits are dropped (-inf)",
        # tiles from the runtime block map: masked Specs whose masked logits drop
        f"USE_MAP = tl.constexpr({drop and spec.mask is not None})",
        # rows with no visible key take a second, all-keys sweep (fill / add semantics)
        f"FIX_EMPTY = tl.constexpr({fix_empty})",
        f"SAFE = tl.constexpr({semantics == 'safe'})",
        # masked logits of an empty row all equal (after the fp32 clamp): P is uniform
        f"UNIFORM_EMPTY = tl.constexpr({uniform_empty})",
        f"NEG_INF_ROWS = tl.constexpr({semantics == 'neg_inf'})",
        # eager's NaN from a row with no visible key, spread as eager spreads it (bwd)
        f"SPREAD_NAN = tl.constexpr({semantics == 'neg_inf' and masks})",
        f"ADD_FILL = tl.constexpr({semantics == 'add'})  # gradient reaches masked scores",
        f"FILL_Z = tl.constexpr({_lit(fill_z)})  # mask_fill · log2(e), clamped to fp32",
        f"MASK_FILL = tl.constexpr({max(spec.mask_fill, -FLOAT32_MAX)!r})",
        f"EMPTY_LSE = tl.constexpr({_lit(empty_lse)})  # lse below: no visible key",
        f"DROPOUT = tl.constexpr({p > 0})",
        f"DROP_THRESHOLD = tl.constexpr({dropout_threshold(p)})",
        f"KEEP_SCALE = tl.constexpr({1.0 / (1.0 - p)!r})",
        "LOG2E = tl.constexpr(1.4426950408889634)",
        "MIN_Z = tl.constexpr(-3.4028234663852886e38)",
        # A row whose largest logit is MIN_Z (an additive fp32-min bias on every visible
        # key) ties there: P = 1/l, and m + log2 l would round to m. Its lse is kept as
        # TIE_BASE + l·TIE_STEP (exact: one fp32 ulp per tie), below any real row's lse
        # (≥ MIN_Z·ln 2); FIX_EMPTY rows use that range for their own encoding.
        f"DATA_BIAS = tl.constexpr({data_bias})",
        f"TIE_ROWS = tl.constexpr({data_bias and not fix_empty})",
        "TIE_BASE = tl.constexpr(-3.4028234663852886e38)",
        "TIE_STEP = tl.constexpr(2.028240960365167e31)  # 2**104, the ulp at TIE_BASE",
        "TIE_MAX_COUNT = tl.constexpr(4194304.0)  # keeps the encoding below TIE_LSE",
        "TIE_LSE = tl.constexpr(-2.45e38)  # an lse below this encodes a tie row",
    ]
    return {"general_header": "\n".join(lines)}


# Shared by the general forward and backward modules: the host side of a launch.
# The general kernels build their block map for the tile they run with, so their tiles
# are tuned here rather than by triton.autotune (which picks tiles after the launcher
# has built the map). A choice is timed once per (kernel, device, size class) with
# do_bench, then every launch of that class is a dict lookup.
TUNER = '''\
def _cdiv(a, b):
    return -(-a // b)  # triton.cdiv costs microseconds per call on the host


_CHOSEN = {}  # (kernel, device, Nq bucket, Nk bucket) -> config


def choose_config(kernel, configs, default, device, n_q, n_k, trial, reset=None):
    """The config to launch `kernel` with: `default` under the interpreter, without
    candidates or below TUNE_MIN_SCORES; else the fastest of `configs` by do_bench of
    trial(config), once per power-of-two size class of (Nq, Nk). reset(): zeroes what the
    trials accumulated atomically (triton.autotune's reset_to_zero), after the trials."""
    if INTERPRET or not configs or n_q * n_k < TUNE_MIN_SCORES:
        return default
    key = (kernel, device, 1 << (n_q - 1).bit_length(), 1 << (n_k - 1).bit_length())
    config = _CHOSEN.get(key)
    if config is None:
        from triton.testing import do_bench

        maps = globals().get("_STATIC_MAPS", {})
        before = set(maps)
        best_ms = float("inf")
        for candidate in configs:
            try:
                ms = do_bench(lambda: trial(candidate), warmup=5, rep=20,
                              return_mode="median")
            except Exception:  # out of shared memory or registers on this device
                continue
            if ms < best_ms:
                config, best_ms = candidate, ms
        # Nothing ran: the default's own launch reports why.
        config = _CHOSEN[key] = config or default
        # Static block maps the losing tiles' trials built are not kept (at long N they
        # are tens of MB); maps from before the trials may be read by captured graphs.
        for map_key in set(maps) - before:
            if map_key[4:6] != config[:2]:
                del maps[map_key]
        if reset is not None:
            reset()
    return config'''


# Shared by the general forward and backward: z = logit·log2(e) of one tile.
GENERAL_LOGITS = '''\
@triton.jit
def _logits(s, b, h, q_i, kv_i, N_Q, N_K${inputs}, MASKED: tl.constexpr,
            EMPTY_ROWS: tl.constexpr):
    """(z, visible) of a [rows, cols] tile: z = logit · log2(e) with masked entries as
    mask_semantics says (-inf when they drop); visible: the mask (and causal, and the
    key bound) holds. EMPTY_ROWS: the all-keys sweep for rows with no visible key,
    where every in-bounds entry takes its masked value."""
    if HAS_MOD:
        nat = _score_mod(s * SCALE, b, h, q_i, kv_i, N_Q, N_K${inputs})
        z = nat * LOG2E
        if DATA_BIAS:
            # an additive bias of finfo(fp32).min (a padding mask handed in as a tensor)
            # is finite in eager's natural units but overflows here: keep it finite, so
            # a row of nothing else stays eager's uniform average instead of NaN
            z = tl.where((z == float("-inf")) & (nat != float("-inf")), MIN_Z, z)
    else:
        nat = s * SCALE
        z = s * QK_SCALE
    in_bounds = kv_i < N_K
    visible = in_bounds
    if MASKED:
        if CAUSAL:
            visible = visible & (kv_i <= q_i)
        if HAS_MASK:
            visible = visible & _visible(b, h, q_i, kv_i, N_Q, N_K${inputs})
        if ADD_FILL:
            z_masked = tl.maximum((nat + MASK_FILL) * LOG2E, MIN_Z)
        else:
            z_masked = FILL_Z + z * 0.0
        if EMPTY_ROWS:
            z = tl.where(in_bounds, z_masked, float("-inf"))
        elif DROP_MASKED:
            z = tl.where(visible, z, float("-inf"))
        else:
            z = tl.where(visible, z, tl.where(in_bounds, z_masked, float("-inf")))
    return z, visible, nat'''


_GENERAL_FORWARD_TEMPLATE = string.Template('''\
"""Generated by ioaware.codegen.attention.forward (general Spec). Do not edit.

AttentionSpec(${spec_fields})
"""

import torch
import triton
import triton.language as tl

from ioaware.codegen.launch import launch

${spec_header}
${general_header}
LN2 = tl.constexpr(0.6931471805599453)

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
# Autotuned among (tiles included: the block map is built for the chosen tile)
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_SCORES = ${tune_min_scores}


${tuner}


${primitives}


${mod_functions}


${logits}


${block_map}


@triton.jit
def _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
              offs_d, offs_dv, lo, hi, List, b, h, H_Q, N_Q, N_K, seed, seed_offset${inputs},
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, LIST: tl.constexpr,
              EMPTY_ROWS: tl.constexpr):
    """FA2 Algorithm 1, lines 6-10, over key blocks [lo, hi) (LIST: over the block
    indices List[lo:hi] of the block map). MASKED=False: whole, fully visible tiles."""
    q_i = offs_m[:, None]
    for it in range(lo, hi, 1 if LIST else BLOCK_N):
        if LIST:
            start_n = tl.load(List + it) * BLOCK_N
        else:
            start_n = it
        cols = start_n + offs_n
        k = _load_rows(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, EVEN_D, MASKED)
        s = _mm(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        z, visible, nat = _logits(s, b, h, q_i, cols[None, :], N_Q, N_K${inputs},
                                  MASKED, EMPTY_ROWS)
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
              H_Q, GROUP, N_Q, N_K, H_MAP, B_MAP, T_Q, T_K,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, head, batch). Out: [B, Hq, Nq, dv]; Lse: [B·Hq, Nq]."""
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
                                  seed_offset${inputs}, BLOCK_N, False, True, False)
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, 0, n_part,
                                  PartList + map_row * T_K, b, h, H_Q, N_Q, N_K, seed,
                                  seed_offset${inputs}, BLOCK_N, True, True, False)
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
                                  H_Q, N_Q, N_K, seed, seed_offset${inputs},
                                  BLOCK_N, False, False, False)
        acc, l_i, m_i = _kv_sweep(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                  offs_m, offs_n, offs_d, offs_dv, lo, hi, FullList, b, h,
                                  H_Q, N_Q, N_K, seed, seed_offset${inputs},
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
                                     h, H_Q, N_Q, N_K, seed, seed_offset${inputs},
                                     BLOCK_N, True, False, True)
            acc = tl.where(empty[:, None], acc2, acc)
            l_i = tl.where(empty, l2, l_i)
            m_i = tl.where(empty, m2, m_i)

    # Epilogue: a row with no visible key is NaN (neg_inf: 0/0, as eager) or 0 (safe).
    if SAFE:
        out = tl.where((l_i > 0.0)[:, None], acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None], 0.0)
    else:
        out = acc * (1.0 / l_i)[:, None]
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


def _launch(config, q, k, v, out, lse, inputs, seed):
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
        h_q // h_kv, n_q, n_k, h_map, b_map, t_q, t_k,
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def forward(q, k, v, out, lse, inputs=(), seed=None, config=None):
    """Launch: q [B,Hq,Nq,d], k [B,Hkv,Nk,d], v [B,Hkv,Nk,dv], inputs (any strides) ->
    out [B,Hq,Nq,dv], lse [B,Hq,Nq] fp32 contiguous. Nq, Nk >= 1; B <= 65535.
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to launch with, no autotuning
    (tile sweeps)."""
    if config is None:
        config = choose_config(
            "forward", TUNE_CONFIGS, DEFAULT_CONFIG, q.device, q.shape[2], k.shape[2],
            lambda c: _launch(c, q, k, v, out, lse, inputs, seed))
    _launch(config, q, k, v, out, lse, inputs, seed)
''')


def general_substitutions(spec: AttentionSpec, interpret: bool) -> dict[str, str]:
    """What the general forward and backward templates both substitute for `spec`."""
    from .blocks import render_block_map
    from ..expr import input_params, mod_functions

    inputs = input_params(spec)
    return {
        **spec_constants(spec),
        **general_constants(spec),
        "primitives": primitives(interpret),
        "mod_functions": mod_functions(spec, interpret),
        "logits": string.Template(GENERAL_LOGITS).substitute(inputs=inputs),
        "block_map": render_block_map(spec, interpret),
        "tuner": TUNER,
        "inputs": inputs,
        "interpret": str(interpret),
    }


# Forward tiles measured fastest for masked / modified Specs, tried right after the
# default when the SRAM budget admits them: on an H100 (scripts/attn_sweep.py,
# 2026-11-22; bf16, d = 128, B=2, H=16, N=8192) 64 x 64 on 4 warps, 3 stages beat every
# 128-row tile for a 512 sliding window (252 against 289 µs), a document mask (494
# against 563) and ALiBi (1294 against 1357). The model ranks taller tiles first (fewer
# K/V re-reads), but with masks the shorter tile leaves fewer partial tiles and twice the
# programs.
MEASURED_FORWARD = [(64, 64, 4, 3)]


def general_forward_configs(spec: AttentionSpec) -> list[tuple[int, int, int, int]]:
    """Forward configs a general Spec autotunes among: the default, then the candidates
    `ioaware.tiles` takes from the SRAM budget of the present device's profile (the
    default profile without a GPU), best modelled first; MAX_TUNE_CONFIGS in all."""
    from ioaware.hardware import get_profile

    from .tiles import attention_tile_candidates

    candidates = attention_tile_candidates(get_profile(None), spec.head_dim,
                                           spec.head_dim_v, element_bytes(spec), limit=None)
    measured = [c for c in MEASURED_FORWARD if c in candidates]
    return with_default(default_forward_config(spec), measured + candidates)



def with_default(default: tuple[int, int, int, int],
                 candidates: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """`default` first (tuning never ends worse than the untuned launch), then the
    candidates the general kernels support (16 to 128 rows per tile, 4 or 8 warps),
    MAX_TUNE_CONFIGS in all."""
    supported = [c for c in candidates if c != default and 16 <= c[0] <= 128
                 and 16 <= c[1] <= 128 and c[2] in (4, 8)]
    return [default, *supported][:MAX_TUNE_CONFIGS]


def render_general_forward(spec: AttentionSpec, *, interpret: bool = False) -> str:
    """Python source of the forward module of a general (non-plain) `spec`."""
    if interpret:
        default = (INTERPRET_BLOCK_M, INTERPRET_BLOCK_N, 4, 1)
        tune: list[tuple[int, int, int, int]] = []
    else:
        default = default_forward_config(spec)
        tune = general_forward_configs(spec)
    return _GENERAL_FORWARD_TEMPLATE.substitute(
        general_substitutions(spec, interpret),
        default_config=repr(default),
        tune_configs=format_configs(tune),  # type: ignore[arg-type]
        tune_min_scores=str(TUNE_MIN_SCORES),
    )
