"""The pass recipe: a straight list of named steps, each with the reason it is there."""

from __future__ import annotations

from torch import fx

from ioaware.passes.attention import ATTENTION
from ioaware.passes.decode import DECODE
from ioaware.passes.driver import Pass, PassContext, PassOutcome, run_passes
from ioaware.passes.scan import SCAN
from ioaware.passes.ssd import SSD, SSD_DECODE

PIPELINE: list[Pass] = [
    # Decode steps (few query rows, long cache), first: split the keys over the device,
    # read K/V once per GQA group, read paged caches in place.
    DECODE,
    # Exact attention: the N×N scores and probabilities never reach HBM.
    ATTENTION,
    # Mamba-2's decode step: the [P, N] state read and written once, in place in the
    # cache, in one kernel instead of a dozen. Before SSD, whose loop check sees its add.
    SSD_DECODE,
    # Mamba-2's chunked SSD: the (chunk x chunk) decay matrices and the chunk states never
    # reach HBM. Before SCAN, whose cumsum closed forms would otherwise see its cumsum.
    SSD,
    # Linear recurrences: the (B, D, L, N) states and their producers never reach HBM.
    SCAN,
]


def run_pipeline(gm: fx.GraphModule, ctx: PassContext) -> PassOutcome:
    """Run every pass of PIPELINE in order on `gm` (in place), checkpoint bodies included."""
    return run_passes(PIPELINE, gm, ctx)


__all__ = ["PIPELINE", "PassContext", "run_pipeline"]
