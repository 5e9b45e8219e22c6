"""Render the SSD decode step (Mamba-2 at L = 1) for an SSDSpec.

`render_step(spec)` returns a module with one `@triton.jit` kernel and a launcher
`step(state, x, dt, A, B, C, D, dt_bias, y)` that updates `state` in place and writes y:

    dt' = clamp(softplus?(dt + dt_bias), dt_min, dt_max)          per (batch, head)
    S   ← exp(dt'·A)·S + dt'·x Bᵀ                                 [P, N], in place
    y   = S C + D·x                                               [P]

One program per (head_dim block, batch·head) reads its [BLOCK_P, N] tile of the state,
updates it in fp32 registers, writes it back in the state's dtype and contracts it with
C: every element is read and written by the program that owns it, so in place is safe.

Floor: the state read and written once, 2·Bt·H·P·N·itemsize bytes (x, B, C, dt, y are
O(Bt·H·(P + N))): at Bt = 4, H = 48, P = 64, N = 128 in fp32, 12.6 MB, 4.2 µs at
3.0 TB/s; 0.6 M exp-free FMAs per head·batch, nothing for tensor cores. At such sizes
the launch (a few µs) is what eager's ~12 kernels per step pay twelve times.
"""

from __future__ import annotations

import string

from ioaware.codegen.ssd.spec import SSDSpec
from ioaware.hardware import DeviceProfile

from ..render import LAUNCH_IMPORTS, module_preamble
from .forward import CHUNK_HELPERS, spec_constants
from .tiles import padded

# State elements per program: [BLOCK_P, N] fp32 in 4 warps' registers (16 per thread at
# 2048), small enough that a decode batch of a few heads still spreads over the SMs.
STEP_TILE = 2048

STEP_KERNEL = '''
STEP_BLOCK_P = $step_block_p


@triton.jit
def _ssd_step(
    S_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, y_ptr,
    H, P, N, heads_per_group,
    ss_b, ss_h, ss_p, ss_n, sx_b, sx_h, sx_p, sdt_b, sdt_h,
    sb_b, sb_g, sb_n, sc_b, sc_g, sc_n, sy_b, sy_h, sy_p,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr, DT_MAX: tl.constexpr,
):
    pid_p, pid_bh, b, h, g, one, offs_p, offs_n, p_mask, n_mask, pn_mask = _program(
        H, P, N, heads_per_group, BLOCK_P, 1, BLOCK_N)
    # dt' as a [1] vector: the chunk's helper at a chunk of one step
    dt = _chunk_dt(dt_ptr + b * sdt_b + h * sdt_h, dtb_ptr, h, one, one < 1, 0,
                   HAS_DT_BIAS, DT_SOFTPLUS, HAS_DT_LIMIT, DT_MIN, DT_MAX)
    A = tl.load(A_ptr + h).to(tl.float32)
    x = tl.load(x_ptr + b * sx_b + h * sx_h + offs_p * sx_p, mask=p_mask,
                other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * sb_b + g * sb_g + offs_n * sb_n, mask=n_mask,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sc_b + g * sc_g + offs_n * sc_n, mask=n_mask,
                 other=0.0).to(tl.float32)
    s_ptrs = (S_ptr + b * ss_b + h * ss_h + offs_p[:, None] * ss_p
              + offs_n[None, :] * ss_n)
    state = tl.load(s_ptrs, mask=pn_mask, other=0.0).to(tl.float32)
    decay = tl.exp(dt * A)  # [1]
    state = decay[:, None] * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(S_ptr.dtype.element_ty), mask=pn_mask)
    y = tl.reduce(state * Cv[None, :], 1, _add)  # (tl.sum fails in the interpreter)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + b * sy_b + h * sy_h + offs_p * sy_p, y.to(y_ptr.dtype.element_ty),
             mask=p_mask)


def step(state, x, dt, A, B, C, D, dt_bias, y):
    """state [Bt, H, P, N] updated in place; y [Bt, H, P] written."""
    batch, heads, head_dim = x.shape
    grid = (_cdiv(head_dim, STEP_BLOCK_P), batch * heads)
    # through the cached binary: at decode sizes a step's host time is most of its time
    launch(_ssd_step, grid, state, x, dt, A, B, C, D, dt_bias, y, heads, head_dim,
           B.shape[2], heads // B.shape[1], *state.stride(), *x.stride(), *dt.stride(),
           *B.stride(), *C.stride(), *y.stride(), BLOCK_P=STEP_BLOCK_P, BLOCK_N=BLOCK_N,
           HAS_D=HAS_D, HAS_DT_BIAS=HAS_DT_BIAS, DT_SOFTPLUS=DT_SOFTPLUS,
           HAS_DT_LIMIT=HAS_DT_LIMIT, DT_MIN=DT_MIN, DT_MAX=DT_MAX)
'''


def step_block_p(head_dim: int, d_state: int, interpret: bool) -> int:
    """The head_dim block: all of it under the interpreter (fewest programs), else as
    many rows as keep [BLOCK_P, N] within STEP_TILE."""
    full = padded(head_dim)
    if interpret:
        return full
    return max(1, min(full, STEP_TILE // padded(d_state)))


def render_step(spec: SSDSpec, *, interpret: bool = False,
                profile: DeviceProfile | None = None) -> str:
    """The decode step's module source for `spec`."""
    values = spec_constants(spec, interpret=interpret, profile=profile)
    values["step_block_p"] = str(step_block_p(spec.head_dim, spec.d_state, interpret))
    body = string.Template(CHUNK_HELPERS + STEP_KERNEL).substitute(values)
    return module_preamble("ioaware.codegen.ssd.step.render_step", spec,
                           LAUNCH_IMPORTS) + "\n" + body
