"""Render the Triton source of the fused selective-scan forward for a ScanSpec.

`render_forward(spec)` returns the text of a Python module holding one `@triton.jit`
kernel, its tiling configs and a launcher
`forward(u, delta, A, B, C, D, z, delta_bias, h0, y, h_last)`.

Algorithm (Mamba, Gu & Dao 2023, §3.3 "hardware-aware scan"), one program per
(channel block of BLOCK_D channels, batch index); L walked in chunks of BLOCK_L steps:

    h = h0 or 0                                         [N, BLOCK_D]     fp32 registers
    for each chunk:
        dt    = softplus?(delta + delta_bias)           [BLOCK_L, BLOCK_D]
        a     = exp2(dt · A · log2 e)                   [BLOCK_L, N, BLOCK_D]  (never stored)
        x     = dt · u · B;   x_0 += a_0 · h            [BLOCK_L, N, BLOCK_D]  state carried in
        (_, h_t) = associative_scan((a, x), combine)    (a1, x1)∘(a2, x2) = (a1 a2, a2 x1 + x2)
        y     = Σ_n C · h_t + D · u;  y ·= silu(z)      [BLOCK_L, BLOCK_D]  -> HBM
        h     = h_{last step of the chunk}
    h_last = h

Steps past L load dt = 0, u = 0, so a = 1 and x = 0: the tail of the last chunk leaves
the state unchanged and no mask is needed in the scan itself.

HBM traffic per (batch, channel), elements: read u, delta, z: 3L; write y: L;
read B, C: 2·L·N per group, shared by the Dc/G channels of the group (L2 serves them
to every channel block after the first); A, D, delta_bias, h0: O(N) per channel.
The unfused chain writes and reads back a, x and h: 6·L·N more per channel.

Tile order is [BLOCK_L, N, BLOCK_D], L slowest: with lanes and warps spread over
(N, D) only (see `fits_layout`), each thread holds whole runs of L and the scan is a
sequential loop in registers. docs/kernels.md has the instruction counts behind this.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

from ioaware import hardware
from ioaware.codegen.scan.spec import ScanSpec
from ioaware.hardware import DeviceProfile
from ioaware.spec import DTYPES

from .. import exp2poly
from ..render import (
    LAUNCH_IMPORTS,
    TUNER,
    format_configs,
    launch_configs,
    module_preamble,
    reduction,
)
from .tiles import scan_chunk_candidates

# Tiles under the Triton interpreter: small, so chunk boundaries, partial channel
# blocks and partial groups are all exercised by small tests.
INTERPRET_BLOCK_D = 2
INTERPRET_BLOCK_L = 16

# A config keeps its [BLOCK_L, N, BLOCK_D] fp32 tiles within this many elements per
# thread (sm90: 64 keeps the forward at ~170 registers with no spills).
MAX_TILE_PER_THREAD = 64

# Chunks ahead of the one being scanned whose bytes are asked of L2 (prefetch.global.L2).
# H100, issue shape: 0 -> 2, 4, 8 chunks took (8, 16, 1) from 343 to 260-264 µs and
# (4, 32, 1) from 250 to 232-237 µs; the backward from 1634 to 1566-1569 µs.
PREFETCH_CHUNKS = 4

# One step in every POLY_EVERY of a chunk takes its decays' exp2 on the FMA pipe as a
# polynomial (`_exp2_poly`), the rest on MUFU; 0: all on MUFU. A tuning knob: sm_90
# SASS predicts no gain while the loop issues more than 8 instructions per MUFU exp2
# (docs/kernels.md, "Polynomial exp2"); scripts/gpu_scan_poly.py measures the shares.
POLY_EVERY = 0

# Autotune only where a launch is long enough for the choice to matter.
TUNE_MIN_STEPS = 256 * 1024  # Bt·Dc·L


def padded_state(n: int) -> int:
    """d_state rounded up to a power of two (tl.arange needs it); padded lanes load
    A = B = C = 0: a = 1, x = 0, no contribution to y."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def fits_layout(n_pad: int, block_d: int, block_l: int, warps: int, per_thread: int) -> bool:
    """Lanes and warps cover (N, BLOCK_D) only, each thread holding at least two of the
    pairs: whole runs of L per thread (the scan never crosses lanes) and part of the
    sum over N in place (sm90 SASS: one pair per thread costs 4 shuffles per element,
    four pairs 0.5). The tile stays within `per_thread` elements per thread."""
    return (block_d * n_pad >= 2 * 32 * warps
            and block_d * n_pad * block_l <= per_thread * 32 * warps)


