"""The scan family's price: the closed forms of the fused selective scan (Mamba's S6)
and linear scan, forward and backward, and the rules that price the family's ops
`ioaware::selective_scan`, `_backward` and `ioaware::linear_scan` with them, registered
with the cost model on import as the ops' fakes are registered with torch.

A scan's state never leaves the chip, so each kernel reads its inputs once and writes
its outputs once; the unfused loop writes the state every step. Derivations:
docs/cost-model.md, "Scans, fused".
"""

from __future__ import annotations

import sympy
from torch import fx

from ioaware.codegen.scan.tiles import selective_scan_sram_bytes
from ioaware.cost import Cost, Size, ceil_div, register_price, reread_working_set, sym
from ioaware.cost.nodes import op_name, schema_arg, tensor_arg

PARAM_ITEMSIZE = 4  # A, D, delta_bias, h_last and the gradients of A, D, delta_bias: fp32

# FLOPs per element of the state (batch · channel · step · state), forward:
#   dA  = exp(delta·A)          1 transcendental (1 FLOP)
#   dBu = delta·B·u, delta·A    2 FMAs of discretisation (4)
#   h   = dA·h + dBu            the scan's multiply-add (2)
#   y  += C·h                   the readout FMA (2)
SELECTIVE_SCAN_STATE_FLOPS = 9
# Backward, per state element: the forward recomputed (9) and the reverse scan (16):
#   g   = dA'·g' + C·dy         mul + FMA (3)      dC += h·dy        FMA (2)
#   dB += g·(delta·u)           FMA (2)            x   = g·h₋₁·dA    2 muls (2)
#   dΔ += x·A + g·B·u           mul + 2 FMAs (5)   dA += x·delta     FMA (2)
SELECTIVE_SCAN_BACKWARD_STATE_FLOPS = SELECTIVE_SCAN_STATE_FLOPS + 16


def _check_positive(**sizes: Size) -> None:
    for name, value in sizes.items():
        s = sym(value)
        if s.is_number and not (s.is_integer and s > 0):
            raise ValueError(f"{name}={value!r} must be a positive integer")


def selective_scan_cost(
    batch: Size, channels: Size, length: Size, d_state: Size, itemsize: int, *,
    groups: Size = 1, has_D: bool = True, has_z: bool = True,
    has_delta_bias: bool = False, backward: bool = False, delta_softplus: bool = False,
    has_h0: bool = False, block_d: int | None = None, chunk: int | None = None,
) -> Cost:
    """The fused selective scan (Mamba's S6, Gu & Dao 2023, Algorithm 2), forward or backward.

    Shapes, with Bt = batch, Dc = channels, L = length, N = d_state, G = groups and `it`
    the itemsize of the activations (A, D, delta_bias and h_last are fp32):
        u, delta, z [Bt, Dc, L] it    A [Dc, N] fp32    B, C [Bt, G, L, N] it
        D, delta_bias [Dc] fp32       y [Bt, Dc, L] it  h_last [Bt, Dc, N] fp32
    Forward, the recurrence h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t, y_t = C_t·h_t + D·u_t,
    y ← y·silu(z), with h in registers the whole time:
        read  u, delta (+ z):  (2 + has_z)·Bt·Dc·L·it
        read  A, D, delta_bias: Dc·N·4 + has_D·Dc·4 + has_delta_bias·Dc·4
        read  B, C:             2·Bt·G·L·N·it           (once: groups share them)
        write y, h_last:        Bt·Dc·L·it + Bt·Dc·N·4
    FLOPs: SELECTIVE_SCAN_STATE_FLOPS = 9 per state element (Bt·Dc·L·N of them), one exp
    each; per (Bt, Dc, L) element: delta·u (1), + delta_bias (1), softplus(delta)
    (3 and 2 transcendentals), D·u skip FMA (2), y·silu(z) (silu 4 + mul 1, 1 exp).

    Backward recomputes the states chunk by chunk instead of saving them:
        read  what the forward read, and dy:  + Bt·Dc·L·it
        write du, ddelta (+ dz):   (2 + has_z)·Bt·Dc·L·it
        write dB, dC:              2·Bt·G·L·N·4  (fp32: summed over a group's channels)
        write dA, dD, ddelta_bias: Dc·N·4 + has_D·Dc·4 + has_delta_bias·Dc·4
    FLOPs: SELECTIVE_SCAN_BACKWARD_STATE_FLOPS = 25 per state element (the forward
    recomputed and the reverse scan, see the constant), 1 exp; per (Bt, Dc, L) element
    the forward's and as many again for their gradients.

    block_d: channels per program, when the kernel tiles channels (None: B and C are read
    once, the compulsory traffic). Each of the ceil(Dc / (G·block_d)) channel blocks of a
    group reads the group's B and C again; those re-reads are `l2_reread_bytes`, live in
    L2 as in FlashAttention (`reread_working_set`, one (batch, group) standing for a head).
    has_h0: an initial state h0 [Bt, Dc, N] fp32 is read (backward: read, and dh0 written).
    chunk (backward): the kernel saves the state at the start of every chunk of `chunk`
    steps in an fp32 scratch and reads it back, 2·Bt·Dc·ceil(L / chunk)·N·4 bytes.
    block_d and chunk together: sram_bytes is `selective_scan_sram_bytes` at 2 stages.
    The backward's incoming dh_last (Bt·Dc·N·4, L times smaller than dy) is not counted.
    """
    _check_positive(batch=batch, channels=channels, length=length, d_state=d_state,
                    groups=groups, itemsize=itemsize)
    Bt, Dc, L, N, G = (sym(x) for x in (batch, channels, length, d_state, groups))
    if Dc.is_number and G.is_number and int(Dc) % int(G):
        raise ValueError(f"groups={groups} must divide channels={channels}")
    it = sympy.Integer(itemsize)
    p = PARAM_ITEMSIZE
    seq = Bt * Dc * L  # elements of u, delta, z, y
    bc = 2 * Bt * G * L * N  # elements of B and C together
    params = Dc * N * p + (int(has_D) + int(has_delta_bias)) * Dc * p
    per_seq_flops = 1 + int(has_delta_bias) + 3 * int(delta_softplus) + 2 * int(has_D)
    per_seq_flops += 5 * int(has_z)
    per_seq_transc = 2 * int(delta_softplus) + int(has_z)
    states = seq * N
    rereads = Cost()
    state_bytes = Bt * Dc * N * p
    h0 = int(has_h0) * state_bytes
    if backward and chunk is not None:
        _check_positive(chunk=chunk)
        scratch = ceil_div(L, chunk) * state_bytes
        rereads += Cost(read_bytes=scratch, write_bytes=scratch)
    if block_d is not None:
        _check_positive(block_d=block_d)
        blocks = ceil_div(Dc / G, block_d)
        group_bytes = 2 * L * N * it  # B and C of one (batch, group)
        rereads += Cost(
            read_bytes=(blocks - 1) * bc * it, l2_reread_bytes=(blocks - 1) * bc * it,
            l2_working_set=reread_working_set(Bt * G, blocks, group_bytes, group_bytes),
        )
    if block_d is not None and chunk is not None:  # on chip: two stages of chunks
        rereads += Cost(sram_bytes=selective_scan_sram_bytes(block_d, chunk, 2, N, it))
    if not backward:
        return rereads + Cost(
            read_bytes=(2 + int(has_z)) * seq * it + params + bc * it + h0,
            write_bytes=seq * it + state_bytes,
            flops=SELECTIVE_SCAN_STATE_FLOPS * states + per_seq_flops * seq,
            transcendentals=states + per_seq_transc * seq,
            kernel="selective_scan",
        )
    return rereads + Cost(kernel="selective_scan_backward") + Cost(
        read_bytes=(3 + int(has_z)) * seq * it + params + bc * it + h0,
        write_bytes=(2 + int(has_z)) * seq * it + bc * p + params + h0,
        flops=SELECTIVE_SCAN_BACKWARD_STATE_FLOPS * states + 2 * per_seq_flops * seq,
        transcendentals=states + per_seq_transc * seq,
    )


