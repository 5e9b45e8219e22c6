"""Compile time of a Mamba-style model through ioaware.compile, phase by phase, in one run.

    python3 scripts/compile_time_scan.py [--layers 24] [--length 2048] [--path assoc|loop]
        [--device cuda|cpu] [--hidden 256] [--combine-mode auto|pointwise|generic]
        [--budget SECONDS] [--profile] [--dynamo-alone]

Builds a `transformers` MambaForCausalLM with random weights (`use_associative_scan` for
--path assoc; older transformers lack it and the script says so), calls the
`ioaware.compile`d model twice under no_grad and splits the first call into:

  dynamo        dynamo's own tracing and guards: the first call minus everything below
                (for --path loop this is where the L unrolled steps are traced)
  capture       ioaware.capture.canonicalize: make_fx re-tracing dynamo's graph
  pass:NAME     each pass of passes/pipeline.py
  backend rest  the backend's own remainder (size hints, bookkeeping)
  inductor      compile_fx of the rewritten graph (CUDA only; its Triton kernels compile
                in worker processes inside this phase)
  first run     the first execution of the compiled graphs: our kernels' Triton compile
                and autotuning (shown separately when they happen in this process), plus
                one run, whose cost the second call shows

with the number of graphs dynamo handed the backend, recompiles and graph breaks. On the
CPU without IOAWARE_INTERPRET the rewritten regions run the torch reference path, a proxy
for everything but the Triton compile.

transformers picks associative_scan's combine_mode from the device: "pointwise" (the
higher-order op, whole) on CUDA, "generic" (an odd-even tree of vmapped combines that
dynamo inlines) elsewhere. --combine-mode pointwise builds on the CPU the graph that CUDA
gets, so the CUDA capture can be timed here.

--budget bounds the wall time: when it runs out the phases measured so far, the phase in
progress and where the main thread is are printed, and the script exits with status 3.
--profile adds a cProfile top-25 (cumulative) of the whole first call, printed at the end
or when the budget runs out.

The issue's target (issue 4): under one minute on a GPU machine for 24 layers at L=2048 on
the associative_scan path.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import functools
import importlib
import io
import os
import pstats
import sys
import threading
import time
import traceback
import warnings

import torch
import transformers
from torch.utils import _pytree as pytree

import ioaware
from ioaware import backend, capture
from ioaware.passes import pipeline


class Phases:
    """Wall time per phase, summed over every graph; the phase in progress, for a timeout."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.current: list[tuple[str, float]] = []
        self.nodes: list[tuple[int, int]] = []  # (dynamo's, canonical) per graph
        self.graphs: list = []  # the canonical graphs, rewritten
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def timed(self, name: str):
        """Time `name`; a call inside a phase is named after it ("triton.compile in
        inductor"), and a phase re-entered (compile_fx calls itself) counts once."""
        start = time.perf_counter()
        with self.lock:
            outer = [n for n, _ in self.current]
            if name.endswith(" in"):
                name = f"{name} {outer[-1] if outer else 'none'}"
            nested = name in outer
            self.current.append((name, start))
        try:
            yield
        finally:
            with self.lock:
                self.current.pop()
                if not nested:
                    elapsed = time.perf_counter() - start
                    self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
                    self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed_fn(*args, **kwargs):
            with self.timed(name):
                return fn(*args, **kwargs)

        return timed_fn

    def get(self, name: str) -> float:
        return self.seconds.get(name, 0.0)


PHASES = Phases()


