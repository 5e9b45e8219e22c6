"""The IO report of a model: every candidate region and the whole graph, priced on a device.

`build_report(model, args, kwargs, device=...)` captures the model the way `ioaware.compile`
does, prices the canonical graph before the passes run and again after, and returns a
`Report`: one row per region (rewritten, or left as it was and why) and whole-graph totals,
each side with HBM bytes read and written, FLOPs, arithmetic intensity, the roofline bound
and the modelled time on the device, plus the sympy expressions the numbers come from.
Renderers: `render_terminal` (rich tables), `to_json` (stable keys, docs/report.md),
`render_html` (one self-contained page) and `render_roofline` (a PNG; needs matplotlib,
the `plot` extra).

Conventions (those of ioaware.cost): bytes are HBM traffic, a fused multiply-add counts
2 FLOPs, and an op the cost model does not know is *unpriced*: counted and named in the
totals, never added as zero. A region's modelled time is its roofline floor
max(FLOPs / peak, bytes / bandwidth); the whole graph's is the sum of every op's floor,
each op (or generated kernel) being one kernel launch.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sympy
import torch
from torch import fx

from ioaware import cost, hardware
from ioaware.explain import Fallback, Rewrite

log = logging.getLogger("ioaware")

SCHEMA_VERSION = 1
# The sizes a report is usually asked about get the names people write in formulas.
BATCH_SYMBOL, SEQ_SYMBOL = "B", "N"


@dataclasses.dataclass(frozen=True)
class Figures:
    """One side (before or after the rewrite) of a region or of the whole graph.

    Bytes and FLOPs are evaluated at the report's sizes. read_bytes / write_bytes /
    transcendentals are None when only the total is known (a region whose pass did not
    hand over its Cost). expressions: field name -> the sympy expression in the size
    symbols (empty when the sizes were not symbolic or the expression is unknown).
    """

    hbm_bytes: int
    flops: int
    modelled_time_s: float
    bound: str  # "memory" or "compute"
    read_bytes: int | None = None
    write_bytes: int | None = None
    transcendentals: int | None = None
    sram_bytes: int | None = None  # on-chip footprint of one program of a generated kernel
    # What DRAM moves on the device (cost.dram_bytes: hbm_bytes less the re-reads L2
    # serves, plus a matmul's spill); what `report --measure` holds against Nsight
    # Compute. Not in the JSON (schema 1 lists its keys).
    dram_bytes: int | None = None
    expressions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per HBM byte (0 when nothing moves)."""
        return self.flops / self.hbm_bytes if self.hbm_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "read_bytes": self.read_bytes,
            "write_bytes": self.write_bytes,
            "hbm_bytes": self.hbm_bytes,
            "flops": self.flops,
            "transcendentals": self.transcendentals,
            "sram_bytes": self.sram_bytes,
            "intensity_flop_per_byte": self.intensity,
            "bound": self.bound,
            "modelled_time_s": self.modelled_time_s,
            "expressions": dict(self.expressions),
        }


@dataclasses.dataclass(frozen=True)
class Region:
    """One candidate region. status: "rewritten" (before and after priced) or "fallback"
    (left as it was; `reason` says which node and what was expected; no figures)."""

    graph: int
    kind: str
    status: str
    reason: str = ""
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backend: str = ""
    before: Figures | None = None
    after: Figures | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "detail": {k: _plain(v) for k, v in self.detail.items()},
            "backend": self.backend,
            "before": self.before.to_json() if self.before else None,
            "after": self.after.to_json() if self.after else None,
        }


@dataclasses.dataclass(frozen=True)
class Totals:
    """The whole captured program, every op priced, before and after the passes.

    unpriced_before / unpriced_after: op name -> how many nodes the cost model could not
    price; their bytes and FLOPs are missing from the figures, which is why they are listed.
    """

    before: Figures
    after: Figures
    unpriced_before: Mapping[str, int]
    unpriced_after: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "unpriced_ops_before": sum(self.unpriced_before.values()),
            "unpriced_ops_after": sum(self.unpriced_after.values()),
            "unpriced_before": dict(self.unpriced_before),
            "unpriced_after": dict(self.unpriced_after),
        }


