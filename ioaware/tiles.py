"""Tile sizes from the SRAM budget: what every kernel family's tiles must fit.

The share of a device's shared memory the tiles may take (SRAM_HEADROOM), the registers
a thread may spend on accumulators, the rows one warp's mma covers, and the checks of a
tile request's arguments. Each family ranks its own candidates from these, best first by
the cost model: codegen/attention/tiles.py, codegen/scan/tiles.py. Formulas and the
reasons for each limit: docs/cost-model.md, "Tiles from the SRAM budget".
"""

from __future__ import annotations

import sympy

from ioaware.hardware import DeviceProfile

# Shared memory Triton's layout conversions and reductions take beside the tiles: the
# codegen's configs keep 200 KB of the H100's 227 KB per block for tiles.
SRAM_HEADROOM = 200 / 227
# fp32 accumulator registers a thread may hold; the rest of its 255 hold operands,
# pointers and the softmax state (FA2's d = 256 tile, 64 x 64 on 4 warps, holds 160).
ACCUMULATOR_REGISTERS = 168
# Rows one warp's mma covers: a query tile gives each warp 16 or 32 rows (FA2's
# layouts), so its height is set by the warps: 64 or 128 rows on 4 or 8 warps.
MMA_ROWS = 16


def check_positive_ints(**values: object) -> None:
    """Raise ValueError unless every value is a positive int."""
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive int")


def tile_budget(profile: DeviceProfile) -> int:
    """Bytes of shared memory one program's tiles may take on `profile`."""
    return int(profile.sram_per_block * SRAM_HEADROOM)


def plain_int(value: object) -> int | None:
    """A positive int, or a sympy Integer, as an int; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, sympy.Integer)) and int(value) > 0:
        return int(value)
    return None

