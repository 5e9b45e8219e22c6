"""The decode family's tiles: the packed query tile (the query rows of one GQA group),
the key tile streamed through SRAM, and how many programs split the key range.

A decode program holds the rows of one KV head's group, GROUP·Nq of them (the query
heads that read that KV head, each with its Nq rows), padded to a power of two ≥ 16
(`tl.dot` needs 16 rows): K and V are read once per group, not once per query head.
"""

from __future__ import annotations

from ioaware.codegen.attention.tiles import padded_head_dim
from ioaware.hardware import DeviceProfile
from ioaware.tiles import ACCUMULATOR_REGISTERS, check_positive_ints, tile_budget

# The most packed rows (GROUP·Nq) a decode tile holds: 8 query heads per KV head with 16
# speculative rows each. Taller problems are prefill-shaped and keep the prefill kernels.
MAX_ROWS = 128
MIN_ROWS = 16  # tl.dot's smallest M

# Interpreter tiles: small key tiles so ragged ends, split boundaries and page
# boundaries inside a tile are all exercised by short test caches.
INTERPRET_BLOCK_N = 16

DecodeTile = tuple[int, int, int, int]  # (block_m, block_n, num_warps, num_stages)

# Programs of a decode tile each SM keeps in flight: the split count's waves model
# (price.py) counts num_sms·PROGRAMS_PER_SM slots, and the tile is sized so that many
# fit an SM's shared memory (two 102 KB programs on an H100's 228 KB).
PROGRAMS_PER_SM = 2


def packed_rows(group: int, n_q: int) -> int:
    """The rows a program holds: GROUP·Nq, padded to a power of two ≥ MIN_ROWS."""
    rows = group * n_q
    return max(MIN_ROWS, 1 << (rows - 1).bit_length())


def decode_tile(profile: DeviceProfile, head_dim: int, head_dim_v: int, itemsize: int,
                block_m: int) -> DecodeTile:
    """(block_m, block_n, num_warps, num_stages) for a packed tile of `block_m` rows.

    Decode is bound by reading K and V, so the key tile is as wide as the budget allows
    with 3-4 stages in flight (hiding HBM latency), within
        SRAM       it·(block_m·d + stages·block_n·(d + dv))
                   <= min(tile budget, sram_per_sm / PROGRAMS_PER_SM − 1 KB)
        registers  block_m·(dv + block_n) / (32·warps) <= ACCUMULATOR_REGISTERS
    4 warps: the packed tile is short (16-128 rows), more warps would only split keys.
    """
    check_positive_ints(head_dim=head_dim, head_dim_v=head_dim_v, itemsize=itemsize,
                        block_m=block_m)
    budget = min(tile_budget(profile), profile.sram_per_sm // PROGRAMS_PER_SM - 1024)
    d, dv = int(padded_head_dim(head_dim)), int(padded_head_dim(head_dim_v))
    for block_n in (64, 32, 16):
        for stages in (4, 3, 2):
            warps = 4 if block_m <= 64 else 8
            sram = itemsize * (block_m * d + stages * block_n * (d + dv))
            registers = block_m * (dv + block_n) / (32 * warps)
            if sram <= budget and registers <= ACCUMULATOR_REGISTERS:
                return block_m, block_n, warps, stages
    return block_m, 16, 4, 1


def paged_stages(stages: int) -> int:
    """num_stages for a paged launch of a tile whose dense form runs `stages`.

    A paged key tile is a chain of two loads: its page ids, then K and V at the
    addresses they give. Triton's software pipeliner (3.x, AssignLatencies) gives each
    load of an indirection chain of depth L a latency of (num_stages − 1) // (L + 1)
    iterations, so the dense kernel's `stages` would leave a paged one one K/V tile in
    flight (compiled for sm_90 with triton 3.6 at the H100 tile's 3 stages: one 64×128
    K and V buffer, 39 KB of shared memory against dense's 72 KB, and a wait for every
    copy at the top of each iteration). With
    2·(stages − 1) + 1 each level gets stages − 1, the dense kernel's K/V buffers
    (the page-id buffers add BLOCK_N·4 bytes each), so the SRAM budget is unchanged.
    """
    return 2 * (stages - 1) + 1