@dataclasses.dataclass(frozen=True)
class Report:
    target: str
    device: str
    dtype: str
    sizes: Mapping[str, int]  # size symbol name -> value the figures are evaluated at
    graphs: int
    regions: Sequence[Region]
    totals: Totals
    notes: Sequence[str] = ()

    @property
    def rewritten(self) -> list[Region]:
        return [r for r in self.regions if r.status == "rewritten"]

    @property
    def fallbacks(self) -> list[Region]:
        return [r for r in self.regions if r.status == "fallback"]

    def to_json(self) -> dict[str, Any]:
        """Plain data with the keys documented in docs/report.md (schema_version 1)."""
        profile = hardware.get_profile(self.device)
        return {
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "device": {
                "name": profile.name,
                "peak_flops": profile.peak_flops_for(self.dtype),
                "hbm_bandwidth": profile.bandwidth,
            },
            "dtype": self.dtype,
            "sizes": dict(self.sizes),
            "graphs": self.graphs,
            "flop_convention": "a fused multiply-add counts 2 FLOPs",
            "regions": [r.to_json() for r in self.regions],
            "summary": {
                "regions": len(self.regions),
                "rewritten": len(self.rewritten),
                "fallback": len(self.fallbacks),
            },
            "totals": self.totals.to_json(),
            "notes": list(self.notes),
        }


def _plain(value: Any) -> Any:
    """JSON-safe: numbers, strings and bools as they are, anything else (dtypes) as text."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Mapping):  # e.g. detail["tiles"]: {"block_m": 128, ...}
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


# --- pricing ----------------------------------------------------------------------------


def _dtype_of(node: fx.Node, default: str) -> str:
    """The floating dtype an op computes in: the rate its FLOPs are priced at."""
    for value in (node.meta.get("val"), *(a.meta.get("val") for a in node.all_input_nodes)):
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
                return str(v.dtype).removeprefix("torch.")
    return default


def _peak_dtype(profile: hardware.DeviceProfile, dtype: str) -> str:
    try:
        profile.peak_flops_for(dtype)
    except ValueError:
        return "float32"  # float64 and friends: priced at the fp32 rate, a floor still
    return dtype


def _figures(c: cost.Cost, profile: hardware.DeviceProfile, dtype: str, hints: Mapping,
             names: Mapping[sympy.Symbol, sympy.Symbol]) -> Figures:
    values = c.evaluate(hints)
    dtype = _peak_dtype(profile, dtype)
    return Figures(
        hbm_bytes=values["hbm_bytes"], flops=values["flops"],
        modelled_time_s=cost.modelled_time(c, profile, dtype, hints),
        bound=cost.bound(c, profile, dtype, hints),
        read_bytes=values["read_bytes"], write_bytes=values["write_bytes"],
        transcendentals=values["transcendentals"], sram_bytes=values.get("sram_bytes"),
        dram_bytes=cost.dram_bytes(c, profile, hints), expressions=_expressions(c, names),
    )


def _expressions(c: cost.Cost, names: Mapping[sympy.Symbol, sympy.Symbol]) -> dict[str, str]:
    if not c.free_symbols:
        return {}
    fields = ("read_bytes", "write_bytes", "hbm_bytes", "flops", "transcendentals")
    return {f: str(sympy.factor_terms(getattr(c, f).xreplace(names))) for f in fields}


@dataclasses.dataclass
class _GraphTotals:
    """Sums over one graph's nodes; time and bound are per node (each op a kernel)."""

    cost: cost.Cost = dataclasses.field(default_factory=cost.Cost)
    time_s: float = 0.0
    memory_bound_s: float = 0.0
    unpriced: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, other: _GraphTotals) -> None:
        self.cost = self.cost + other.cost
        self.time_s += other.time_s
        self.memory_bound_s += other.memory_bound_s
        self.unpriced.update(other.unpriced)


