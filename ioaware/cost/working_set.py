"""What a tiled kernel keeps live in L2 between its re-reads: the `l2_working_set` of a
kernel whose programs each stream the same data (FlashAttention's K/V per head), which
depends on how many programs the device runs at once, kept as PROGRAMS_IN_FLIGHT.
"""

from __future__ import annotations

import sympy

from ioaware.cost.algebra import PROGRAMS_IN_FLIGHT


def reread_working_set(
    heads: sympy.Expr, blocks_per_head: sympy.Expr, head_bytes: sympy.Expr,
    window_bytes: sympy.Expr,
) -> sympy.Expr:
    """Bytes L2 must keep for a tiled attention kernel's re-reads to hit it (a head's
    K/V; a scan's B and C of one (batch, group) stand for a head in the same way).

    Programs start in grid order, the T blocks of one head side by side, and each
    streams its head's K/V from the first block to the last. With P programs in flight:
    - T <= P: a head's programs run together, in lockstep, so a K/V block one of them
      loads is re-read by the others while it is still in flight: only the pipeline
      windows (`window_bytes` per head) of the min(heads, ceil(P/T) + 1) heads in flight
      are live.
    - T > P: a head's programs run in successive waves, and each wave re-reads all of
      the head's K/V (`head_bytes`) after the last wave streamed it; at a change of head
      two heads are live.
    """
    P = PROGRAMS_IN_FLIGHT
    lockstep = sympy.Min(heads, sympy.ceiling(P / blocks_per_head) + 1) * window_bytes
    waves = sympy.Min(heads, 2) * head_bytes
    return sympy.Piecewise((waves, blocks_per_head > P), (lockstep, True))
