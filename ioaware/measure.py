"""Modelled beside measured: time and DRAM bytes of kernels on the GPU present.

Two uses:
- `ioaware report TARGET --measure`: run the compiled model on CUDA, time its kernels with
  torch.profiler (ioaware's generated kernels, Inductor's, and library kernels such as
  cuBLAS), and, where Nsight Compute (`ncu`) may read the GPU's counters, their DRAM
  bytes; print them beside the report's modelled figures with the ratio.
- `python -m ioaware.measure --cases`: the acceptance table (docs/cost-model.md) for
  single ops: the generated attention and scan kernels and eager matmul, softmax and
  elementwise ops, each priced by the cost model on its traced graph, timed with CUDA
  events and counted with `ncu`.

Counters: `ncu --metrics dram__bytes_read.sum,dram__bytes_write.sum` re-runs this module
as a child inside an NVTX range named `ioaware_measure` (warm-up outside it), with ncu's
default cache control (caches flushed before each kernel: the cold-cache IO model the
cost model prices). Times always come from CUDA events or the profiler, never from ncu,
which locks clocks to base. No GPU, no ncu, or counters not permitted
(ERR_NVGPUCTRPERM) each get a one-line message saying which; the rest still prints.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ioaware.config import config

NVTX_RANGE = "ioaware_measure"
METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
NCU_TIMEOUT_S = 900
# The acceptance bars of issue 5: bytes within ±15 %, time within a factor of 2.
BYTES_TOLERANCE, TIME_FACTOR = 0.15, 2.0


# --- Nsight Compute ---------------------------------------------------------------------


class CountersUnavailable(Exception):
    """ncu is missing, not permitted, or produced nothing; the message says which."""


_UNIT_SCALE = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
               "kibyte": 2**10, "mibyte": 2**20, "gibyte": 2**30}


def parse_ncu_csv(text: str) -> dict[str, dict[str, float]]:
    """ncu --csv output -> {"<ID> <kernel name>": {metric: bytes}}, one entry per launch."""
    start = text.find('"ID"')
    if start < 0:
        return {}
    kernels: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        metric = row.get("Metric Name")
        if metric not in METRICS:
            continue
        unit = (row.get("Metric Unit") or "byte").strip().lower()
        value = float((row.get("Metric Value") or "0").replace(",", ""))
        key = f"{row.get('ID')} {row.get('Kernel Name')}"
        kernels.setdefault(key, {})[metric] = value * _UNIT_SCALE.get(unit, 1)
    return kernels


def ncu_dram_bytes(child_args: Sequence[str]) -> dict[str, dict[str, float]]:
    """Run `python -m ioaware.measure CHILD_ARGS` under ncu; DRAM bytes per kernel launch
    inside the NVTX range. Raises CountersUnavailable with the reason."""
    ncu = shutil.which("ncu")
    if ncu is None:
        raise CountersUnavailable("Nsight Compute (ncu) is not on PATH: DRAM bytes not read")
    command = [ncu, "--csv", "--print-units", "base", "--metrics", ",".join(METRICS),
               "--nvtx", "--nvtx-include", f"{NVTX_RANGE}/", "--target-processes", "all",
               sys.executable, "-m", "ioaware.measure", *child_args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NCU_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise CountersUnavailable(f"ncu took over {NCU_TIMEOUT_S} s; DRAM bytes not read"
                                  ) from None
    output = done.stdout + done.stderr
    if "ERR_NVGPUCTRPERM" in output:
        raise CountersUnavailable(
            "ncu is not permitted to read the GPU's performance counters here "
            "(ERR_NVGPUCTRPERM; needs root or NVreg_RestrictProfilingToAdminUsers=0)")
    kernels = parse_ncu_csv(done.stdout)
    if not kernels:
        last = (output.strip().splitlines() or ["no output"])[-1]
        raise CountersUnavailable(f"ncu read no kernels (exit {done.returncode}): {last}")
    return kernels


def _total_bytes(kernels: dict[str, dict[str, float]], match: Callable[[str], bool]
                 = lambda _: True) -> float:
    return sum(sum(v.values()) for k, v in kernels.items() if match(k))


# --- timing -------------------------------------------------------------------------------


def kernel_times(run: Callable[[], Any], repeats: int = 5) -> dict[str, tuple[int, float]]:
    """torch.profiler over `repeats` calls of `run`: kernel name -> (launches per call,
    seconds per call)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    times: dict[str, tuple[int, float]] = {}
    for event in prof.key_averages():
        # self_device_time_total (torch >= 2.4); self_cuda_time_total before. Microseconds.
        us = getattr(event, "self_device_time_total", None)
        if us is None:
            us = getattr(event, "self_cuda_time_total", 0)
        if us and _is_kernel(event):
            times[event.key] = (max(event.count // repeats, 1), us / 1e6 / repeats)
    return times


def _is_kernel(event: Any) -> bool:
    device_type = str(getattr(event, "device_type", ""))
    return "CUDA" in device_type or "cuda" in device_type.lower() or "Memcpy" in event.key


def kernel_family(name: str) -> str:
    """Which part of the compiled model a kernel is, from its name: ioaware's generated
    "attention" or "scan" kernels, Inductor's fused "inductor" kernels, or "library"
    (cuBLAS, cuDNN, ATen's own)."""
    if "_attn_" in name:
        return "attention"
    if "_selective_scan" in name or "_linear_scan" in name:
        return "scan"
    if name.startswith("triton_"):
        return "inductor"
    return "library"


REGION_FAMILIES = ("attention", "scan")


# --- report --measure ---------------------------------------------------------------------


def _child_target_args(options: argparse.Namespace) -> list[str]:
    args = ["--target", options.target]
    for flag, value in (("--batch", options.batch), ("--seq-len", options.seq_len),
                        ("--dtype", options.dtype)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _load_on_cuda(options: argparse.Namespace) -> tuple[Any, tuple, dict]:
    from ioaware.target import load_target, make_overrides, on_device

    model, args, kwargs = load_target(options.target, make_overrides(options), device="cuda")
    return on_device(model, args, kwargs, "cuda")


def _compiled_forward(options: argparse.Namespace) -> Callable[[], Any]:
    """The target (`--target`, `--batch`, `--seq-len`, `--dtype`) compiled and warm."""
    import ioaware

    model, args, kwargs = _load_on_cuda(options)
    compiled = ioaware.compile(model)

    def run() -> Any:
        with torch.no_grad():
            return compiled(*args, **kwargs)

    for _ in range(3):  # compile, autotune, warm the caches
        run()
    torch.cuda.synchronize()
    return run


def measure_report(options: argparse.Namespace, report: Any) -> str:
    """The measured section of `ioaware report --measure`, as text; never raises for a
    missing GPU or counters (the modelled report has already printed)."""
    from ioaware.tables import format_bytes, format_seconds

    if not torch.cuda.is_available():
        return ("measure: no CUDA GPU here (torch.cuda.is_available() is False); "
                "only the modelled figures above\n")
    run = _compiled_forward(options)
    times = kernel_times(run)
    lines = ["measured on " + torch.cuda.get_device_name() + " (torch.profiler, per forward):"]
    families: dict[str, float] = {}
    for name, (launches, seconds) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        families[kernel_family(name)] = families.get(kernel_family(name), 0.0) + seconds
        lines.append(f"  {seconds * 1e6:10.1f} µs  ×{launches:<3d} {kernel_family(name):9s} "
                     f"{name[:90]}")
    measured_total = sum(families.values())
    lines.append("")
    for kind in REGION_FAMILIES:
        regions = [r for r in report.rewritten if r.kind == kind and r.after]
        if regions or families.get(kind):
            lines.append(_ratio_line(f"{kind} kernels, time",
                                     sum(r.after.modelled_time_s for r in regions),
                                     families.get(kind, 0.0), format_seconds))
    lines.append(_ratio_line("all kernels, time", report.totals.after.modelled_time_s,
                             measured_total, format_seconds))
    try:
        kernels = ncu_dram_bytes(["--child", *_child_target_args(options)])
    except CountersUnavailable as why:
        lines.append(f"DRAM bytes: {why}")
    else:
        for kind in REGION_FAMILIES:
            regions = [r for r in report.rewritten if r.kind == kind and r.after]
            measured = _total_bytes(
                kernels, lambda k, kind=kind: kernel_family(k.split(" ", 1)[-1]) == kind)
            if regions or measured:
                modelled = sum(r.after.hbm_bytes if r.after.dram_bytes is None
                               else r.after.dram_bytes for r in regions)
                lines.append(_ratio_line(f"{kind} kernels, DRAM bytes", modelled, measured,
                                         format_bytes))
        lines.append(_ratio_line("all kernels, DRAM bytes", report.totals.after.hbm_bytes,
                                 _total_bytes(kernels), format_bytes))
        lines += _l2_resident_notes(report)
    lines.append("(the model prices the rest of the graph op by op, as eager runs it; "
                 "Inductor fuses it, so the all-kernels lines read high, and unpriced ops "
                 "are in the measured side only)")
    return "\n".join(lines) + "\n"


def _l2_resident_notes(report: Any) -> list[str]:
    """A line per rewritten kernel family whose launches each move less than the device's
    L2: ncu then counts below the model for reasons the model leaves out on purpose (its
    inputs may still be in L2, written by the kernel before it, and its outputs may be
    written back to DRAM after it ends, so during a later kernel)."""
    from ioaware import hardware
    from ioaware.tables import format_bytes

    try:
        l2 = hardware.get_profile(report.device).l2
    except ValueError:
        return []
    notes = []
    for kind in REGION_FAMILIES:
        moved = [r.after.hbm_bytes for r in report.rewritten if r.kind == kind and r.after]
        if moved and max(moved) < l2:
            notes.append(f"({kind} kernels each move under the {format_bytes(l2)} L2: their "
                         "inputs can still be there from the kernels that wrote them and "
                         "their outputs reach DRAM after they end, so the counters read "
                         "low; the model counts each input and output once)")
    return notes


def _ratio_line(what: str, modelled: float, measured: float,
                fmt: Callable[[float], str]) -> str:
    ratio = f"{modelled / measured:.2f}" if measured else "-"
    return f"{what:30s} modelled {fmt(modelled):>10s}  measured {fmt(measured):>10s}  " \
           f"modelled/measured {ratio}"


# --- acceptance cases -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One op to price, time and count: fn(*inputs()) on CUDA."""

    name: str
    fn: Callable[..., Any]
    inputs: Callable[[], tuple]
    dtype: str


def cases(device: str = "cuda", small: bool = False) -> list[Case]:
    """The acceptance ops at sizes where each is far from launch overhead (small: tiny
    sizes, for checking on a CPU that every case traces and is fully priced)."""
    from ioaware.codegen.attention import op as ops  # noqa: F401  (registers torch.ops.ioaware)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=torch.bfloat16)

    b, h, n, d = (1, 2, 128, 64) if small else (4, 16, 4096, 128)
    m = 64 if small else 8192  # matmul m = n = k
    rows, cols = (64, 128) if small else (16 * 4096, 4096)
    elements = 4096 if small else 2**28
    found = [
        Case("attention (ioaware, causal)",
             lambda q, k, v: torch.ops.ioaware.flash_attention(q, k, v, d ** -0.5, True),
             lambda: (randn(b, h, n, d), randn(b, h, n, d), randn(b, h, n, d)), "bfloat16"),
        Case(f"matmul (eager, {m}³)", torch.mm, lambda: (randn(m, m), randn(m, m)),
             "bfloat16"),
        Case("softmax (eager)", lambda x: torch.softmax(x, dim=-1), lambda: (randn(rows, cols),),
             "bfloat16"),
        Case("add (eager, elementwise)", torch.add,
             lambda: (randn(elements), randn(elements)), "bfloat16"),
        Case("gelu (eager, elementwise)", torch.nn.functional.gelu,
             lambda: (randn(elements),), "bfloat16"),
    ]
    try:
        from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers the scan ops)
    except ImportError:
        return found
    bt, dc, length, state = (1, 32, 32, 16) if small else (8, 2048, 2048, 16)
    found.insert(1, Case(
        "selective scan (ioaware)",
        lambda u, delta, A, B, C: torch.ops.ioaware.selective_scan(
            u, delta, A, B, C, None, None, None, True, None),
        lambda: (randn(bt, dc, length), randn(bt, dc, length),
                 -torch.rand(dc, state, device=device), randn(bt, 1, length, state),
                 randn(bt, 1, length, state)),
        "bfloat16"))
    return found


def modelled_cost(case: Case, inputs: tuple) -> Any:
    """The cost model's Cost of the case: its canonical graph, every node priced."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from ioaware import capture, cost

    gm = make_fx(case.fn, tracing_mode="fake", pre_dispatch=True,
                 decomposition_table=capture.CANONICAL_DECOMPOSITIONS)(*inputs)
    total = cost.Cost()
    for node in gm.graph.nodes:
        c = cost.node_cost(node)
        if c is None:
            raise ValueError(f"{case.name}: {node.format_node()} is unpriced")
        total = total + c
    return total


def modelled_dram_bytes(c: Any, profile: Any) -> int:
    """What the model says DRAM moves (ncu counts DRAM only): HBM bytes less the re-reads
    L2 serves, plus a matmul's spill past L2 (`cost.dram_bytes`)."""
    from ioaware import cost

    return cost.dram_bytes(c, profile)


def _terms(c: Any, profile: Any, dtype: str) -> str:
    """Which parts of `cost.ceilings` make the modelled time: "tensor+sfu", "hbm+latency"."""
    from ioaware import cost

    t = cost.ceilings(c, profile, dtype)
    if max(t["hbm"], t["l2"]) >= t["compute"]:
        terms = ["hbm" if t["hbm"] >= t["l2"] else "l2"]
    else:
        terms = [p for p in ("tensor", "vector", "sfu") if t[p] >= 0.05 * t["compute"]]
        if c.kernel and c.kernel in profile.kernel_efficiency:
            terms.append("/eff")
    if t["latency"]:
        terms.append("latency")
    return "+".join(terms)


def acceptance_table(device: str, counters: bool = True) -> str:
    """Modelled vs measured DRAM bytes and time for every case (docs/cost-model.md)."""
    from ioaware import cost, hardware
    from ioaware.calibrate import time_op
    from ioaware.tables import format_bytes, format_seconds

    profile = hardware.get_profile(device)
    rows, why = [], ""
    counted: dict[str, float] = {}
    if counters:
        for case in cases():
            try:
                counted[case.name] = _total_bytes(ncu_dram_bytes(["--case", case.name]))
            except CountersUnavailable as e:
                why = str(e)
                break
    header = (f"{'op':30s} {'bytes model':>11s} {'bytes ncu':>11s} {'ratio':>6s}   "
              f"{'time model':>11s} {'time meas.':>11s} {'ratio':>6s}  ok   model terms")
    rows.append(header)
    for case in cases():
        inputs = case.inputs()
        c = modelled_cost(case, inputs)
        model_bytes = modelled_dram_bytes(c, profile)
        model_time = cost.modelled_time(c, profile, case.dtype)
        seconds = time_op(lambda c=case, x=inputs: c.fn(*x))
        measured = counted.get(case.name)
        byte_ratio = model_bytes / measured if measured else math.nan
        time_ratio = model_time / seconds
        ok = (abs(byte_ratio - 1) <= BYTES_TOLERANCE if measured else True) and (
            1 / TIME_FACTOR <= time_ratio <= TIME_FACTOR)
        rows.append(
            f"{case.name:30s} {format_bytes(model_bytes):>11s} "
            f"{format_bytes(measured) if measured else '-':>11s} "
            f"{byte_ratio:6.2f}   {format_seconds(model_time):>11s} "
            f"{format_seconds(seconds):>11s} {time_ratio:6.2f}  {'yes' if ok else 'NO ':4s}"
            f" {_terms(c, profile, case.dtype)}")
    title = (f"modelled ({profile.name} profile) vs measured on {torch.cuda.get_device_name()}, "
             f"torch {torch.__version__}; bytes ±{BYTES_TOLERANCE:.0%}, time within "
             f"{TIME_FACTOR:g}x")
    notes = [f"DRAM bytes: {why}"] if why else []
    if not profile.memory_latency:
        notes.append(f"{profile.name} has no measured memory_latency: the row-per-CTA "
                     "softmax is priced at its bandwidth alone (run `ioaware calibrate`)")
    return "\n".join([title, *rows, *notes]) + "\n"


# --- entry point ----------------------------------------------------------------------------


def _child(options: argparse.Namespace) -> int:
    """Run once under ncu: warm up outside the NVTX range, then one call inside it."""
    if options.case:
        case = {c.name: c for c in cases()}[options.case]
        inputs = case.inputs()
        run = lambda: case.fn(*inputs)
        run()
    else:
        run = _compiled_forward(options)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push(NVTX_RANGE)
    run()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ioaware.measure",
        description="Modelled vs measured DRAM bytes and time on this GPU (issue 5).")
    parser.add_argument("--cases", action="store_true",
                        help="print the acceptance table: attention, scan, matmul, softmax, "
                        "elementwise")
    parser.add_argument("--device", default=config.default_device,
                        help="profile the model prices against (default: %(default)s)")
    parser.add_argument("--no-counters", action="store_true", help="skip ncu")
    # Internal: what the ncu child runs.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("ioaware.measure: needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    if options.child or options.case:
        return _child(options)
    if options.cases:
        print(acceptance_table(options.device, counters=not options.no_counters), end="")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
