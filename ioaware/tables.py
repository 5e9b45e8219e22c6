"""Plain-text tables for people: the explanation of a compile, in human units.

Everything renders to a string (so `str(explanation)` works in logs and notebooks);
colour is used only when asked for, by default only when stdout is a terminal.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    from ioaware.explain import Explanation

# Decimal units, the ones bandwidths are quoted in (3.0 TB/s), so bytes / bandwidth reads
# straight off the table.
_BYTE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_FLOP_UNITS = ("FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP")


def _human(n: float, units: Sequence[str]) -> str:
    """n scaled by powers of 1000 into the first unit where it is below 1000, one decimal."""
    if n < 0:
        return "-" + _human(-n, units)
    if n < 1000:
        return f"{int(n)} {units[0]}" if float(n).is_integer() else f"{n:.1f} {units[0]}"
    value = float(n)
    for unit in units[1:]:
        value /= 1000
        # Compare after rounding so 999_960 prints as "1.0 MB", never "1000.0 KB".
        if round(value, 1) < 1000 or unit == units[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_bytes(n: float) -> str:
    """Bytes in decimal units: 512 -> "512 B", 1500 -> "1.5 KB", 4_194_304 -> "4.2 MB"."""
    return _human(n, _BYTE_UNITS)


def format_flops(n: float) -> str:
    """FLOPs in decimal units: 2_000_000 -> "2.0 MFLOP", 3.5e12 -> "3.5 TFLOP"."""
    return _human(n, _FLOP_UNITS)


def format_ratio(before: float, after: float) -> str:
    """How many times less traffic the rewrite moves: "16.0×"; "-" when after is 0."""
    if after <= 0:
        return "-"
    return f"{before / after:.1f}×"


def format_detail(detail: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in detail.items()) or "-"


def render(renderables: Sequence[RenderableType], *, width: int = 120,
           color: bool | None = None) -> str:
    """Render rich objects to a string; color=None means: only if stdout is a terminal."""
    if color is None:
        color = sys.stdout.isatty()
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    for renderable in renderables:
        console.print(renderable)
    # Rich pads every line to the console width; logs and diffs read better without it.
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


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


# --- the IO report (ioaware.report) -------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """Modelled times: "1.24 ms", "3.10 µs", "12.0 ns"."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.1f} ns"


def _intensity(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _maybe(value: Any, fmt: Any) -> str:
    return "-" if value is None else fmt(value)


def _figure_cells(figures: Any) -> list[str]:
    """HBM read, HBM write, FLOPs, FLOP/B, bound, modelled time of one side."""
    if figures is None:
        return ["-"] * 6
    return [
        _maybe(figures.read_bytes, format_bytes),
        _maybe(figures.write_bytes, format_bytes),
        format_flops(figures.flops),
        _intensity(figures.intensity),
        figures.bound,
        format_seconds(figures.modelled_time_s),
    ]


def _add_sides(table: Table, label: list[str], before: Any, after: Any) -> None:
    """Two rows, before and after; the speed-up (modelled time) on the after row."""
    blank = [""] * len(label)
    if before is None or after is None:
        table.add_row(*label, "", *_figure_cells(None), "")
        return
    table.add_row(*label, "before", *_figure_cells(before), "")
    table.add_row(*blank, "after", *_figure_cells(after),
                  format_ratio(before.modelled_time_s, after.modelled_time_s))


def report_table(report: Any) -> Table:
    """Two rows per rewritten region (before, after), one per fallback, two for the graph."""
    sizes = ", ".join(f"{k}={v}" for k, v in report.sizes.items())
    title = (f"{report.target or 'model'} on {report.device}, {report.dtype}"
             + (f", {sizes}" if sizes else ""))
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("graph", justify="right")
    table.add_column("kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("side")
    for name in ("HBM read", "HBM write", "FLOPs", "FLOP/B"):
        table.add_column(name, justify="right")
    table.add_column("bound")
    table.add_column("modelled time", justify="right")
    table.add_column("speed-up", justify="right")
    for i, r in enumerate(report.regions):
        _add_sides(table, [str(i), str(r.graph), r.kind, r.status], r.before, r.after)
    table.add_section()
    _add_sides(table, ["", "", "whole graph", f"{report.graphs} graph(s)"],
               report.totals.before, report.totals.after)
    return table


def reasons_table(report: Any) -> Table:
    table = Table(title="what each region is, or why it was left", box=box.SIMPLE_HEAD,
                  title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("status")
    table.add_column("detail / reason", overflow="fold")
    for i, r in enumerate(report.regions):
        text = r.reason if r.status == "fallback" else (
            f"{format_detail(r.detail)}; runs as {r.backend}")
        table.add_row(str(i), r.status, text)
    return table


def formulas_table(report: Any) -> Table:
    """The sympy expressions behind the numbers, in the size symbols."""
    table = Table(title="formulas (bytes, FLOPs; a fused multiply-add counts 2)",
                  box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("side")
    table.add_column("HBM bytes", overflow="fold")
    table.add_column("FLOPs", overflow="fold")
    rows = [(str(i), r.before, r.after) for i, r in enumerate(report.regions)]
    rows.append(("graph", report.totals.before, report.totals.after))
    for label, before, after in rows:
        for side, figures in (("before", before), ("after", after)):
            if figures is None or not figures.expressions:
                continue
            table.add_row(label, side, figures.expressions["hbm_bytes"],
                          figures.expressions["flops"])
    return table


def unpriced_line(report: Any) -> str:
    counts = report.totals.unpriced_before
    n = sum(counts.values())
    if not n:
        return "every op priced"
    names = ", ".join(f"{name} ×{k}" for name, k in sorted(counts.items()))
    return f"{n} unpriced op{'' if n == 1 else 's'} (not in the totals): {names}"


def report_summary(report: Any) -> str:
    rewrote, left = len(report.rewritten), len(report.fallbacks)
    found = rewrote + left
    return (f"found {found} region{'' if found == 1 else 's'}: rewrote {rewrote}, left {left}"
            f"; FLOPs count a fused multiply-add as 2")


def report_renderables(report: Any, *, formulas: bool = False) -> list[RenderableType]:
    parts: list[RenderableType] = [report_table(report)]
    if report.regions:
        parts.append(reasons_table(report))
    if formulas and any(f is not None and f.expressions for r in report.regions
                        for f in (r.before, r.after)) or (
            formulas and report.totals.before.expressions):
        parts.append(formulas_table(report))
    parts += [unpriced_line(report), *report.notes, report_summary(report)]
    return parts
