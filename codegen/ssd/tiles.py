"""The SSD family's tiles: the chunk length and the head_dim block, chosen by the cost
model from the device profile.

The chunk length Q trades tensor-core FLOPs against HBM bytes: the intra-chunk
products grow as Q per step (a [Q, Q] product per chunk), while the chunk states the
backward keeps in HBM shrink as 1/Q. `choose_chunk` takes the Q of least modelled time
(forward and backward, `ssd_step_flops` / `ssd_step_bytes` at the device's tensor-core
and HBM rates) among those whose [Q, Q] fp32 tiles fit a program's registers.
"""

from __future__ import annotations

from ioaware.hardware import DeviceProfile
from ioaware.tiles import ACCUMULATOR_REGISTERS, MMA_ROWS, check_positive_ints

CHUNKS = (32, 64, 128, 256)
# [Q, Q] fp32 tiles the backward holds at once (C Bᵀ, the decay, W = dy xᵀ ⊙ decay, V)
LIVE_SQUARE_TILES = 4
MAX_WARPS = 8
# the interpreter's tile: small, so chunk boundaries are exercised by short tests
INTERPRET_CHUNK = 16


def padded(n: int) -> int:
    """A width rounded up to a power of two and at least MMA_ROWS (tl.dot's operands)."""
    return max(MMA_ROWS, 1 << (n - 1).bit_length())


def p_blocks(head_dim: int, block_p: int) -> int:
    return -(-head_dim // block_p)


def ssd_step_flops(chunk: int, head_dim: int, d_state: int, block_p: int,
                   backward: bool) -> int:
    """Tensor-core FLOPs per (batch, head, step), counting a multiply-add as 2.

    Forward, per chunk of Q steps and n_p = ceil(P / block_p) head_dim blocks:
        C Bᵀ [Q,N]·[N,Q] per block 2Q²N·n_p;  (C Bᵀ ⊙ decay)·x 2Q²P;
        C S_inᵀ 2QNP;  the chunk's state (x·w)ᵀ B 2QNP
    Backward: the states recomputed (2QNP), then C Bᵀ 2Q²N·n_p, its transpose times
        dy 2Q²P, dy xᵀ 2Q²P, W·B and Wᵀ·C 4Q²N·n_p, B dSᵀ, dy S_in, x dS and the
        state gradient carried back 8QNP.
    """
    n_p = p_blocks(head_dim, block_p)
    Q, P, N = chunk, head_dim, d_state
    if not backward:
        per_chunk = 2 * Q * Q * N * n_p + 2 * Q * Q * P + 4 * Q * N * P
    else:
        per_chunk = 6 * Q * Q * N * n_p + 4 * Q * Q * P + 10 * Q * N * P
    return per_chunk // Q


def ssd_step_bytes(chunk: int, head_dim: int, d_state: int, heads_per_group: int,
                   itemsize: int, backward: bool, block_p: int) -> float:
    """HBM bytes per (batch, head, step).

    Forward: read x, write y (2P·it), B and C once per group (2N·it / (H/G)), dt (4).
    Backward: read x, dy, dt, B, C; write dx; the chunk states S_in written by the
    recompute and read back, P·N·4 / Q each way; dB and dC as fp32 partials per head and
    head_dim block, written and read back by their sum: 2·2·N·4·n_p.
    """
    P, N, it = head_dim, d_state, itemsize
    bc = 2 * N * it / heads_per_group
    if not backward:
        return 2 * P * it + bc + 4
    states = 2 * P * N * 4 / chunk
    partials = 4 * N * 4 * p_blocks(head_dim, block_p)
    return 3 * P * it + bc + 8 + states + partials


def fits_registers(chunk: int, head_dim: int, d_state: int, block_p: int) -> bool:
    """The backward's square tiles and its [block_p, N] state and state gradient stay
    within ACCUMULATOR_REGISTERS fp32 registers per thread on MAX_WARPS warps."""
    elements = LIVE_SQUARE_TILES * chunk * chunk + 2 * block_p * padded(d_state)
    return elements <= ACCUMULATOR_REGISTERS * 32 * MAX_WARPS


def choose_chunk(profile: DeviceProfile, head_dim: int, d_state: int, itemsize: int,
                 heads_per_group: int = 1) -> int:
    """The chunk length of least modelled forward + backward time on `profile`:
    max(tensor-core FLOPs / peak, bytes / bandwidth) per step, among CHUNKS that fit."""
    check_positive_ints(head_dim=head_dim, d_state=d_state, itemsize=itemsize,
                        heads_per_group=heads_per_group)
    rate = profile.peak_flops.get("bfloat16" if itemsize == 2 else "tf32",
                                  max(profile.peak_flops.values()))
    block_p = choose_block_p(head_dim)
    best, best_time = None, float("inf")
    for chunk in CHUNKS:
        if not fits_registers(chunk, head_dim, d_state, block_p):
            continue
        time = sum(max(ssd_step_flops(chunk, head_dim, d_state, block_p, bwd) / rate,
                       ssd_step_bytes(chunk, head_dim, d_state, heads_per_group, itemsize,
                                      bwd, block_p) / profile.hbm_bandwidth)
                   for bwd in (False, True))
        if time < best_time:
            best, best_time = chunk, time
    return best or CHUNKS[0]


def choose_block_p(head_dim: int) -> int:
    """The whole head_dim in one block up to 64 (C Bᵀ is computed once per block)."""
    return min(padded(head_dim), 64)


def block_p_candidates(head_dim: int) -> list[int]:
    """head_dim blocks to autotune among: the whole of it (up to 128) and halves."""
    full = padded(head_dim)
    return sorted({min(full, b) for b in (128, 64, 32)}, reverse=True)
