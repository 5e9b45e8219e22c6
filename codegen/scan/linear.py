"""Render the Triton source of the generic diagonal linear scan for a ScanSpec.

`render_linear(spec)` returns a module with one `@triton.jit` kernel and a launcher
`forward(a, b, h0, h)` computing, along dim 1 of a, b: [R, L, F],

    h_t = a_t · h_{t-1} + b_t          (t = 0 .. L-1;  t = L-1 .. 0 when spec.reverse)

with h_{-1} = h0 [R, F] or 0, in fp32. One program per (feature block, row); L walked
in chunks of BLOCK_L steps, each chunk one `tl.associative_scan` of the pairs (a, b)
under (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2), the state carried across chunks.

HBM traffic per (row, feature): read a, b: 2L; write h: L (the floor); an unrolled
eager loop moves the state through HBM at every step, 2 more reads/writes per step.

The backward is the same recurrence run the other way (see scan_ops.linear_scan), so
this one kernel serves both directions.
"""

from __future__ import annotations

import string

from ioaware.codegen.scan.spec import ScanSpec
from ioaware.hardware import DeviceProfile

from ..render import LAUNCH_IMPORTS, TUNER, format_configs, launch_configs, module_preamble
from .forward import TUNE_MIN_STEPS, primitives

INTERPRET_BLOCK_L = 8
INTERPRET_BLOCK_F = 4

# (BLOCK_L, BLOCK_F, num_warps). F is the contiguous axis: with BLOCK_F = 128 per warp
# each thread loads 4 consecutive features (16 bytes) and no lane or warp splits L, so
# the scan runs in registers: sm90 SASS 8.6 instructions per element and no shuffles,
# against 40-54 (and up to 5 shuffles) when warps or lanes split L. Narrow F (<= 32)
# spends lanes on L instead of masked features.
TUNE_CONFIGS = [(16, 128, 1), (32, 128, 1), (16, 256, 2), (16, 512, 4), (32, 256, 2),
                (32, 32, 1)]
DEFAULT_CONFIG = (16, 128, 1)
NARROW_CONFIG = (32, 32, 1)  # F <= 32, untuned launches