def linear_scan_cost(
    rows: Size, length: Size, features: Size, itemsize: int, *,
    has_h0: bool = False, backward: bool = False,
) -> Cost:
    """The fused first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t along L.

    a, b, h: [R, L, F] in `it` bytes; h0 (optional): [R, F], same dtype. Per element:
        forward   read a, b (+ h0 once)   write h               one FMA: 2 FLOPs
        backward  read a, h, dh (+ h0)    write da, db (+ dh0)  g_t = dh_t + a_{t+1}·g_{t+1}
                  (FMA, 2), db_t = g_t (free), da_t = g_t·h_{t-1} (mul, 1): 3 FLOPs
    h_{t-1} is the saved output shifted by one step (h0 at t = 0): the same tensor, read
    once. a_{t+1} is the same a, read once.
    """
    _check_positive(rows=rows, length=length, features=features, itemsize=itemsize)
    R, L, F = (sym(x) for x in (rows, length, features))
    it = sympy.Integer(itemsize)
    n = R * L * F
    h0 = int(has_h0) * R * F * it
    if not backward:
        return Cost(read_bytes=2 * n * it + h0, write_bytes=n * it, flops=2 * n)
    return Cost(read_bytes=3 * n * it + h0, write_bytes=2 * n * it + h0, flops=3 * n)

# --------------------------------------------------------------------------------------
# The family's ops, priced as its kernels.


@register_price("selective_scan", "selective_scan_forward", "selective_scan_backward",
                namespace="ioaware")
def _ioaware_selective_scan(node: fx.Node) -> Cost | None:
    """ioaware.selective_scan(u, delta, A, B, C, D?, z?, delta_bias?, delta_softplus, h0?)
    -> (y, h_last), and its _backward (dy, dh_last, the same inputs) -> the gradients:
    `selective_scan_cost` at the op's shapes; None (unpriced) if the schema does not
    name u, delta, A, B (u: [Bt, Dc, L], B: [Bt, G, L, N])."""
    u, b, a = (tensor_arg(node, n) for n in ("u", "B", "A"))
    if u is None or b is None or a is None or tensor_arg(node, "delta") is None:
        return None
    if u.dim() != 3 or b.dim() != 4:
        return None
    return selective_scan_cost(
        u.shape[0], u.shape[1], u.shape[2], a.shape[-1], u.dtype.itemsize,
        groups=b.shape[1], has_D=tensor_arg(node, "D") is not None,
        has_z=tensor_arg(node, "z") is not None,
        has_delta_bias=tensor_arg(node, "delta_bias") is not None,
        delta_softplus=bool(schema_arg(node, "delta_softplus", False)),
        has_h0=tensor_arg(node, "h0") is not None,
        backward=op_name(node.target) == "selective_scan_backward",
    )


@register_price("linear_scan", "linear_scan_forward", namespace="ioaware")
def _ioaware_linear_scan(node: fx.Node) -> Cost | None:
    """ioaware.linear_scan(a, b, h0?) -> h, a and b [R, L, F]: `linear_scan_cost`."""
    a = tensor_arg(node, "a")
    if a is None or a.dim() != 3:
        return None
    return linear_scan_cost(a.shape[0], a.shape[1], a.shape[2], a.dtype.itemsize,
                            has_h0=tensor_arg(node, "h0") is not None)