def instrument() -> None:
    """Time each phase by wrapping what the backend looks up at call time (no edits to it)."""
    canonicalize = PHASES.wrap("capture", capture.canonicalize)

    def counted(gm, example_inputs):
        canon = canonicalize(gm, example_inputs)
        PHASES.nodes.append((len(gm.graph.nodes), len(canon.graph.nodes)))
        PHASES.graphs.append(canon)  # the passes rewrite it in place
        return canon

    capture.canonicalize = counted
    pipeline.PIPELINE[:] = [
        dataclasses.replace(p, **{f: PHASES.wrap(f"pass:{p.name}", getattr(p, f))
                                  for f in ("candidates", "match", "apply")})
        for p in pipeline.PIPELINE
    ]
    import torch._inductor.compile_fx as inductor

    # the backend imports compile_fx inside _finish, so the module attribute is what it gets
    inductor.compile_fx = PHASES.wrap("inductor", inductor.compile_fx)

    call = backend.IoawareBackend.__call__

    def backend_call(self, gm, example_inputs):
        with PHASES.timed("backend"):
            compiled = call(self, gm, example_inputs)
        first = [True]

        def run(*args):
            if first[0]:
                first[0] = False
                with PHASES.timed("first run"):
                    return compiled(*args)
            return compiled(*args)

        return run

    backend.IoawareBackend.__call__ = backend_call
    _instrument_triton()


def _instrument_triton() -> None:
    """Triton compiles and autotuning in this process, named after the phase they happen
    in (ours in 'first run'; Inductor's in 'inductor', or in its worker processes, which
    only 'inductor' itself shows)."""
    try:
        import triton
        import triton.compiler
        from triton.runtime import autotuner
    except ImportError:
        return
    timed_compile = PHASES.wrap("triton.compile in", triton.compiler.compile)
    # JITFunction binds `compile` when a kernel is defined; ours are defined at first use
    triton.compiler.compile = timed_compile
    if getattr(triton, "compile", None) is not None:
        triton.compile = timed_compile
    if hasattr(autotuner.Autotuner, "run"):
        autotuner.Autotuner.run = PHASES.wrap("triton autotune in", autotuner.Autotuner.run)


def force_combine_mode(mode: str) -> None:
    """Make transformers' associative_scan call use `mode` whatever the device.

    "pointwise" on the CPU calls the higher-order op itself, as torch's pointwise branch
    does, without that branch's CUDA-only check: dynamo then records what it records on
    CUDA (one `torch.ops.higher_order.associative_scan` per layer)."""
    # the package re-exports the function under the module's name: take the module itself
    hop = importlib.import_module("torch._higher_order_ops.associative_scan")
    eager = hop.associative_scan

    def forced(combine_fn, xs, dim, reverse=False, combine_mode="pointwise"):
        leaves, spec = pytree.tree_flatten(xs)
        if mode == "generic" or all(x.device.type in ("cuda", "xpu") for x in leaves):
            return eager(combine_fn, xs, dim, reverse=reverse, combine_mode=mode)
        leaves = [torch.movedim(x, dim, 0) for x in leaves]
        if reverse:
            leaves = [torch.flip(x, [0]) for x in leaves]
        flat = functools.partial(hop.wrap_combine_fn_flat, combine_fn=combine_fn, spec=spec,
                                 num_leaves=len(leaves))
        out = list(hop.associative_scan_op(flat, leaves, additional_inputs=()))
        if reverse:
            out = [x.flip([0]) for x in out]
        return pytree.tree_unflatten([torch.movedim(x, 0, dim) for x in out], spec)

    hop.associative_scan = forced


def force_assoc_branch() -> None:
    """Make transformers' Mamba take its associative_scan branch under dynamo.

    Its gate (`is_torch_greater_or_equal("2.9.0")` to import the op, then
    `is_torchdynamo_compiling() and not is_torchdynamo_exporting()`) is evaluated inside
    the traced frame. On the GPU machine (torch 2.11, transformers 5.23) the traced
    graph of `use_associative_scan=True` held no associative_scan and one matmul per step:
    the loop branch. Here the version test is answered once, eagerly, and the two dynamo
    tests by torch.compiler itself, so the branch is what the config asks for."""
    from transformers.models.mamba import modeling_mamba as mm

    at_least = {v: mm.is_torch_greater_or_equal(v) for v in ("2.9.0",)}
    mm.is_torch_greater_or_equal = lambda v, accept_dev=False: at_least.get(v, True)
    mm.is_torchdynamo_compiling = torch.compiler.is_compiling
    mm.is_torchdynamo_exporting = lambda: False
    mm.is_mambapy_available = lambda: False


