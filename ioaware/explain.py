"""What the compiler did and why: rewrites, fallbacks, and the bytes each one moves.

`ioaware.explain(fn_or_module, *args, **kwargs)` compiles once (without running the
rewritten graph) and returns an `Explanation`; `str()` of it is a table, rendered here
with the units of `ioaware.tables` (which knows nothing of explanations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Table

from ioaware.tables import (
    format_bytes,
    format_detail,
    format_flops,
    format_ratio,
    format_seconds,
    render,
)


@dataclasses.dataclass
class Rewrite:
    """One region replaced by a generated kernel.

    kind: "attention" or "scan".  detail: what was inferred, e.g. {"mask": "causal"}, and
        "tiles": the tile the kernel is priced at (tiles.attention_tile / scan_tile on the
        pass's profile, e.g. {"block_m": 128, "block_n": 128, "num_warps": 8,
        "num_stages": 2}); cost_after and hbm_bytes_after are for that tile.
    hbm_bytes_before / after: modelled HBM traffic of the region unfused / fused (bytes).
    flops: modelled FLOPs of the generated kernel (a fused multiply-add counts 2).
    flops_before: modelled FLOPs of the eager region (a causal eager region also
        computes the masked half of QKᵀ and PV, so this is larger than `flops`).
    backend: how the kernel runs here: "triton" (GPU), "triton-interpret" or "reference";
        "sdpa-cudnn" / "sdpa-flash" / "sdpa-efficient" where the attention pass measured
        that SDPA backend faster (detail["implementation"] has the times).
    cost_before / cost_after: the symbolic `cost.Cost` of the region and of its kernel,
        which the numbers above evaluate (the report prints their formulas and splits).
    """

    kind: str
    detail: dict[str, Any]
    hbm_bytes_before: int
    hbm_bytes_after: int
    flops: int
    backend: str
    flops_before: int | None = None
    graph: int = 0  # index of the captured graph (dynamo may split a function into several)
    cost_before: Any = dataclasses.field(default=None, repr=False, compare=False)
    cost_after: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class Fallback:
    """A candidate region left as it was, with the reason (which node, what was expected)."""

    kind: str
    reason: str
    graph: int = 0


@dataclasses.dataclass
class Explanation:
    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    fallbacks: list[Fallback] = dataclasses.field(default_factory=list)
    graphs: int = 0  # how many graphs dynamo captured
    # wall-clock seconds each pass took (matching, pricing, rewriting), summed over graphs
    pass_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def hbm_bytes_before(self) -> int:
        return sum(r.hbm_bytes_before for r in self.rewrites)

    @property
    def hbm_bytes_after(self) -> int:
        return sum(r.hbm_bytes_after for r in self.rewrites)

    def __str__(self) -> str:
        return render_explanation(self)


def rewrites_table(expl: Explanation) -> Table:
    table = Table(title="rewrites", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("graph", justify="right")
    table.add_column("kind")
    table.add_column("detail")
    table.add_column("HBM before → after", justify="right")
    table.add_column("saving", justify="right")
    table.add_column("FLOPs", justify="right")
    table.add_column("backend")
    for r in expl.rewrites:
        table.add_row(
            str(r.graph),
            r.kind,
            format_detail(r.detail),
            f"{format_bytes(r.hbm_bytes_before)} → {format_bytes(r.hbm_bytes_after)}",
            format_ratio(r.hbm_bytes_before, r.hbm_bytes_after),
            format_flops(r.flops),
            r.backend,
        )
    if len(expl.rewrites) > 1:
        table.add_section()
        before, after = expl.hbm_bytes_before, expl.hbm_bytes_after
        table.add_row(
            "", "total", "",
            f"{format_bytes(before)} → {format_bytes(after)}",
            format_ratio(before, after),
            format_flops(sum(r.flops for r in expl.rewrites)),
            "",
        )
    return table


def fallbacks_table(expl: Explanation) -> Table:
    table = Table(title="left as they were", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("graph", justify="right")
    table.add_column("kind")
    table.add_column("reason", overflow="fold")
    for f in expl.fallbacks:
        table.add_row(str(f.graph), f.kind, f.reason)
    return table


def summary_line(expl: Explanation) -> str:
    rewrote, left = len(expl.rewrites), len(expl.fallbacks)
    found = rewrote + left
    line = f"found {found} region{'' if found == 1 else 's'}: rewrote {rewrote}, left {left}"
    if left:
        line += " (reasons above)"
    return line


def render_explanation(expl: Explanation, *, width: int = 120,
                       color: bool | None = None) -> str:
    """The rewrites table, then the fallbacks table, then a one-line summary."""
    parts: list[RenderableType] = []
    if expl.rewrites:
        parts.append(rewrites_table(expl))
    if expl.fallbacks:
        parts.append(fallbacks_table(expl))
    parts.append(summary_line(expl))
    if expl.pass_seconds:
        parts.append(pass_time_line(expl))
    return render(parts, width=width, color=color)


def pass_time_line(expl: Explanation) -> str:
    """Compile time in the passes: "passes: attention 12.3 ms, scan 1.20 ms"."""
    return "passes: " + ", ".join(f"{name} {format_seconds(s)}"
                                  for name, s in expl.pass_seconds.items())
