"""Render the chunked SSD forward (Mamba-2) for an SSDSpec.

`render_forward(spec)` returns the text of a module with one `@triton.jit` kernel and a
launcher `forward(x, dt, A, B, C, D, dt_bias, h0, y, h_last, states=None)`.

Algorithm (the state-space dual, Dao & Gu 2024, §6, with the inter-chunk recurrence in
the same program): one program per (head_dim block, batch·head) walks L in chunks of Q
steps, carrying the state S [BLOCK_P, N] in fp32 registers:

    dt  = softplus?(dt + dt_bias), 0 past L         [Q]
    cs  = cumsum(dt · A)                            [Q]      (inclusive, in the chunk)
    y   = ((C Bᵀ) ⊙ exp(cs_t - cs_s)[s ≤ t] ⊙ dt_s) x         [Q,N]·[N,Q], [Q,Q]·[Q,P]
        + exp(cs_t) · C Sᵀ  + D · x                            [Q,N]·[N,P]
    S   = exp(cs_Q) · S + (x ⊙ exp(cs_Q - cs_s) dt_s)ᵀ B         [P,Q]·[Q,N]

Every product is a tl.dot on tensor cores, with operands in the input dtype and fp32
accumulation (ieee fp32 for fp32 inputs). Steps past L load dt = 0 and x = B = C = 0:
decay 1 and no input, so any L works without masking the arithmetic. Nothing but y
and the final state reaches HBM; `states` (the backward's recompute) also stores the
state entering each chunk, [Bt, chunks, H, P, N] fp32.

HBM traffic: read x, dt once, B and C once per head (L2 serves the other heads of a
group), write y: the floor is 2·Bt·L·H·P·it bytes. Tensor-core FLOPs: tiles.ssd_step_flops.
"""

from __future__ import annotations

import math
import string

from ioaware.codegen.ssd.spec import SSDSpec
from ioaware.hardware import DeviceProfile
from ioaware.spec import DTYPES

from ..render import TORCH_TRITON_IMPORTS, format_configs, module_preamble
from .tiles import INTERPRET_CHUNK, block_p_candidates, choose_chunk, padded

TL_DTYPES = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32"}


def spec_constants(spec: SSDSpec, *, interpret: bool, profile: DeviceProfile | None
                   ) -> dict[str, str]:
    """Substitutions the forward and backward templates share."""
    itemsize = DTYPES[spec.dtype].itemsize
    if interpret or profile is None:
        chunk = INTERPRET_CHUNK
    else:
        chunk = choose_chunk(profile, spec.head_dim, spec.d_state, itemsize)
    block_p_all = block_p_candidates(spec.head_dim)
    warps = (4, 8)
    stages = (1, 2)
    configs = [(bp, w, s) for bp in block_p_all for w in warps for s in stages]
    return {
        "chunk": str(chunk),
        "block_n": str(padded(spec.d_state)),
        "interpret": str(interpret),
        "interpret_block_p": str(padded(spec.head_dim)),
        "configs": format_configs([] if interpret else configs),
        "has_d": str(spec.has_D),
        "has_dt_bias": str(spec.has_dt_bias),
        "dt_softplus": str(spec.dt_softplus),
        "has_h0": str(spec.has_h0),
        "has_dt_limit": str((spec.dt_min, spec.dt_max) != (-math.inf, math.inf)),
        "dt_min": repr(float(spec.dt_min)) if math.isfinite(spec.dt_min) else '-float("inf")',
        "dt_max": repr(float(spec.dt_max)) if math.isfinite(spec.dt_max) else 'float("inf")',
        "op_dtype": TL_DTYPES[spec.dtype],
        # the interpreter mishandles bf16 dots: operands (already rounded to the op dtype)
        # are multiplied in fp32 there
        "dot_operands": "a.to(tl.float32), b.to(tl.float32)" if interpret else "a, b",
        "precision": '"ieee"' if interpret or spec.dtype == "float32" else '"tf32"',
    }


