"""What the attention forward and backward modules both declare and print through.

    spec_constants          the Spec's constexprs (head dims, causal, scale): every module
    primitives              tile products, row reductions, the masked tile load
    general_constants       the general Spec's switches (masks, score mods, dropout)
    general_substitutions   all the general templates share, the tuner included
    is_plain                the Specs the FlashAttention templates serve

Each direction's launch configs live beside its templates (forward.py, backward.py);
the interpreter's tiles, which both use, here.
"""

from __future__ import annotations

import math
import string

from ioaware.codegen.attention.spec import AttentionSpec

from ..expr import input_params, mod_functions
from ..render import TORCH_TRITON_IMPORTS, TUNER, reduction
from .blocks import render_block_map
from .tiles import padded_head_dim

# The general modules' imports: their launchers allocate and launch cached binaries.
GENERAL_IMPORTS = (*TORCH_TRITON_IMPORTS, "", "from ioaware.codegen.launch import launch")
# The plain modules' imports: their TMA variants (forward.VARIANTS) also check the
# tensors and install Triton's scratch allocator.
TMA_LAUNCH_IMPORTS = (*TORCH_TRITON_IMPORTS, "", "from ioaware.codegen.launch import (",
                      "    ensure_scratch_allocator,", "    launch,", "    tma_addressable,",
                      ")")

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


def element_bytes(spec: AttentionSpec) -> int:
    return 4 if spec.dtype == "float32" else 2


def padded_dims(spec: AttentionSpec) -> tuple[int, int]:
    """(d, dv) as the kernels lay them out (`ioaware.tiles.padded_head_dim`)."""
    return int(padded_head_dim(spec.head_dim)), int(padded_head_dim(spec.head_dim_v))


