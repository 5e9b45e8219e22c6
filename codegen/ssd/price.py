"""The SSD family's price: the closed forms of the chunked SSD kernels (Mamba-2),
forward and backward, and the rule that prices `ioaware::ssd` and `_backward` with them.

The floor, per kernel, is max(tensor-core FLOPs / peak, HBM bytes / bandwidth). At the
issue's shape (Bt = 4, H = 64, P = 64, N = 128, G = 1, L = 4096, bf16, Q = the chunk):

    forward   read x, write y: 2·Bt·L·H·P·2 = 268 MB; B, C, dt: 12 MB   -> 93 µs at 3.0 TB/s
              tensor FLOPs Bt·H·L·(2Q·N·n_p + 2Q·P + 4N·P) = 60 GFLOP at Q = 64
                                                                     -> 76 µs at 790 TFLOP/s
    backward  read x, dy, B, C, dt; write dx (402 MB); chunk states 2·Bt·L/Q·H·P·N·4;
              dB, dC partials per head 4·Bt·L·H·N·4 (1.07 GB: the largest term)

(tiles.ssd_step_flops / ssd_step_bytes give the per-step terms.)
"""

from __future__ import annotations

import sympy
from torch import fx

from ioaware.cost import Cost, Size, register_price, sym
from ioaware.cost.nodes import op_name, tensor_arg

from .tiles import choose_block_p, p_blocks, ssd_step_flops

PARAM_ITEMSIZE = 4  # A, D, dt_bias, the states: fp32


def ssd_cost(batch: Size, length: Size, heads: Size, head_dim: int, d_state: int,
             groups: Size, itemsize: int, *, chunk: int = 64, has_h0: bool = False,
             backward: bool = False, dt_itemsize: int = 4) -> Cost:
    """The chunked SSD kernels at these sizes (spec.py has the recurrence).

    x, y, dx, dy [Bt, L, H, P] it;  dt [Bt, L, H] dt_it;  B, C [Bt, L, G, N] it;
    h0, h_last [Bt, H, P, N] fp32. Forward: read x, dt, B, C (+ h0), write y, h_last.
    Backward: the forward's reads and dy; the states recomputed and stored, 2·Bt·⌈L/Q⌉·H·P·N·4
    written and read; dB, dC partials (n_p head_dim blocks per head) written and read,
    dB, dC written in it; dx, ddt written. tensor_flops: `tiles.ssd_step_flops` per
    (batch, head, step); the elementwise work (exp of the decays, O(Q²) per chunk) is
    counted in flops beside it, one exp per [Q, Q] element.
    """
    Bt, L, H, G = (sym(v) for v in (batch, length, heads, groups))
    P, N, it = sympy.Integer(head_dim), sympy.Integer(d_state), sympy.Integer(itemsize)
    block_p = choose_block_p(head_dim)
    n_p = p_blocks(head_dim, block_p)
    seq = Bt * L * H * P
    bc = 2 * Bt * L * G * N * it
    dt = Bt * L * H * dt_itemsize
    state = Bt * H * P * N * PARAM_ITEMSIZE
    Q = chunk
    square = Bt * H * L * Q  # [Q, Q] elements per chunk, L / Q chunks
    if not backward:
        tf = Bt * H * L * ssd_step_flops(Q, head_dim, d_state, block_p, False)
        return Cost(read_bytes=seq * it + dt + bc + int(has_h0) * state,
                    write_bytes=seq * it + state, tensor_flops=tf, flops=tf + 3 * square,
                    transcendentals=square, kernel="ssd")
    tf = Bt * H * L * ssd_step_flops(Q, head_dim, d_state, block_p, True)
    states = Bt * sympy.ceiling(L / Q) * H * P * N * PARAM_ITEMSIZE
    partials = 2 * Bt * L * H * N * PARAM_ITEMSIZE * n_p
    return Cost(
        read_bytes=3 * seq * it + dt + bc + state * (1 + int(has_h0)) + states + partials,
        write_bytes=seq * it + dt + bc + states + partials + int(has_h0) * state,
        tensor_flops=tf, flops=tf + 8 * square, transcendentals=2 * square,
        kernel="ssd_backward")


@register_price("ssd", "ssd_forward", "ssd_backward", namespace="ioaware")
def _ioaware_ssd(node: fx.Node) -> Cost | None:
    """ioaware.ssd(x, dt, A, B, C, D?, dt_bias?, dt_softplus, h0?) -> (y, h_last) and its
    _backward: `ssd_cost` at the op's shapes; None (unpriced) for a schema without x, B."""
    x, b, dt = (tensor_arg(node, n) for n in ("x", "B", "dt"))
    if x is None or b is None or dt is None or x.dim() != 4 or b.dim() != 4:
        return None
    head_dim, d_state = x.shape[3], b.shape[3]
    if not isinstance(head_dim, int) or not isinstance(d_state, int):
        return None
    return ssd_cost(x.shape[0], x.shape[1], x.shape[2], head_dim, d_state, b.shape[2],
                    x.dtype.itemsize, has_h0=tensor_arg(node, "h0") is not None,
                    backward=op_name(node.target) == "ssd_backward",
                    dt_itemsize=dt.dtype.itemsize)


def ssd_step_cost(batch: Size, heads: Size, head_dim: int, d_state: int, groups: Size,
                  itemsize: int, state_itemsize: int) -> Cost:
    """One decode step (step.py): the state [Bt, H, P, N] read and written in place;
    x read and y written [Bt, H, P] it; B, C [Bt, G, N] it and dt read. FLOPs: the
    decay and the update (3 per state element), the contraction with C (2)."""
    Bt, H, G = (sym(v) for v in (batch, heads, groups))
    P, N = sympy.Integer(head_dim), sympy.Integer(d_state)
    state = Bt * H * P * N * state_itemsize
    small = 2 * Bt * G * N * itemsize + Bt * H * PARAM_ITEMSIZE
    return Cost(read_bytes=state + Bt * H * P * itemsize + small,
                write_bytes=state + Bt * H * P * itemsize, flops=5 * Bt * H * P * N,
                transcendentals=Bt * H, kernel="ssd_step")


@register_price("ssd_step", namespace="ioaware")
def _ioaware_ssd_step(node: fx.Node) -> Cost | None:
    """ioaware.ssd_step(state, x, dt, A, B, C, ...) -> y: `ssd_step_cost` at its shapes."""
    state, x, b = (tensor_arg(node, n) for n in ("state", "x", "B"))
    if state is None or x is None or b is None or x.dim() != 3 or b.dim() != 3:
        return None
    head_dim, d_state = x.shape[2], b.shape[2]
    if not isinstance(head_dim, int) or not isinstance(d_state, int):
        return None
    return ssd_step_cost(x.shape[0], x.shape[1], head_dim, d_state, b.shape[1],
                         x.dtype.itemsize, state.dtype.itemsize)
