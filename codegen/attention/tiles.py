"""The attention family's tiles: the shared memory of a FlashAttention program, as the
codegen lays it out, and the candidate tiles of the forward and of the backward's dK/dV
and dQ passes that fit a device, best first by the cost model (fewest modelled re-reads).
The codegen autotunes among the candidates; the cost model prices the best one.
Formulas and the reasons for each limit: docs/cost-model.md, "Tiles from the SRAM budget".
"""

from __future__ import annotations

import sympy
import torch

from ioaware.hardware import DeviceProfile
from ioaware.tiles import (
    ACCUMULATOR_REGISTERS,
    MMA_ROWS,
    check_positive_ints,
    plain_int,
    tile_budget,
)


def padded_head_dim(d: int | sympy.Expr | torch.SymInt) -> sympy.Expr:
    """A head dim as the kernels lay it out: the next power of two, at least 16
    (`tl.arange` and `tl.dot` need it); a symbolic dim stays as it is."""
    d = sympy.sympify(d.node.expr if isinstance(d, torch.SymInt) else d)
    if not d.is_Integer:
        return d
    return sympy.Integer(max(16, 1 << (int(d) - 1).bit_length()))


def attention_forward_sram_bytes(
    block_m: int, block_n: int, num_stages: int, head_dim: int | sympy.Expr,
    head_dim_v: int | sympy.Expr, itemsize: int,
) -> sympy.Expr:
    """Shared memory of one forward program: the Q tile and num_stages K/V tiles,
        it·(block_m·d + num_stages·block_n·(d + dv)),  d, dv padded (`padded_head_dim`).
    S, P and the fp32 accumulator live in registers, not here."""
    d, dv = padded_head_dim(head_dim), padded_head_dim(head_dim_v)
    return itemsize * (block_m * d + num_stages * block_n * (d + dv))


AttentionTile = tuple[int, int, int, int]  # (block_m, block_n, num_warps, num_stages)


def _strictest(tiles: list[tuple[AttentionTile, bool, bool]]) -> list[AttentionTile]:
    """The SRAM-fitting tiles that also fit the registers and the warp layout; failing
    that, those that fit the registers (Triton spreads warps over columns too); failing
    that, all of them (registers spill to local memory: slow, still correct)."""
    for keep in (lambda r, w: r and w, lambda r, w: r, lambda r, w: True):
        chosen = [t for t, registers, warps in tiles if keep(registers, warps)]
        if chosen:
            return chosen
    return []