# Autotune among the first few fitting candidates only: each one is a compile (~1 s on
# sm90) for every new Spec, and `ioaware.tiles` already ranks them.
MAX_TUNE_CONFIGS = 4


def tile_configs(spec: ScanSpec, profile: DeviceProfile | None = None
                 ) -> list[tuple[int, int, int]]:
    """(BLOCK_D, BLOCK_L, num_warps) candidates for autotuning on a GPU: the tiles
    `tiles.scan_chunk_candidates` takes from the SRAM and register budget of
    `profile` (the present device's for None), in its order, that
    also pass the layout rule (`fits_layout`); MAX_TUNE_CONFIGS of them.

    The tile is [BLOCK_L, N, BLOCK_D]: L slowest, so each thread scans whole runs of L
    in registers; lanes split N and D, and the y contraction over N crosses few lanes.
    The order is the latency-bound one measured on an H100 at the issue's shape (Bt=4,
    Dc=1536, L=2048, N=16, bf16, inputs double-buffered in registers): (8, 16, 1) 197 µs,
    (4, 16, 1) 202, (4, 32, 1) 334, (16, 16, 2) 397 (docs/kernels.md). The candidates'
    pipeline stages are not used: this kernel double-buffers in registers instead.
    """
    n_pad = padded_state(spec.d_state)
    itemsize = DTYPES[spec.dtype].itemsize
    configs: list[tuple[int, int, int]] = []
    for block_d, block_l, warps, _stages in scan_chunk_candidates(
            hardware.get_profile(profile), spec.d_state, itemsize, limit=None):
        config = (block_d, block_l, warps)
        if config not in configs and fits_layout(n_pad, *config, MAX_TILE_PER_THREAD):
            configs.append(config)
    return configs[:MAX_TUNE_CONFIGS] or [_fallback_config(n_pad)]


def default_config(spec: ScanSpec, profile: DeviceProfile | None = None
                   ) -> tuple[int, int, int]:
    """The launch of an untuned (short) call: the best-ranked candidate."""
    return tile_configs(spec, profile)[0]