# Shared by the forward and backward modules: the chunk's dt and its decay cumsum.
CHUNK_HELPERS = '''
CHUNK = $chunk
BLOCK_N = $block_n
INTERPRET = $interpret
CONFIGS = $configs  # (BLOCK_P, num_warps, num_stages), autotuned on a GPU
HAS_D = $has_d
HAS_DT_BIAS = $has_dt_bias
DT_SOFTPLUS = $dt_softplus
HAS_H0 = $has_h0
HAS_DT_LIMIT = $has_dt_limit
DT_MIN = $dt_min
DT_MAX = $dt_max


def _cdiv(a, b):
    return -(-a // b)


def _autotuned(kernel, key):
    """The kernel autotuned over CONFIGS on a GPU; as it is under the interpreter."""
    if INTERPRET or not CONFIGS:
        return kernel
    configs = [triton.Config({"BLOCK_P": bp}, num_warps=w, num_stages=s)
               for bp, w, s in CONFIGS]
    return triton.autotune(configs, key=key)(kernel)


def _block_p():
    """BLOCK_P where no autotuner picks it: the whole head_dim under the interpreter."""
    return {"BLOCK_P": $interpret_block_p} if INTERPRET or not CONFIGS else {}


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _dot(a, b):
    """a·b in fp32 on tensor cores (ieee fp32 for fp32 operands)."""
    return tl.dot($dot_operands, input_precision=$precision)


@triton.jit
def _program(H, P, N, heads_per_group, BLOCK_P: tl.constexpr, CHUNK: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """This program's batch, head and group, its step, head_dim and state offsets and
    their masks (grid: head_dim blocks × batch·heads)."""
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # offsets reach past 2^31 at B·L·H·N scale
    h = pid_bh % H
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_mask = offs_p < P
    n_mask = offs_n < N
    return (pid_p, pid_bh, pid_bh // H, h, h // heads_per_group, tl.arange(0, CHUNK),
            offs_p, offs_n, p_mask, n_mask, p_mask[:, None] & n_mask[None, :])


@triton.jit
def _chunk_dt(dt_ptr, dtb_ptr, h, offs_t, t_mask, stride_dt_l,
              HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
              HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr, DT_MAX: tl.constexpr):
    """dt of one chunk in fp32: clamp(softplus(dt + bias), DT_MIN, DT_MAX) as fused,
    0 past L."""
    dt = tl.load(dt_ptr + offs_t * stride_dt_l, mask=t_mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dtb_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        # F.softplus, threshold 20; log(1 + e^x), with e^x ≤ e^20 never overflowing
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))), dt)
    if HAS_DT_LIMIT:  # as torch.clamp, NaN stays NaN
        dt = tl.where(dt != dt, dt, tl.minimum(tl.maximum(dt, DT_MIN), DT_MAX))
    return tl.where(t_mask, dt, 0.0)
'''