def price_graph(gm: fx.GraphModule, profile: hardware.DeviceProfile, hints: Mapping,
                default_dtype: str) -> _GraphTotals:
    """Every node priced; unknown ops counted by name. A rule that fails on a node is
    treated as unknown: the report must not crash on a graph that runs."""
    from ioaware.codegen import load_families

    load_families()  # the kernel families register the prices of their ops (and SDPA's)
    totals = _GraphTotals()
    for node in gm.graph.nodes:
        try:
            c = cost.node_cost(node)
            values = c.evaluate(hints) if c is not None else None
        except Exception:  # noqa: BLE001 - an unpriced op, named below, never a crash
            c = values = None
        if c is None or values is None:
            totals.unpriced[_op_label(node)] += 1
            continue
        if not (values["hbm_bytes"] or values["flops"]):
            continue
        dtype = _peak_dtype(profile, _dtype_of(node, default_dtype))
        t = cost.modelled_time(c, profile, dtype, hints)
        totals.cost = totals.cost + c
        totals.time_s += t
        if cost.bound(c, profile, dtype, hints) == "memory":
            totals.memory_bound_s += t
    return totals


def _op_label(node: fx.Node) -> str:
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    return getattr(target, "__name__", str(target))


# --- capture ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Captured:
    """What the report backend saw in one dynamo graph."""

    rewrites: list[Rewrite]
    fallbacks: list[Fallback]
    before: _GraphTotals
    after: _GraphTotals
    hints: dict


def _kernel_backend(profile: hardware.DeviceProfile) -> str:
    """How rewritten regions would run on the profiled device."""
    if profile.name != "cpu":
        return "triton"
    from ioaware.codegen.runtime import backend_name

    return backend_name("cpu")


def _analyse(profile: hardware.DeviceProfile, dtype: str, captured: list[_Captured]
             ) -> Callable:
    """A dynamo backend that compiles as `IoawareBackend(execute=False)` does (one
    `compile_graph`, not counted in `ioaware.counters`), prices the whole canonical graph
    before and after the passes into `captured`, and returns the eager graph."""
    from ioaware.backend import compile_graph

    def price(gm: fx.GraphModule, hints: dict) -> _GraphTotals:
        return price_graph(gm, profile, hints, dtype)

    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        result = compile_graph(gm, example_inputs, profile, _kernel_backend(profile),
                               graph=len(captured), count=False, price=price)
        before = result.priced if result.priced is not None else _GraphTotals()
        after = before
        if result.rewrites:
            _fill_missing_vals(result.canonical)
            after = price(result.canonical, result.hints)
        captured.append(_Captured(result.rewrites, result.fallbacks, before, after,
                                  result.hints))
        return gm.forward

    return backend


def _fill_missing_vals(gm: fx.GraphModule) -> None:
    """Give the nodes a rewrite inserted their FakeTensor `meta["val"]` (the pass does not
    set it and the cost rules read it), by running each on its inputs' fake values."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if "val" in n.meta])
    if mode is None:
        return
    with mode:
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.meta.get("val") is not None:
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs),
                                           lambda n: n.meta.get("val"))
            try:
                node.meta["val"] = node.target(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - left without a value: priced as unknown
                log.debug("report: no fake value for %s: %s", node.name, e)


def _mark_sizes_dynamic(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Ask dynamo to keep the batch and sequence dims (0 and 1) of every input symbolic, so
    the costs come out as formulas in B and N. `maybe_`: a model that specialises on a
    size (a Python loop over the sequence) keeps that size a number, without an error."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            for dim in range(min(value.dim(), 2)):
                torch._dynamo.maybe_mark_dynamic(value, dim)


def _symbol_names(hints: Mapping[sympy.Symbol, int], batch: int | None,
                  seq_len: int | None) -> dict[sympy.Symbol, sympy.Symbol]:
    """dynamo's s0, s1 renamed B and N by the sizes they stand for (N wins a tie)."""
    names = {}
    for symbol, value in hints.items():
        if value == seq_len:
            names[symbol] = sympy.Symbol(SEQ_SYMBOL, positive=True, integer=True)
        elif value == batch:
            names[symbol] = sympy.Symbol(BATCH_SYMBOL, positive=True, integer=True)
    return names