def _fallback_config(n_pad: int) -> tuple[int, int, int]:
    """No candidate fits: L in chunks of 16, one warp per 32 states of N (up to 8), and
    as many channels as fill MAX_TILE_PER_THREAD."""
    warps = min(8, max(1, n_pad // 32))
    for block_l in (16, 8):
        for block_d in (64, 32, 16, 8, 4, 2, 1):
            if fits_layout(n_pad, block_d, block_l, warps, MAX_TILE_PER_THREAD):
                return block_d, block_l, warps
    return 1, 8, warps


def spec_constants(spec: ScanSpec) -> dict[str, str]:
    """Substitutions shared by the forward and backward templates."""
    values = {
        "d_state": str(spec.d_state),
        "n_pad": str(padded_state(spec.d_state)),
        "has_d": str(spec.has_D),
        "has_z": str(spec.has_z),
        "has_delta_bias": str(spec.has_delta_bias),
        "delta_softplus": str(spec.delta_softplus),
        "has_h0": str(spec.has_h0),
    }
    values["spec_header"] = _SPEC_HEADER.substitute(values)
    return values


_SPEC_HEADER = string.Template("""\
# ---- the Spec, baked in: a different Spec is a different module --------------------
D_STATE = tl.constexpr(${d_state})
N_PAD = tl.constexpr(${n_pad})  # power of two >= D_STATE; padded lanes: a = 1, x = 0
HAS_D = tl.constexpr(${has_d})
HAS_Z = tl.constexpr(${has_z})
HAS_DELTA_BIAS = tl.constexpr(${has_delta_bias})
DELTA_SOFTPLUS = tl.constexpr(${delta_softplus})
HAS_H0 = tl.constexpr(${has_h0})
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)""")


_SUM_COMPILED = """\
@triton.jit
def _sum(x, AXIS: tl.constexpr):
    return """ + reduction("sum", "x", "AXIS", False) + """


@triton.jit
def _exp2(x):
    \"\"\"2^x as one MUFU.EX2. tl.math.exp2 lowers to ex2.approx.f32, which ptxas wraps
    in a denormal range fix (FSETP, two predicated FMULs: three more instructions per
    state element, a quarter of the scan's issue); the decays here are products of
    probabilities, where a flushed denormal is 0 to within the fp32 state's own rounding.\"\"\"
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _log2(x):
    \"\"\"log2(x) as one MUFU.LG2 (relative error ~2^-22). tl.math.log is libdevice's
    logf, a ~25-instruction polynomial: in the softplus of Δ, per (step, channel), that
    was 1.5 instructions per state element at N = 16.\"\"\"
    return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rcp(x):
    \"\"\"1 / x as one MUFU.RCP (rcp.approx.ftz: relative error ~2^-23).\"\"\"
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _to_f32(x):
    \"\"\"x in fp32. bf16 pairs as they sit in one 32-bit register: the low one shifted up
    16 bits, the high one masked (one instruction each; cvt.f32.bf16 of the high half
    compiles to PRMT + SHF, two: 1.3 instructions per state element of the forward).\"\"\"
    if x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise(
            "{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
            dtype=tl.float32, is_pure=True, pack=2)
    else:
        return x.to(tl.float32)


@triton.jit
def _prefetch(ptrs, mask):
    \"\"\"prefetch.global.L2 of each address where mask holds: a hint, no value, no wait.\"\"\"
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)"""

# The interpreter has no inline PTX; its _sum is `render.reduction`'s.
_SUM_INTERPRETED = """\
@triton.jit
def _sum(x, AXIS: tl.constexpr):
    return """ + reduction("sum", "x", "AXIS", True) + """


@triton.jit
def _exp2(x):
    return tl.math.exp2(x)


@triton.jit
def _log2(x):
    return tl.math.log2(x)


@triton.jit
def _rcp(x):
    return 1.0 / x


@triton.jit
def _to_f32(x):
    return x.to(tl.float32)


@triton.jit
def _prefetch(ptrs, mask):
    pass"""


# The decays' exp2 on the FMA pipe (`codegen/exp2poly.py`): degree 5, relative error
# 9.1e-8 exact, 1.9e-7 in fp32 Horner: MUFU ex2.approx's own class (2^-22), so no
# tolerance changes. Clamped to [-126, 128] with NaN kept: 128 gives inf, x <= -126
# gives 2^-126 where exp2 is below it (absolute error < 2^-126; the MUFU path flushes
# those to 0). x = 0 gives exactly 1 (the padded steps' decay).
_EXP2_POLY = exp2poly.render(
    "_exp2_poly", degree=5, lower=-126.0, upper=128.0,
    doc="2^x on the FMA pipe, no MUFU (FlashAttention-4's split; codegen/exp2poly.py).")


# Shared by the forward and backward modules.
_SCAN_PRIMITIVES = '''\
@triton.jit
def _combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): h -> a2 (a1 h + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


''' + _EXP2_POLY + '''


@triton.jit
def _decay(arg, offs_c, POLY_EVERY: tl.constexpr):
    """exp2 of a [BLOCK_L, N, BLOCK_D] tile of decay exponents: step j of the chunk by
    `_exp2_poly` where j % POLY_EVERY == POLY_EVERY - 1, by MUFU elsewhere. Each thread
    holds whole runs of L (fits_layout), so the select is fixed per register at compile
    time and the unused form of each element is dead code."""
    if POLY_EVERY == 0:
        return _exp2(arg)
    else:
        on_fma = (offs_c % POLY_EVERY == POLY_EVERY - 1)[:, None, None]
        return tl.where(on_fma, _exp2_poly(arg), _exp2(arg))


@triton.jit
def _softplus(x):
    """F.softplus with threshold 20; log1p(e) as e - e²/2 where log(1 + e) loses e.
    ln(1 + e) = ln 2 · log2(1 + e), e = 2^(x log2 e): two MUFU instructions."""
    e = _exp2(tl.minimum(x, 20.0) * LOG2E)
    log1p = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), _log2(1.0 + e) * LN2)
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _sigmoid(x):
    """1 / (1 + 2^(-x log2 e)) as MUFU ex2 and rcp: `1.0 / d` is the IEEE-safe division
    (a range test, two scalings and a select around the MUFU.RCP: ~6 instructions per
    (step, channel), 0.4 per state element of the forward). x -> -inf gives 1 / inf = 0."""
    return _rcp(1.0 + _exp2(x * -LOG2E))


@triton.jit
def _load_ld_raw(Ptr, offs_l, l_ok, offs_d, d_ok, stride_l, stride_d):
    """A [BLOCK_L, BLOCK_D] tile of a [Dc, L] slice (u, z, dy) in its own dtype; 0 outside."""
    return tl.load(Ptr + offs_l[:, None] * stride_l + offs_d[None, :] * stride_d,
                   mask=l_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _load_dt(Delta, DeltaBias, offs_d, d_ok, offs_l, l_ok, stride_dd, stride_dl):
    """(pre, dt): delta + delta_bias and its softplus, fp32 [BLOCK_L, BLOCK_D];
    steps past L give dt = 0 (a = 1: the state passes through unchanged)."""
    ok = l_ok[:, None] & d_ok[None, :]
    pre = _load_ld_raw(Delta, offs_l, l_ok, offs_d, d_ok, stride_dl, stride_dd).to(tl.float32)
    if HAS_DELTA_BIAS:
        pre += tl.load(DeltaBias + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    if DELTA_SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    return pre, tl.where(ok, dt, 0.0)


@triton.jit
def _load_bc_raw(Ptr, offs_d, d_ok, offs_n, offs_l, l_ok, n_ok, stride_g, stride_l, stride_n,
                 CPG: tl.constexpr, BLOCK_D: tl.constexpr):
    """B or C of the chunk in its own dtype, as loaded: [BLOCK_L, N] when the whole
    channel block reads one group (loaded once for all its channels), else
    [BLOCK_L, N, BLOCK_D]. `_bc_tile` makes the fp32 [BLOCK_L, N, 1 or BLOCK_D] of it."""
    ln = offs_l[:, None] * stride_l + offs_n[None, :] * stride_n
    ln_ok = l_ok[:, None] & n_ok[None, :]
    if CPG % BLOCK_D == 0:
        g = (tl.program_id(0) * BLOCK_D // CPG).to(tl.int64)
        tile = tl.load(Ptr + g * stride_g + ln, mask=ln_ok, other=0.0)
    else:
        g = (offs_d // CPG).to(tl.int64)
        tile = tl.load(Ptr + ln[:, :, None] + g[None, None, :] * stride_g,
                       mask=ln_ok[:, :, None] & d_ok[None, None, :], other=0.0)
    return tile


@triton.jit
def _bc_tile(raw, CPG: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 [BLOCK_L, N, 1] (broadcast over the block's channels) or [BLOCK_L, N, BLOCK_D]."""
    if CPG % BLOCK_D == 0:
        return _to_f32(raw)[:, :, None]
    else:
        return _to_f32(raw)


@triton.jit
def _prefetch_ld(Ptr, offs_d, d_ok, start, L, stride_d, stride_l):
    """Ask L2 for the chunk at `start` of a [Dc, L] slice: one address per channel row
    (a chunk of a row is one 32-byte sector at BLOCK_L = 16, bf16)."""
    _prefetch(Ptr + offs_d * stride_d + start * stride_l, d_ok & (start < L))


@triton.jit
def _prefetch_bc(Ptr, offs_c, start, L, stride_g, stride_l, CPG: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Ask L2 for the chunk at `start` of B or C: one address per step, in the group of
    the block's first channel (the one group every channel reads, when CPG % BLOCK_D == 0)."""
    g = (tl.program_id(0) * BLOCK_D // CPG).to(tl.int64)
    _prefetch(Ptr + g * stride_g + (start + offs_c) * stride_l, start + offs_c < L)


@triton.jit
def _fold(x, W: tl.constexpr):
    """[P, Q, W] -> [P, Q, W / 2]: the pairs of the last axis added. tl.split wants each
    pair in one thread, and Triton moves it there through shared memory."""
    a, b = tl.split(tl.reshape(x, [x.shape[0], x.shape[1], W // 2, 2]))
    return a + b


@triton.jit
def _sum_lanes(x, W: tl.constexpr):
    """Σ over the last axis (W <= 32, a power of two) of a [P, Q, W] tile whose last axis
    lies across lanes, as log2(W) `_fold`s. A tl.sum there is a butterfly: log2(W)
    shuffles and adds for every value of every lane, each lane ending with the same
    sums. The folds move the partial sums once through shared memory instead, and add
    them in-thread: sm_90, the forward's sum over N at (8, 16, 1), 64 SHFL + 64 FADD per
    64 state elements became 28 FADD and no SHFL (10.56 -> 9.73 per element)."""
    if W >= 32:
        x = _fold(x, 32)
    if W >= 16:
        x = _fold(x, 16)
    if W >= 8:
        x = _fold(x, 8)
    if W >= 4:
        x = _fold(x, 4)
    if W >= 2:
        x = _fold(x, 2)
    return tl.reshape(x, [x.shape[0], x.shape[1]])


@triton.jit
def _sum_state(x):
    """Σ_n of a [BLOCK_L, N, BLOCK_D] tile, [BLOCK_L, BLOCK_D]. The layout (fits_layout)
    spreads BLOCK_D (up to 32) over lanes first and N over the remaining LANES; n =
    LANES·k + lane, so the sum over k is in-thread and the one over lanes `_sum_lanes`.
    (Any other layout still sums right, only slower.)"""
    BLOCK_L: tl.constexpr = x.shape[0]
    BLOCK_D: tl.constexpr = x.shape[2]
    LANES: tl.constexpr = min(N_PAD, max(1, 32 // BLOCK_D))
    part = _sum(tl.reshape(x, [BLOCK_L, N_PAD // LANES, LANES, BLOCK_D]), 1)
    return _sum_lanes(tl.permute(part, (0, 2, 1)), LANES)


@triton.jit
def _sum_channels(x):
    """Σ_d of a [BLOCK_L, N, BLOCK_D] tile, [BLOCK_L, N]: d = LANES·k + lane with BLOCK_D
    over min(BLOCK_D, 32) lanes (fits_layout); in-thread over k, then `_sum_lanes`."""
    BLOCK_L: tl.constexpr = x.shape[0]
    BLOCK_D: tl.constexpr = x.shape[2]
    LANES: tl.constexpr = min(BLOCK_D, 32)
    part = _sum(tl.reshape(x, [BLOCK_L, N_PAD, BLOCK_D // LANES, LANES]), 2)
    return _sum_lanes(part, LANES)


@triton.jit
def _step(x, offs_in_chunk, j: tl.constexpr):
    """x[j] of a [BLOCK_L, N, BLOCK_D] tile, as [N, BLOCK_D]. Each thread holds whole
    runs of L (fits_layout), so the select is resolved at compile time and the sum adds
    only -0.0, which x + -0.0 = x folds away: no shuffles, no arithmetic."""
    return _sum(tl.where(offs_in_chunk[:, None, None] == j, x, -0.0), 0)

@triton.jit
def _chunk_inputs(U, Delta, DeltaBias, B, C, Z, start, L, offs_c, offs_d, d_ok, offs_n, n_ok,
                  stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
                  stride_cg, stride_cl, stride_cn, stride_zd, stride_zl,
                  CPG: tl.constexpr, BLOCK_D: tl.constexpr):
    """The chunk at `start`'s inputs, loaded a chunk before they are used (forward and
    both backward sweeps): (pre, dt) [BLOCK_L, BLOCK_D] in fp32 (delta's softplus is per
    (step, channel), cheapest before the tile is spread over N); u, z and B, C
    (`_load_bc_raw`) as loaded, converted only where they are used, a whole chunk of
    work later. z is u again when there is no gate. Steps past L load zeros (dt = 0: the
    state passes through), so a chunk past the end costs no bytes."""
    offs_l = start + offs_c
    l_ok = offs_l < L
    u = _load_ld_raw(U, offs_l, l_ok, offs_d, d_ok, stride_ul, stride_ud)
    pre, dt = _load_dt(Delta, DeltaBias, offs_d, d_ok, offs_l, l_ok, stride_dd, stride_dl)
    b_raw = _load_bc_raw(B, offs_d, d_ok, offs_n, offs_l, l_ok, n_ok, stride_bg, stride_bl,
                         stride_bn, CPG, BLOCK_D)
    c_raw = _load_bc_raw(C, offs_d, d_ok, offs_n, offs_l, l_ok, n_ok, stride_cg, stride_cl,
                         stride_cn, CPG, BLOCK_D)
    if HAS_Z:
        zz = _load_ld_raw(Z, offs_l, l_ok, offs_d, d_ok, stride_zl, stride_zd)
    else:
        zz = u
    return u, pre, dt, b_raw, c_raw, zz'''


def primitives(interpret: bool) -> str:
    """Source of `_sum` and the scan helpers shared by the forward and backward."""
    return (_SUM_INTERPRETED if interpret else _SUM_COMPILED) + "\n\n\n" + _SCAN_PRIMITIVES


_FORWARD_TEMPLATE = string.Template('''\
${preamble}

${spec_header}

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_D, BLOCK_L, num_warps)
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_STEPS = ${tune_min_steps}
MAX_GRID_Y = 65535
# Chunks ahead whose bytes each chunk asks L2 for (0: none; the interpreter has no PTX).
PREFETCH = 0 if INTERPRET else ${prefetch}
POLY_EVERY = ${poly_every}  # one step in POLY_EVERY takes exp2 on the FMA pipe (0: none)


${primitives}


@triton.jit
def _selective_scan_fwd(
    U, Delta, A, B, C, Dskip, Z, DeltaBias, H0, Y, HLast,
    stride_ub, stride_ud, stride_ul,
    stride_db, stride_dd, stride_dl,
    stride_ad, stride_an,
    stride_bb, stride_bg, stride_bl, stride_bn,
    stride_cb, stride_cg, stride_cl, stride_cn,
    stride_zb, stride_zd, stride_zl,
    stride_hb, stride_hd, stride_hn,
    DC, L, L_BUCKET, CPG: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PREFETCH: tl.constexpr,
    POLY_EVERY: tl.constexpr = 0,
):
    """One program per (channel block, batch). y: [Bt, Dc, L] and h_last: [Bt, Dc, N]
    contiguous. IO of one program: read BLOCK_D·L of u, delta (z), N·L of B and C;
    write BLOCK_D·L of y and BLOCK_D·N fp32 of h_last. No [·, N, L] tile leaves registers.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < DC
    offs_n = tl.arange(0, N_PAD)
    n_ok = offs_n < D_STATE
    offs_c = tl.arange(0, BLOCK_L)
    nd_ok = n_ok[:, None] & d_ok[None, :]

    # A · log2(e), so the decay is one exp2 (a single MUFU instruction) per element.
    a_log2 = tl.load(A + offs_n[:, None] * stride_an + offs_d[None, :] * stride_ad,
                     mask=nd_ok, other=0.0).to(tl.float32) * LOG2E  # [N, BLOCK_D]
    if HAS_H0:
        h = tl.load(H0 + b * stride_hb + offs_n[:, None] * stride_hn
                    + offs_d[None, :] * stride_hd, mask=nd_ok, other=0.0).to(tl.float32)
    else:
        h = tl.full([N_PAD, BLOCK_D], 0.0, dtype=tl.float32)  # tl.zeros: compiled-only
    if HAS_D:
        d_skip = tl.load(Dskip + offs_d, mask=d_ok, other=0.0).to(tl.float32)

    U += b * stride_ub
    Delta += b * stride_db
    B += b * stride_bb
    C += b * stride_cb
    Z += b * stride_zb
    Y += b * DC * L
    # Chunk k + 1's inputs are loaded into registers while chunk k is scanned: the loads
    # are issued a whole chunk of work before their first use, so with two or three warps
    # per scheduler the HBM/L2 latency hides behind the scan (H100, the issue's shape:
    # 252 -> 197 µs at (8, 16, 1)). u, z, B and C are carried as loaded and converted
    # at their use: nothing waits on them before this chunk's scan, and 16-bit values
    # carry in half the registers (sm_90: 249 -> 160; H100: 196 -> 165 µs;
    # docs/kernels.md).
    u_n, _pre, dt_n, b_n, c_n, z_n = _chunk_inputs(
        U, Delta, DeltaBias, B, C, Z, 0, L, offs_c, offs_d, d_ok, offs_n, n_ok,
        stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
        stride_cg, stride_cl, stride_cn, stride_zd, stride_zl, CPG, BLOCK_D)
    for start in range(0, L, BLOCK_L):
        offs_l = start + offs_c
        l_ok = offs_l < L
        if PREFETCH > 0:
            # Ask L2 for chunk k + PREFETCH's bytes now: with one or two warps per scheduler
            # nothing else hides the HBM latency of this chunk's loads (three waits a chunk:
            # u/Δ/B, C, z).
            ahead = start + PREFETCH * BLOCK_L
            _prefetch_ld(U, offs_d, d_ok, ahead, L, stride_ud, stride_ul)
            _prefetch_ld(Delta, offs_d, d_ok, ahead, L, stride_dd, stride_dl)
            if HAS_Z:
                _prefetch_ld(Z, offs_d, d_ok, ahead, L, stride_zd, stride_zl)
            _prefetch_bc(B, offs_c, ahead, L, stride_bg, stride_bl, CPG, BLOCK_D)
            _prefetch_bc(C, offs_c, ahead, L, stride_cg, stride_cl, CPG, BLOCK_D)
        dt = dt_n
        u, zz = _to_f32(u_n), _to_f32(z_n)
        b_raw, c_raw = b_n, c_n
        u_n, _pre, dt_n, b_n, c_n, z_n = _chunk_inputs(
            U, Delta, DeltaBias, B, C, Z, start + BLOCK_L, L, offs_c, offs_d, d_ok, offs_n,
            n_ok, stride_ud, stride_ul, stride_dd, stride_dl, stride_bg, stride_bl, stride_bn,
            stride_cg, stride_cl, stride_cn, stride_zd, stride_zl, CPG, BLOCK_D)
        # Discretise in registers (zero-order hold on A, Euler on B, as Mamba does);
        # decay, x: [BLOCK_L, N, BLOCK_D].
        decay = _decay(dt[:, None, :] * a_log2[None, :, :], offs_c, POLY_EVERY)
        x = (dt * u)[:, None, :] * _bc_tile(b_raw, CPG, BLOCK_D)
        # The carried state enters as part of the first step (h_0 = a_0 h + x_0), so the
        # scan's second component is the state itself and its products go unused.
        x = tl.where(offs_c[:, None, None] == 0, x + decay * h[None, :, :], x)
        _, hs = tl.associative_scan((decay, x), 0, _combine)
        # C converted here, not with B: its fp32 tile lives through the y sum only.
        y = _sum_state(hs * _bc_tile(c_raw, CPG, BLOCK_D))  # [BLOCK_L, BLOCK_D]
        h = _step(hs, offs_c, BLOCK_L - 1)
        if HAS_D:
            y += d_skip[None, :] * u
        if HAS_Z:
            y *= zz * _sigmoid(zz)
        tl.store(Y + offs_l[:, None] + offs_d[None, :] * L, y.to(Y.dtype.element_ty),
                 mask=l_ok[:, None] & d_ok[None, :])
    tl.store(HLast + b * DC * D_STATE + offs_n[:, None] + offs_d[None, :] * D_STATE, h,
             mask=nd_ok)


${tuner}


def _launch(config, u, delta, A, B, C, D, z, delta_bias, h0, y, h_last):
    bd, bl, warps = config
    batch, channels, length = u.shape
    cpg = channels // B.shape[1]
    z_ = z if z is not None else u
    h0_ = h0 if h0 is not None else h_last
    strides = (*u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
               *z_.stride(), *h0_.stride())
    for lo in range(0, batch, MAX_GRID_Y):
        hi = min(lo + MAX_GRID_Y, batch)
        if lo == 0 and hi == batch:  # the usual case: no per-slice views to make
            tensors = (u, delta, A, B, C, D if D is not None else A, z_,
                       delta_bias if delta_bias is not None else A, h0_, y, h_last)
        else:
            tensors = (u[lo:hi], delta[lo:hi], A, B[lo:hi], C[lo:hi],
                       D if D is not None else A, z_[lo:hi],
                       delta_bias if delta_bias is not None else A, h0_[lo:hi], y[lo:hi],
                       h_last[lo:hi])
        launch(_selective_scan_fwd, (_cdiv(channels, bd), hi - lo), *tensors, *strides,
               channels, length, 1 << (length - 1).bit_length(), cpg,
               BLOCK_D=bd, BLOCK_L=bl, PREFETCH=PREFETCH, POLY_EVERY=POLY_EVERY,
               num_warps=warps)


def forward(u, delta, A, B, C, D, z, delta_bias, h0, y, h_last, config=None):
    """Launch. u, delta (z): [Bt, Dc, L], A: [Dc, N], B, C: [Bt, G, L, N], any strides;
    y: [Bt, Dc, L] and h_last: [Bt, Dc, N] fp32 contiguous. L >= 1. Absent optional
    inputs are None. config: (BLOCK_D, BLOCK_L, num_warps), else chosen by timing once
    per (Dc, L bucket, channels per group) (`tuned_config`)."""
    if config is None:
        batch, channels, length = u.shape
        big = batch * channels * length >= TUNE_MIN_STEPS
        key = (u.device, channels, 1 << (length - 1).bit_length(), channels // B.shape[1])
        config = tuned_config(
            "forward", TUNE_CONFIGS if big else (), DEFAULT_CONFIG, key,
            lambda c: _launch(c, u, delta, A, B, C, D, z, delta_bias, h0, y, h_last))
    _launch(config, u, delta, A, B, C, D, z, delta_bias, h0, y, h_last)
''')


def render_forward(spec: ScanSpec, *, interpret: bool = False,
                   profile: DeviceProfile | None = None) -> str:
    """Python source of the selective-scan forward module for `spec`, its configs sized
    for `profile` (the present device's for None).

    interpret=True renders fixed small tiles and no autotuner (Triton's interpreter).
    """
    return render_selective(_FORWARD_TEMPLATE, __name__, LAUNCH_IMPORTS, spec, interpret,
                            profile, default_config, tile_configs)


def render_selective(
    template: string.Template, origin: str, imports: Sequence[str], spec: ScanSpec,
    interpret: bool, profile: DeviceProfile | None,
    default_for: Callable[[ScanSpec, DeviceProfile | None], tuple[int, int, int]],
    configs_for: Callable[[ScanSpec, DeviceProfile | None], list[tuple[int, int, int]]],
) -> str:
    """Substitute a selective-scan template (the forward's or the backward's): the
    preamble with `imports`, the Spec's constants, the shared primitives and the launch
    configs `default_for` / `configs_for` give for `profile` (fixed small tiles and no
    autotuner under the interpreter)."""
    if spec.kind != "selective":
        raise ValueError(f"spec.kind={spec.kind!r}: {origin} renders kind 'selective'")
    default, configs = launch_configs(interpret, (INTERPRET_BLOCK_D, INTERPRET_BLOCK_L, 4),
                                      lambda: default_for(spec, profile),
                                      lambda: configs_for(spec, profile))
    return template.substitute(
        spec_constants(spec),
        preamble=module_preamble(origin, spec, imports),
        primitives=primitives(interpret),
        tuner=TUNER,
        interpret=str(interpret),
        default_config=repr(default),
        tune_configs=format_configs(configs),
        tune_min_steps=str(TUNE_MIN_STEPS),
        prefetch=str(PREFETCH_CHUNKS),
        poly_every=str(POLY_EVERY),
    )