def build(layers: int, hidden: int, assoc: bool) -> torch.nn.Module:
    cfg = transformers.MambaConfig(
        num_hidden_layers=layers, hidden_size=hidden, state_size=16,
        intermediate_size=2 * hidden, vocab_size=256, use_cache=False,
    )
    if not hasattr(cfg, "use_associative_scan"):
        if assoc:
            raise SystemExit("this transformers has no use_associative_scan; use --path loop")
    else:
        # set either way: transformers >= 5.23 defaults it to True
        cfg.use_associative_scan = assoc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.MambaForCausalLM(cfg)


def _dynamo_counters() -> dict[str, int]:
    c = torch._dynamo.utils.counters
    return {
        "frames compiled": c["frames"]["ok"],
        "recompiles": sum(c["recompiles"].values()),
        "graph breaks": sum(c["graph_break"].values()),
        "unique graphs": c["stats"]["unique_graphs"],
    }


def report(first: float | None, second: float | None, rewrites: int) -> str:
    """The breakdown so far, one phase a line."""
    p = PHASES
    backend_s = p.get("backend")
    inside = sum(p.get(k) for k in p.seconds
                 if k in ("capture", "inductor") or k.startswith("pass:"))
    lines = []
    if first is not None:
        dynamo = first - backend_s - p.get("first run")
        lines.append(f"  {'dynamo (tracing, guards)':28s}{dynamo:9.2f} s")
    lines.append(f"  {'capture (make_fx)':28s}{p.get('capture'):9.2f} s")
    lines += [f"  {k:28s}{v:9.2f} s" for k, v in p.seconds.items() if k.startswith("pass:")]
    lines.append(f"  {'backend rest':28s}{backend_s - inside:9.2f} s")
    lines.append(f"  {'inductor (compile_fx)':28s}{p.get('inductor'):9.2f} s")
    lines.append(f"  {'first run':28s}{p.get('first run'):9.2f} s")
    for k in sorted(p.seconds):
        if k.startswith("triton"):
            lines.append(f"  {'  ' + k:28s}{p.get(k):9.2f} s   ({p.calls[k]} calls)")
    if first is not None:
        lines.append(f"  {'first call, total':28s}{first:9.2f} s")
    if second is not None:
        lines.append(f"  {'second call':28s}{second:9.2f} s")
        if first is not None:
            lines.append(f"  {'compile ≈ first - second':28s}{first - second:9.2f} s")
    counts = _dynamo_counters()
    lines.append(f"  graphs to the backend: {p.calls.get('backend', 0)}, "
                 + ", ".join(f"{k}: {v}" for k, v in counts.items())
                 + f", scan rewrites: {rewrites}")
    if p.nodes:
        lines.append("  nodes per graph (dynamo's → canonical): "
                     + ", ".join(f"{a} → {b}" for a, b in p.nodes))
    if p.graphs and first is not None:
        lines.append("  what the rewritten graphs hand on: " + ", ".join(
            f"{k} {v}" for k, v in sorted(_scan_ops_left(p.graphs).items())))
    return "\n".join(lines)


def _scan_ops_left(graphs: list) -> dict[str, int]:
    """Scan-related ops left in the rewritten graphs: ours, and what Inductor would lower
    to a scan kernel of its own (an associative_scan left whole, cumsum/cumprod)."""
    counts: dict[str, int] = {}
    for gm in graphs:
        for n in gm.graph.nodes:
            name = str(n.target)
            if n.op == "call_function" and any(
                    k in name for k in ("ioaware", "associative_scan", "cumprod", "cumsum")):
                key = name + " (unused)" * (not n.users)
                counts[key] = counts.get(key, 0) + 1
    return counts