_LINEAR_TEMPLATE = string.Template('''\
${preamble}

HAS_H0 = tl.constexpr(${has_h0})
HAS_DELTA_BIAS = tl.constexpr(False)  # read by the shared primitives, unused here
DELTA_SOFTPLUS = tl.constexpr(False)
REVERSE = tl.constexpr(${reverse})

INTERPRET = ${interpret}
DEFAULT_CONFIG = ${default_config}  # (BLOCK_L, BLOCK_F, num_warps)
NARROW_CONFIG = ${narrow_config}
TUNE_CONFIGS = ${tune_configs}
TUNE_MIN_STEPS = ${tune_min_steps}
MAX_GRID_Y = 65535


${primitives}


@triton.jit
def _linear_scan(
    A, Bx, H0, H,
    stride_ar, stride_al, stride_af,
    stride_br, stride_bl, stride_bf,
    stride_hr, stride_hf,
    L, F, L_BUCKET,
    BLOCK_L: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """One program per (feature block, row). H: [R, L, F] contiguous. Steps outside
    [0, L) load a = 1, b = 0: they pass the state through unchanged."""
    pid_f = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = offs_f < F
    offs_c = tl.arange(0, BLOCK_L)
    if HAS_H0:
        h = tl.load(H0 + r * stride_hr + offs_f * stride_hf, mask=f_ok, other=0.0)
        h = h.to(tl.float32)
    else:
        h = tl.full([BLOCK_F], 0.0, dtype=tl.float32)
    A += r * stride_ar
    Bx += r * stride_br
    H += r * L * F
    n_chunks = (L + BLOCK_L - 1) // BLOCK_L
    for kk in range(0, n_chunks):
        if REVERSE:
            k = n_chunks - 1 - kk
        else:
            k = kk
        offs_l = k * BLOCK_L + offs_c
        ok = (offs_l[:, None] < L) & f_ok[None, :]
        a = tl.load(A + offs_l[:, None] * stride_al + offs_f[None, :] * stride_af,
                    mask=ok, other=1.0).to(tl.float32)
        x = tl.load(Bx + offs_l[:, None] * stride_bl + offs_f[None, :] * stride_bf,
                    mask=ok, other=0.0).to(tl.float32)
        p, s = tl.associative_scan((a, x), 0, _combine, reverse=REVERSE)
        hs = p * h[None, :] + s
        tl.store(H + offs_l[:, None] * F + offs_f[None, :], hs.to(H.dtype.element_ty),
                 mask=ok)
        # The carry is the state after the chunk's last step in scan order.
        if REVERSE:
            h = _sum(tl.where(offs_c[:, None] == 0, hs, 0.0), 0)
        else:
            h = _sum(tl.where(offs_c[:, None] == BLOCK_L - 1, hs, 0.0), 0)


${tuner}


def _launch(config, a, b, h0, h):
    bl, bf, warps = config
    rows, length, features = a.shape
    h0_ = h0 if h0 is not None else h[:, 0]
    strides = (*a.stride(), *b.stride(), *h0_.stride())
    for lo in range(0, rows, MAX_GRID_Y):
        hi = min(lo + MAX_GRID_Y, rows)
        if lo == 0 and hi == rows:  # the usual case: no per-slice views to make
            tensors = (a, b, h0_, h)
        else:
            tensors = (a[lo:hi], b[lo:hi], h0_[lo:hi], h[lo:hi])
        launch(_linear_scan, (_cdiv(features, bf), hi - lo), *tensors, *strides, length,
               features, 1 << (length - 1).bit_length(),
               BLOCK_L=bl, BLOCK_F=bf, num_warps=warps)


def forward(a, b, h0, h, config=None):
    """Launch. a, b: [R, L, F] any strides; h0: [R, F] or None; h: [R, L, F]
    contiguous. L, R, F >= 1. config: (BLOCK_L, BLOCK_F, num_warps), else chosen by
    timing once per (F, L bucket) (`tuned_config`)."""
    if config is None:
        rows, length, features = a.shape
        default = NARROW_CONFIG if features <= 32 and not INTERPRET else DEFAULT_CONFIG
        big = rows * length * features >= TUNE_MIN_STEPS
        config = tuned_config("forward", TUNE_CONFIGS if big else (), default,
                              (a.device, features, 1 << (length - 1).bit_length()),
                              lambda c: _launch(c, a, b, h0, h))
    _launch(config, a, b, h0, h)
''')


def render_linear(spec: ScanSpec, *, interpret: bool = False,
                  profile: DeviceProfile | None = None) -> str:
    """Python source of the linear-scan module for `spec` (kind "linear"); its measured
    configs hold on every profile (registers bind them, not shared memory).

    interpret=True renders fixed small tiles and no autotuner (Triton's interpreter).
    """
    if spec.kind != "linear":
        raise ValueError(f"spec.kind={spec.kind!r}: scan_linear renders kind 'linear'")
    default, configs = launch_configs(interpret, (INTERPRET_BLOCK_L, INTERPRET_BLOCK_F, 4),
                                      lambda: DEFAULT_CONFIG, lambda: TUNE_CONFIGS)
    return _LINEAR_TEMPLATE.substitute(
        preamble=module_preamble(__name__, spec, LAUNCH_IMPORTS),
        tuner=TUNER,
        has_h0=str(spec.has_h0),
        reverse=str(spec.reverse),
        interpret=str(interpret),
        default_config=repr(default),
        narrow_config=repr(NARROW_CONFIG),
        tune_configs=format_configs(configs),
        tune_min_steps=str(TUNE_MIN_STEPS),
        primitives=primitives(interpret),
    )