FORWARD_KERNEL = '''
@triton.jit
def _ssd_fwd(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, h0_ptr, y_ptr, hl_ptr, st_ptr,
    L, H, P, N, heads_per_group,
    sx_b, sx_l, sx_h, sx_p, sdt_b, sdt_l, sdt_h, sb_b, sb_l, sb_g, sb_n,
    sc_b, sc_l, sc_g, sc_n, sh_b, sh_h, sh_p, sh_n, sy_b, sy_l, sy_h, sy_p,
    BLOCK_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, WRITE_Y: tl.constexpr, STORE_STATES: tl.constexpr,
    HAS_DT_LIMIT: tl.constexpr, DT_MIN: tl.constexpr, DT_MAX: tl.constexpr,
):
    pid_p, pid_bh, b, h, g, offs_t, offs_p, offs_n, p_mask, n_mask, pn_mask = _program(
        H, P, N, heads_per_group, BLOCK_P, CHUNK, BLOCK_N)
    A = tl.load(A_ptr + h).to(tl.float32)
    x_base = x_ptr + b * sx_b + h * sx_h
    dt_base = dt_ptr + b * sdt_b + h * sdt_h
    b_base = B_ptr + b * sb_b + g * sb_g
    c_base = C_ptr + b * sc_b + g * sc_g
    y_base = y_ptr + b * sy_b + h * sy_h
    state_offs = offs_p[:, None] * sh_p + offs_n[None, :] * sh_n
    if HAS_H0:
        state = tl.load(h0_ptr + b * sh_b + h * sh_h + state_offs, mask=pn_mask,
                        other=0.0).to(tl.float32)
    else:
        state = tl.full((BLOCK_P, BLOCK_N), 0.0, tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + h).to(tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    n_chunks = (L + CHUNK - 1) // CHUNK
    for c in range(0, n_chunks):
        t = c * CHUNK + offs_t
        t_mask = t < L
        dt = _chunk_dt(dt_base, dtb_ptr, h, t, t_mask, sdt_l, HAS_DT_BIAS, DT_SOFTPLUS,
                       HAS_DT_LIMIT, DT_MIN, DT_MAX)
        cs = tl.associative_scan(dt * A, 0, _add)  # [Q] inclusive cumsum of dt·A
        total = tl.reduce(dt * A, 0, _add)  # cs at the chunk's last step
        x = tl.load(x_base + t[:, None] * sx_l + offs_p[None, :] * sx_p,
                    mask=t_mask[:, None] & p_mask[None, :], other=0.0)
        Bc = tl.load(b_base + t[:, None] * sb_l + offs_n[None, :] * sb_n,
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to($op_dtype)
        if STORE_STATES:  # the state entering chunk c, for the backward
            st = st_ptr + ((b * n_chunks + c) * H + h) * P * N
            tl.store(st + offs_p[:, None] * N + offs_n[None, :], state, mask=pn_mask)
        if WRITE_Y:
            Cc = tl.load(c_base + t[:, None] * sc_l + offs_n[None, :] * sc_n,
                         mask=t_mask[:, None] & n_mask[None, :], other=0.0).to($op_dtype)
            scores = _dot(Cc, tl.trans(Bc))  # [t, s]
            # exp of -inf above the diagonal: 0 there, never inf · 0; the mask applied
            # again after the product, so a NaN dt at step s reaches no t < s (as eager)
            seg = tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))
            m = tl.where(causal, scores * tl.exp(seg) * dt[None, :], 0.0)
            y = _dot(m.to($op_dtype), x.to($op_dtype))
            y_in = _dot(Cc, tl.trans(state.to($op_dtype)))
            y += tl.exp(cs)[:, None] * y_in
            if HAS_D:
                y += D * x.to(tl.float32)
            tl.store(y_base + t[:, None] * sy_l + offs_p[None, :] * sy_p,
                     y.to(y_ptr.dtype.element_ty), mask=t_mask[:, None] & p_mask[None, :])
        w = tl.exp(total - cs) * dt  # how much of step s reaches the chunk's end
        xw = (x.to(tl.float32) * w[:, None]).to($op_dtype)
        state = tl.exp(total) * state + _dot(tl.trans(xw), Bc)
    tl.store(hl_ptr + b * H * P * N + h * P * N + offs_p[:, None] * N + offs_n[None, :],
             state, mask=pn_mask)


_ssd_fwd_tuned = _autotuned(_ssd_fwd, key=["L", "H", "P", "N", "WRITE_Y"])


def forward(x, dt, A, B, C, D, dt_bias, h0, y, h_last, states=None):
    """y [Bt, L, H, P] and h_last [Bt, H, P, N] fp32 (both written); `states` (optional,
    [Bt, chunks, H, P, N] fp32, contiguous): the state entering each chunk, written
    instead of y when given (the backward's recompute; y may be None then)."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    h0_strides = h0.stride() if h0 is not None else (0, 0, 0, 0)
    store = states is not None
    y = x if y is None else y  # a stand-in pointer, never written when storing states
    args = (
        x, dt, A, B, C, D, dt_bias, h0, y, h_last, states,
        length, heads, head_dim, d_state, heads // B.shape[2],
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *h0_strides, *y.stride(),
    )
    flags = dict(CHUNK=CHUNK, BLOCK_N=BLOCK_N, HAS_D=HAS_D, HAS_DT_BIAS=HAS_DT_BIAS,
                 DT_SOFTPLUS=DT_SOFTPLUS, HAS_H0=HAS_H0, WRITE_Y=not store,
                 STORE_STATES=store, HAS_DT_LIMIT=HAS_DT_LIMIT, DT_MIN=DT_MIN, DT_MAX=DT_MAX)

    def grid(meta):
        return (_cdiv(head_dim, meta["BLOCK_P"]), batch * heads)

    _ssd_fwd_tuned[grid](*args, **flags, **_block_p())
'''


def render_forward(spec: SSDSpec, *, interpret: bool = False,
                   profile: DeviceProfile | None = None) -> str:
    """The forward module's source for `spec`, tiled for `profile`."""
    values = spec_constants(spec, interpret=interpret, profile=profile)
    body = string.Template(CHUNK_HELPERS + FORWARD_KERNEL).substitute(values)
    return module_preamble("ioaware.codegen.ssd.forward.render_forward", spec,
                           TORCH_TRITON_IMPORTS) + "\n" + body