def _profile_top(prof: cProfile.Profile, n: int = 25) -> str:
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(n)
    print("ioaware's own functions:", file=out)
    stats.print_stats(r"/(ioaware|passes|codegen)/", 15)
    return out.getvalue()


def _watchdog(budget: float, started: float, prof: cProfile.Profile | None) -> None:
    """After `budget` seconds: print what is known, where the main thread is, and exit."""

    def expire():
        try:
            elapsed = time.perf_counter() - started
            lines = [f"\nBUDGET OF {budget:.0f} s RAN OUT after {elapsed:.1f} s; so far:"]
            lines.append(report(None, None, backend.counters["scan"]))
            with PHASES.lock:
                now = time.perf_counter()
                current = [f"{name} for {now - t0:.1f} s" for name, t0 in PHASES.current]
            lines.append("  in progress: " + (", ".join(current) or "dynamo (or model build)"))
            frame = sys._current_frames().get(threading.main_thread().ident)
            if frame is not None:
                # ioaware's own frames, then the innermost ones
                stack = traceback.extract_stack(frame)
                ours = [f for f in stack[:-15]
                        if any(k in f.filename for k in ("ioaware", "passes", "codegen"))]
                lines.append("main thread, outermost first (file:line function):")
                where = [f"    {os.path.basename(f.filename)}:{f.lineno} {f.name}"
                         for f in ours[-10:]]
                lines += where + ["    ..."] * bool(where)
                lines += [f"    {os.path.basename(f.filename)}:{f.lineno} {f.name}"
                          for f in stack[-15:]]
            print("\n".join(lines), flush=True)
            if prof is not None:
                print(_profile_top(prof), flush=True)
        finally:
            os._exit(3)

    timer = threading.Timer(budget, expire)
    timer.daemon = True
    timer.start()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--path", choices=["assoc", "loop"], default="assoc")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--combine-mode", choices=["auto", "pointwise", "generic"], default="auto",
                   help="associative_scan's combine_mode (auto: transformers' choice)")
    p.add_argument("--force-assoc-branch", action="store_true",
                   help="answer transformers' associative_scan gate outside dynamo "
                        "(torch 2.11 took the loop branch under dynamo)")
    p.add_argument("--budget", type=float, default=600.0, help="wall limit in seconds")
    p.add_argument("--profile", action="store_true", help="cProfile top-25 of the first call")
    p.add_argument("--dynamo-alone", action="store_true",
                   help="also time dynamo with a pass-through backend (a second trace)")
    args = p.parse_args()
    started = time.perf_counter()

    if args.combine_mode != "auto":
        force_combine_mode(args.combine_mode)
    if args.force_assoc_branch:
        force_assoc_branch()
    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.path == "assoc").to(args.device).eval()
    ids = torch.randint(0, 256, (1, args.length), device=args.device)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.device}, {args.layers} layers, L={args.length}, hidden={args.hidden}, "
          f"path={args.path}, combine_mode={args.combine_mode}", flush=True)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    prof = cProfile.Profile() if args.profile else None
    _watchdog(args.budget, started, prof)
    instrument()
    with torch.no_grad():
        fast = ioaware.compile(model)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        start = time.perf_counter()
        if prof is not None:
            prof.enable()
        fast(ids)
        sync()
        if prof is not None:
            prof.disable()
        first = time.perf_counter() - start
        start = time.perf_counter()
        fast(ids)
        sync()
        second = time.perf_counter() - start
        print("ioaware.compile, first call split by phase:")
        print(report(first, second, backend.counters["scan"]), flush=True)
        if prof is not None:
            print(_profile_top(prof))
        if args.dynamo_alone:
            torch._dynamo.reset()
            start = time.perf_counter()
            torch.compile(model, backend=lambda gm, _: gm.forward)(ids)
            sync()
            print(f"dynamo alone (capture + eager run): {time.perf_counter() - start:8.2f} s")
    print(f"wall: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