def _input_sizes(args: Sequence[Any]) -> tuple[int | None, int | None]:
    """(batch, seq_len) as dims 0 and 1 of the first tensor input, which is how every
    bundled example and most language models take their tokens or activations."""
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0]), int(value.shape[1])
    return None, None


def build_report(model: Callable, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                 *, device: str | hardware.DeviceProfile, dtype: str | torch.dtype = "float32",
                 target: str = "", formulas: bool = False) -> Report:
    """Capture `model(*args, **kwargs)` with dynamo and price it on `device`.

    The model runs eagerly on whatever device its tensors are on: on the meta device (the
    CLI's default) that computes nothing, so a report at 32k tokens costs what one at 64
    does. The capture is static, as `ioaware.compile`'s first compile is, so the regions
    and numbers are what compile would do at these sizes. formulas: capture a second time
    with the batch and sequence dims symbolic and attach each expression where that
    capture agrees with the static one (same region, same numbers). dtype: the rate FLOPs
    are priced at where an op has no floating dtype of its own. Raises whatever the model
    raises.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    profile = hardware.get_profile(device)
    dtype = hardware.dtype_key(dtype)
    kwargs = dict(kwargs or {})
    report = assemble(_capture(model, args, kwargs, profile, dtype), profile, dtype, target,
                      *_input_sizes(args))
    if not formulas:
        return report
    _mark_sizes_dynamic(args, kwargs)
    try:
        symbolic = assemble(_capture(model, args, kwargs, profile, dtype), profile, dtype,
                            target, *_input_sizes(args))
    except Exception as e:  # noqa: BLE001 - the numbers stand without their formulas
        return dataclasses.replace(report, notes=[
            *report.notes, f"no formulas: the symbolic capture failed ({type(e).__name__})"])
    return with_formulas(report, symbolic)


def _capture(model: Callable, args: Sequence[Any], kwargs: Mapping[str, Any],
             profile: hardware.DeviceProfile, dtype: str) -> list[_Captured]:
    from ioaware.api import _fresh_dynamo_budget

    captured: list[_Captured] = []
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    with _fresh_dynamo_budget():
        torch.compile(model, backend=_analyse(profile, dtype, captured))(*args, **kwargs)
    return captured


def _same_numbers(a: Figures | None, b: Figures | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.hbm_bytes, a.flops) == (b.hbm_bytes, b.flops)


def _formulas_of(static: Figures | None, symbolic: Figures | None) -> Figures | None:
    if static is None or symbolic is None or not _same_numbers(static, symbolic):
        return static
    return dataclasses.replace(static, expressions=symbolic.expressions)


def with_formulas(report: Report, symbolic: Report) -> Report:
    """`report` with the expressions of `symbolic` where both captures agree: the same
    region kind and status at the same place, and the same evaluated numbers."""
    regions = list(report.regions)
    missing = 0
    if len(symbolic.regions) == len(regions):
        for i, (r, s) in enumerate(zip(report.regions, symbolic.regions)):
            if (r.kind, r.status) == (s.kind, s.status):
                regions[i] = dataclasses.replace(r, before=_formulas_of(r.before, s.before),
                                                 after=_formulas_of(r.after, s.after))
    missing = sum(1 for r in regions if r.status == "rewritten"
                  and not (r.before and r.before.expressions))
    totals = dataclasses.replace(
        report.totals, before=_formulas_of(report.totals.before, symbolic.totals.before),
        after=_formulas_of(report.totals.after, symbolic.totals.after))
    notes = list(report.notes)
    if missing:
        notes.append(f"{missing} rewritten region(s) without formulas: their symbolic "
                     "capture differed or the sizes were fixed by the model")
    return dataclasses.replace(report, regions=regions, totals=totals, notes=notes)


def assemble(captured: Sequence[_Captured], profile: hardware.DeviceProfile, dtype: str,
             target: str, batch: int | None = None, seq_len: int | None = None) -> Report:
    """A Report from what the backend captured, graph by graph."""
    regions: list[Region] = []
    before, after = _GraphTotals(), _GraphTotals()
    sizes: dict[str, int] = {}
    names: dict[sympy.Symbol, sympy.Symbol] = {}
    notes: list[str] = []
    for graph in captured:
        graph_names = _symbol_names(graph.hints, batch, seq_len)
        names.update(graph_names)
        for symbol, value in graph.hints.items():
            sizes[str(graph_names.get(symbol, symbol))] = int(value)
        regions += [_rewritten(r, profile, graph.hints, graph_names) for r in graph.rewrites]
        regions += [Region(f.graph, f.kind, "fallback", reason=f.reason)
                    for f in graph.fallbacks]
        before.add(graph.before)
        after.add(graph.after)
    for name, value in ((BATCH_SYMBOL, batch), (SEQ_SYMBOL, seq_len)):
        if value is not None:
            sizes.setdefault(name, value)
    hints_all = {s: v for g in captured for s, v in g.hints.items()}
    totals = Totals(
        before=_total_figures(before, profile, hints_all, names),
        after=_total_figures(after, profile, hints_all, names),
        unpriced_before=dict(before.unpriced),
        unpriced_after=dict(after.unpriced),
    )
    if any(r.status == "rewritten" and r.before and r.before.read_bytes is None
           for r in regions):
        notes.append("some regions have only their total HBM bytes: their pass gave no Cost")
    return Report(target=target, device=profile.name, dtype=dtype, sizes=sizes,
                  graphs=len(captured), regions=regions, totals=totals, notes=notes)


def _rewritten(r: Rewrite, profile: hardware.DeviceProfile, hints: Mapping,
               names: Mapping[sympy.Symbol, sympy.Symbol]) -> Region:
    """A rewritten region's two sides: from the Costs the pass handed over where known,
    else from its evaluated totals (priced as bytes read: the model prices the sum anyway)."""
    dtype = str(r.detail.get("dtype", "float32"))
    flops_before = r.flops if r.flops_before is None else r.flops_before
    sides = []
    for c, hbm, flops in ((r.cost_before, r.hbm_bytes_before, flops_before),
                          (r.cost_after, r.hbm_bytes_after, r.flops)):
        sides.append(_figures(c, profile, dtype, hints, names) if c is not None
                     else _figures_from_totals(hbm, flops, profile, dtype))
    return Region(r.graph, r.kind, "rewritten", detail=dict(r.detail), backend=r.backend,
                  before=sides[0], after=sides[1])


def _figures_from_totals(hbm: int, flops: int, profile: hardware.DeviceProfile,
                         dtype: str) -> Figures:
    # a region's own kernel: its FLOPs are the matmuls (attention) the model counts
    c = cost.Cost(read_bytes=hbm, flops=flops, tensor_flops=flops)
    dtype = _peak_dtype(profile, dtype)
    return Figures(hbm_bytes=int(hbm), flops=int(flops),
                   modelled_time_s=cost.modelled_time(c, profile, dtype),
                   bound=cost.bound(c, profile, dtype))


def _total_figures(t: _GraphTotals, profile: hardware.DeviceProfile, hints: Mapping,
                   names: Mapping[sympy.Symbol, sympy.Symbol]) -> Figures:
    values = t.cost.evaluate(hints)
    return Figures(
        hbm_bytes=values["hbm_bytes"], flops=values["flops"], modelled_time_s=t.time_s,
        bound="memory" if t.memory_bound_s >= t.time_s - t.memory_bound_s else "compute",
        read_bytes=values["read_bytes"], write_bytes=values["write_bytes"],
        transcendentals=values["transcendentals"], expressions=_expressions(t.cost, names),
    )


# --- renderers --------------------------------------------------------------------------


def render_terminal(report: Report, *, width: int = 140, color: bool | None = None,
                    formulas: bool = False) -> str:
    """The regions table, the reasons for fallbacks, the totals; formulas on request."""
    from ioaware.tables import render, report_renderables

    return render(report_renderables(report, formulas=formulas), width=width, color=color)


def render_html(report: Report, *, formulas: bool = True) -> str:
    """One self-contained HTML page (inline styles, no scripts, nothing fetched)."""
    from rich.console import Console

    from ioaware.tables import report_renderables

    console = Console(record=True, width=160, file=_Discard(), force_terminal=True,
                      color_system="truecolor", highlight=False, emoji=False)
    for renderable in report_renderables(report, formulas=formulas):
        console.print(renderable)
    return console.export_html(inline_styles=True)


class _Discard:
    """A file that keeps nothing: the HTML is taken from rich's record, not its output."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def render_roofline(report: Report, path: str | Path) -> Path:
    """A log-log roofline PNG of the device at the report's dtype: each rewritten region
    before (open marker) and after (filled), joined by an arrow, and the whole graph.

    A point sits at (FLOPs / HBM byte, FLOPs / modelled time); the modelled time is a
    roofline floor, so every point lies on the roof, and moving right along it is the
    rewrite raising arithmetic intensity. Needs matplotlib (`pip install ioaware[plot]`).
    """
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'ioaware[plot]'") from e
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    profile = hardware.get_profile(report.device)
    peak = profile.peak_flops_for(_peak_dtype(profile, report.dtype))
    bandwidth = profile.bandwidth
    points = [(f"{i}: {r.kind}", r.before, r.after)
              for i, r in enumerate(report.regions) if r.before and r.after]
    points.append(("whole graph", report.totals.before, report.totals.after))
    intensities = [f.intensity for _, b, a in points for f in (b, a) if f.intensity > 0]
    ridge = peak / bandwidth
    low = min([ridge / 100, *intensities]) / 2
    high = max([ridge * 10, *intensities]) * 2

    figure = Figure(figsize=(8, 5.5), dpi=100)
    axes = figure.add_subplot()
    xs = [low, ridge, high]
    axes.loglog(xs, [min(peak, bandwidth * x) for x in xs], color="black", linewidth=1.5,
                label=f"{profile.name} roof: {peak / 1e12:.0f} TFLOP/s, "
                      f"{bandwidth / 1e12:.2f} TB/s")
    colors = matplotlib.colormaps["tab10"]
    for k, (label, before, after) in enumerate(points):
        color = colors(k % 10)
        xy = []
        for figures, filled in ((before, False), (after, True)):
            if figures.intensity <= 0 or figures.modelled_time_s <= 0:
                continue
            x, y = figures.intensity, figures.flops / figures.modelled_time_s
            xy.append((x, y))
            axes.scatter([x], [y], s=60, edgecolors=color, linewidths=1.5,
                         facecolors=color if filled else "none", zorder=3,
                         label=label if filled else None)
        if len(xy) == 2 and xy[0] != xy[1]:
            axes.annotate("", xy=xy[1], xytext=xy[0],
                          arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.7})
    axes.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    axes.set_ylabel("attained FLOP/s (modelled)")
    sizes = ", ".join(f"{k}={v}" for k, v in report.sizes.items())
    axes.set_title(f"{report.target or 'model'} on {profile.name}, {report.dtype}"
                   + (f" ({sizes})" if sizes else "") + "\nopen: before, filled: after",
                   fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path