def attention_tile_candidates(
    profile: DeviceProfile, head_dim: int, head_dim_v: int, itemsize: int, *,
    limit: int | None = 8,
) -> list[AttentionTile]:
    """FlashAttention forward tiles that fit `profile`, best modelled first.

    A tile (block_m, block_n, num_warps, num_stages) fits when, with d and dv padded:
        SRAM       it·(block_m·d + num_stages·block_n·(d + dv)) <= SRAM_HEADROOM·sram_per_block
        registers  block_m·(dv + block_n) / (32·num_warps) <= ACCUMULATOR_REGISTERS
                   (the fp32 output accumulator and the score tile, per thread)
        warps      block_m / num_warps is MMA_ROWS or 2·MMA_ROWS
    Order: the model's K/V traffic is N²·(d + dv)·it / block_m, so taller query tiles
    first (Θ(N²d²/M): the tallest tile M allows); then wider key tiles (fewer loop
    trips, fewer rescales of the accumulator); then 2-3 pipeline stages (enough to hide
    a load, without spending SRAM on more); then fewer warps. Single-stage tiles come
    only when nothing pipelined fits. At most `limit` (None: all).
    """
    check_positive_ints(head_dim=head_dim, head_dim_v=head_dim_v, itemsize=itemsize)
    budget = tile_budget(profile)
    d, dv = int(padded_head_dim(head_dim)), int(padded_head_dim(head_dim_v))
    tiles = []
    for block_m in (128, 64, 32, 16):
        for block_n in (128, 64, 32, 16):
            for warps in (4, 8):
                for stages in (1, 2, 3, 4):
                    # attention_forward_sram_bytes, in plain ints (this loop runs often)
                    if itemsize * (block_m * d + stages * block_n * (d + dv)) > budget:
                        continue
                    registers = block_m * (dv + block_n) / (32 * warps)
                    tiles.append(((block_m, block_n, warps, stages),
                                  registers <= ACCUMULATOR_REGISTERS,
                                  block_m // warps in (MMA_ROWS, 2 * MMA_ROWS)))
    fits = _strictest(tiles)
    pipelined = [t for t in fits if t[3] > 1]
    ranked = sorted(pipelined or fits,
                    key=lambda t: (-t[0], -t[1], abs(t[3] - 2.5), t[2], t[3]))
    return ranked if limit is None else ranked[:limit]


def _backward_tiles(
    profile: DeviceProfile, head_dim: int, head_dim_v: int, itemsize: int,
    limit: int | None, resident_is_m: bool,
) -> list[AttentionTile]:
    check_positive_ints(head_dim=head_dim, head_dim_v=head_dim_v, itemsize=itemsize)
    budget = tile_budget(profile)
    d, dv = int(padded_head_dim(head_dim)), int(padded_head_dim(head_dim_v))
    width = d + dv
    tiles = []  # (tile, fits the registers, fits the warp layout)
    for block_m in (128, 64, 32, 16):
        for block_n in (128, 64, 32, 16):
            resident, streamed = (block_m, block_n) if resident_is_m else (block_n, block_m)
            accumulator = resident * (d if resident_is_m else width)  # dQ, or dK and dV
            for warps in (4, 8):
                for stages in (1, 2, 3):
                    if itemsize * width * (resident + stages * streamed) > budget:
                        continue
                    # the fp32 accumulators and the S and dP tiles, per thread
                    registers = (accumulator + 2 * resident * streamed) / (32 * warps)
                    tiles.append(((block_m, block_n, warps, stages),
                                  registers <= ACCUMULATOR_REGISTERS,
                                  resident // warps in (MMA_ROWS, 2 * MMA_ROWS)))
    fits = _strictest(tiles)
    pipelined = [t for t in fits if t[3] > 1]
    r = 0 if resident_is_m else 1

    def rank(t: AttentionTile) -> tuple:
        return (-t[r], -t[1 - r], abs(t[3] - 2.5), t[2], t[3])

    ranked = sorted(pipelined or fits, key=rank)
    return ranked if limit is None else ranked[:limit]


def attention_dkdv_tile_candidates(
    profile: DeviceProfile, head_dim: int, head_dim_v: int, itemsize: int, *,
    limit: int | None = 8,
) -> list[AttentionTile]:
    """Tiles (block_m, block_n, num_warps, num_stages) for the backward's dK/dV pass,
    best modelled first: block_n key rows stay resident, block_m query rows stream.

        SRAM       it·(d + dv)·(block_n + num_stages·block_m) <= SRAM_HEADROOM·sram_per_block
        registers  (block_n·(d + dv) + 2·block_n·block_m) / (32·num_warps)
                   <= ACCUMULATOR_REGISTERS  (fp32 dK, dV and the Sᵀ, dPᵀ tiles)
        warps      block_n / num_warps is MMA_ROWS or 2·MMA_ROWS
    Order: Q, dO, lse and delta are streamed ceil(Nk / block_n) times, so more resident
    key rows first, then taller query tiles, then 2-3 stages, then fewer warps.
    """
    return _backward_tiles(profile, head_dim, head_dim_v, itemsize, limit, False)


def attention_dq_tile_candidates(
    profile: DeviceProfile, head_dim: int, head_dim_v: int, itemsize: int, *,
    limit: int | None = 8,
) -> list[AttentionTile]:
    """Tiles for the backward's dQ pass, best modelled first: block_m query rows stay
    resident (Q, dO, lse, delta), block_n key rows stream.

        SRAM       it·(d + dv)·(block_m + num_stages·block_n) <= SRAM_HEADROOM·sram_per_block
        registers  (block_m·d + 2·block_m·block_n) / (32·num_warps) <= ACCUMULATOR_REGISTERS
        warps      block_m / num_warps is MMA_ROWS or 2·MMA_ROWS
    Order: K and V are streamed ceil(Nq / block_m) times, so taller query tiles first.
    """
    return _backward_tiles(profile, head_dim, head_dim_v, itemsize, limit, True)


def largest_block_m(
    sram_bytes: int, head_dim: int, head_dim_v: int, itemsize: int, *,
    block_n: int = 16, num_stages: int = 2, max_block_m: int | None = None,
) -> int:
    """The tallest power-of-two query tile whose forward program fits `sram_bytes`
    (`attention_forward_sram_bytes`), the paper's block size from M:
        block_m ≈ (M/it - num_stages·block_n·(d + dv)) / d,
    so the K/V traffic N²·(d + dv)·it / block_m is Θ(N²·d²/M). Raises if not even a
    16-row tile fits. `max_block_m` caps it (a kernel never needs more rows than Nq)."""
    block_m = 16
    if attention_forward_sram_bytes(16, block_n, num_stages, head_dim, head_dim_v,
                                    itemsize) > sram_bytes:
        raise ValueError(f"{sram_bytes=} holds no 16-row tile at head_dim={head_dim}")
    while (max_block_m is None or 2 * block_m <= max_block_m) and attention_forward_sram_bytes(
        2 * block_m, block_n, num_stages, head_dim, head_dim_v, itemsize
    ) <= sram_bytes:
        block_m *= 2
    return block_m


def attention_tile(profile: DeviceProfile, head_dim: object, head_dim_v: object,
                   itemsize: int) -> dict[str, int] | None:
    """The forward tile the cost model prices on `profile`: the best of
    `attention_tile_candidates`, by name ({"block_m", "block_n", "num_warps",
    "num_stages"}); None for a head dim that is not a plain int (symbolic)."""
    dims = [plain_int(d) for d in (head_dim, head_dim_v)]
    if None in dims:
        return None
    block_m, block_n, warps, stages = attention_tile_candidates(
        profile, dims[0], dims[1], itemsize, limit=1)[0]
    return {"block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages}


