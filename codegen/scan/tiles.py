"""The scan family's tiles: the shared memory of a selective-scan program, as the codegen
lays it out, and the candidate tiles that fit a device, best first by the cost model.
The codegen autotunes among the candidates; the cost model prices the best one.
Formulas and the reasons for each limit: docs/cost-model.md, "Tiles from the SRAM budget".
"""

from __future__ import annotations

import math

from ioaware.hardware import DeviceProfile
from ioaware.tiles import ACCUMULATOR_REGISTERS, check_positive_ints, plain_int, tile_budget

ScanTile = tuple[int, int, int, int]  # (block_d, chunk, num_warps, num_stages)


def selective_scan_sram_bytes(block_d: int, chunk: int, num_stages: int, d_state: int,
                              itemsize: int) -> int:
    """Shared memory of one selective-scan program: per stage a chunk of B and C
    (chunk·N each) and of u, delta, z (block_d·chunk each): stages·chunk·it·(2N + 3·block_d).
    The state h [block_d, N] stays in fp32 registers."""
    return num_stages * chunk * itemsize * (2 * d_state + 3 * block_d)


def scan_chunk_candidates(
    profile: DeviceProfile, d_state: int, itemsize: int, *, limit: int | None = 8,
) -> list[ScanTile]:
    """Selective-scan tiles (block_d, chunk, num_warps, num_stages) that fit `profile`,
    best modelled first. One program scans block_d channels of one (batch, group) along
    L, `chunk` steps per loop trip.

        SRAM       `selective_scan_sram_bytes` <= SRAM_HEADROOM·sram_per_block
        registers  block_d·N / (32·num_warps) <= ACCUMULATOR_REGISTERS / 2
                   (the fp32 state, and as much again for the discretised dA, dB·u)
    Order: the scan is latency-bound, not bandwidth-bound (docs/kernels.md, measured
    on an H100 with the inputs double-buffered in registers: (8, 16, 1) 197 µs,
    (4, 16, 1) 202 µs, (4, 32, 1) 334 µs, (16, 16, 2) 397 µs), so more programs first:
    one warp per program, then 2-4 states per thread (fewer means 16-lane reductions
    over N, more means fewer programs), then chunks of 16 steps (double-buffered longer
    chunks cost registers and occupancy), then the most states per thread within 2-4,
    then 2-3 stages. B and C re-reads per channel block (`selective_scan_cost(
    block_d=...)`) hit L2 and do not decide it.
    """
    check_positive_ints(d_state=d_state, itemsize=itemsize)
    budget = tile_budget(profile)
    fits = []
    for block_d in (256, 128, 64, 32, 16, 8, 4, 2):
        for chunk in (256, 128, 64, 32, 16):
            for warps in (1, 2, 4, 8):
                for stages in (1, 2, 3):
                    sram = selective_scan_sram_bytes(block_d, chunk, stages, d_state, itemsize)
                    registers = block_d * d_state / (32 * warps)
                    if sram <= budget and registers <= ACCUMULATOR_REGISTERS / 2:
                        fits.append((block_d, chunk, warps, stages))
    pipelined = [t for t in fits if t[3] > 1]

    def rank(t: ScanTile) -> tuple:
        block_d, chunk, warps, stages = t
        per_thread = block_d * d_state / (32 * warps)
        states = 0 if 2 <= per_thread <= 4 else abs(math.log2(per_thread / 3))
        return (warps, states, abs(math.log2(chunk / 16)), -block_d, abs(stages - 2.5), stages)

    ranked = sorted(pipelined or fits, key=rank)
    return ranked if limit is None else ranked[:limit]


def scan_tile(profile: DeviceProfile, d_state: object, itemsize: int) -> dict[str, int] | None:
    """The selective-scan tile the cost model prices on `profile`: the best of
    `scan_chunk_candidates` ({"block_d", "chunk", "num_warps", "num_stages"}); None for
    a state size that is not a plain int."""
    n = plain_int(d_state)
    if n is None:
        return None
    block_d, chunk, warps, stages = scan_chunk_candidates(profile, n, itemsize, limit=1)[0]
    return {"block_d": block_d, "chunk": chunk, "num_warps": warps, "num_stages": stages}