def spec_constants(spec: AttentionSpec) -> dict[str, str]:
    """Substitutions every attention template uses: the Spec's constexprs."""
    d_pad, dv_pad = padded_dims(spec)
    values = {
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
        "dtype": spec.dtype,
        **{f"fp8_{x}": str(x in spec.fp8) for x in "qkv"},
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
DOT_PRECISION = tl.constexpr(${precision})
DTYPE = tl.constexpr(tl.${dtype})  # the output's dtype
# Operands in float8_e4m3fn with a per-tensor scale read at run time (the forward only):
# Q Kᵀ runs on FP8 operands when both are, an FP8 operand meeting a DTYPE one widens to
# DTYPE (exact), V widens to DTYPE for P V and s_v scales O once in the epilogue.
FP8_Q = tl.constexpr(${fp8_q})
FP8_K = tl.constexpr(${fp8_k})
FP8_V = tl.constexpr(${fp8_v})""")


# Tile products and row reductions. Under the interpreter tl.dot on bf16 operands
# returns garbage (triton 3.9), so operands are widened to fp32 first: a 16-bit product
# is exact in fp32, which is what the tensor cores compute too. The reductions are
# `render.reduction`s (tl.reduce under the interpreter).
_PRIMITIVES = string.Template("""\
@triton.jit
def _mm(a, b):
    return tl.dot(${operands}, input_precision=${precision})


@triton.jit
def _mma(a, b, acc):
    return tl.dot(${operands}, acc, input_precision=${precision})


@triton.jit
def _row_max(x):
    return ${row_max}


@triton.jit
def _row_sum(x):
    return ${row_sum}""")


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

# The host side of the FP8 scales, in both forward modules: the launch passes three
# scale pointers, the FP8 operands' own and a placeholder for each 16-bit operand.
SCALE_ARGS = '''\
def _scale_args(scales, placeholder):
    """(ScaleQ, ScaleK, ScaleV) from the FP8 operands' scales in q, k, v order."""
    if not scales:
        return placeholder, placeholder, placeholder
    it = iter(scales)
    return tuple(next(it) if fp8 else placeholder
                 for fp8 in (FP8_Q.value, FP8_K.value, FP8_V.value))'''


def primitives(interpret: bool) -> str:
    """Source of `_mm`, `_mma` (tile products, fp32 result), `_row_max`, `_row_sum` and
    `_load_rows` (a masked tile load), shared by the forward and backward modules."""
    body = _PRIMITIVES.substitute(
        operands="a.to(tl.float32), b.to(tl.float32)" if interpret else "a, b",
        precision='"ieee"' if interpret else "DOT_PRECISION",
        row_max=reduction("max", "x", 1, interpret),
        row_sum=reduction("sum", "x", 1, interpret))
    return body + "\n\n\n" + _LOAD_ROWS


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
    return (spec.mask_semantics in ("neg_inf", "neg_inf_add", "safe")
            or spec.mask_fill <= DROPPABLE_FILL)


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
    rounds = spec.round_logits and spec.dtype != "float32"
    rounds_fill = spec.round_fill and spec.dtype != "float32"
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
        f"NEG_INF_ROWS = tl.constexpr({semantics in ('neg_inf', 'neg_inf_add')})",
        # eager's NaN from a row with no visible key, spread as eager spreads it (bwd):
        # into dV always, into dQ and dK only when the -inf was added (a fill's
        # backward zeroes the gradient of what it masks)
        f"SPREAD_NAN = tl.constexpr({semantics in ('neg_inf', 'neg_inf_add') and masks})",
        f"SPREAD_NAN_QK = tl.constexpr({semantics == 'neg_inf_add' and masks})",
        f"ADD_FILL = tl.constexpr({semantics == 'add'})  # gradient reaches masked scores",
        # eager adds the fill in the scores' 16-bit dtype: a row with no visible key
        # sees the rounded sums (fp16: steps of 32 near finfo.min, -inf past it)
        f"ADD_ROUND = tl.constexpr({semantics == 'add' and rounds_fill})",
        f"SCORE_DTYPE = tl.constexpr(tl.{spec.dtype})",
        f"ROUND_LOGITS = tl.constexpr({rounds})",
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


# Shared by the general forward and backward: z = logit·log2(e) of one tile.
GENERAL_LOGITS = '''\
@triton.jit
def _logits(s, b, h, q_i, kv_i, N_Q, N_K${inputs}, MASKED: tl.constexpr,
            EMPTY_ROWS: tl.constexpr, KV_WHOLE: tl.constexpr = False):
    """(z, visible) of a [rows, cols] tile: z = logit · log2(e) with masked entries as
    mask_semantics says (-inf when they drop); visible: the mask (and causal, and the
    key bound) holds. EMPTY_ROWS: the all-keys sweep for rows with no visible key,
    where every in-bounds entry takes its masked value. KV_WHOLE: every key of the tile
    is below N_K, so loads of the Spec's inputs skip the key bound (one compare and one
    AND per score fewer where a load reads per (q, kv), as a relative bias does)."""
    if HAS_MOD:
        nat = _score_mod(s * SCALE, b, h, q_i, kv_i, N_Q, N_K${inputs}, KV_WHOLE)
        if ROUND_LOGITS:  # as eager's 16-bit add rounded it (gradient: the identity)
            nat = nat.to(SCORE_DTYPE).to(tl.float32)
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
            visible = visible & _visible(b, h, q_i, kv_i, N_Q, N_K${inputs}, KV_WHOLE)
        if ADD_FILL:
            if ADD_ROUND:
                summed = (nat.to(SCORE_DTYPE).to(tl.float32) + MASK_FILL).to(SCORE_DTYPE)
                z_masked = tl.maximum(summed.to(tl.float32) * LOG2E, MIN_Z)
            else:
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


def general_substitutions(spec: AttentionSpec, interpret: bool) -> dict[str, str]:
    """What the general forward and backward templates both substitute for `spec`."""
    inputs = input_params(spec)
    functions = (TUNER, primitives(interpret), mod_functions(spec, interpret),
                 string.Template(GENERAL_LOGITS).substitute(inputs=inputs),
                 render_block_map(spec, interpret))
    return {
        **spec_constants(spec),
        **general_constants(spec),
        # the host tuner, then the device functions every general kernel calls
        "general_functions": "\n\n\n".join(functions),
        "inputs": inputs,
        "interpret": str(interpret),
    }


def with_default(default: tuple[int, int, int, int],
                 candidates: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """`default` first (tuning never ends worse than the untuned launch), then the
    candidates the general kernels support (16 to 128 rows per tile, 4 or 8 warps),
    MAX_TUNE_CONFIGS in all."""
    supported = [c for c in candidates if c != default and 16 <= c[0] <= 128
                 and 16 <= c[1] <= 128 and c[2] in (4, 8)]
    return [default, *supported][:MAX_TUNE_CONFIGS]
