"""Where a generate() decode step spends its host time, ioaware.compile beside
torch.compile (issue 16: ioaware.compile was 0.53x torch.compile's tokens/s on an H100).

The model and generation are `ioaware bench decode --generate-only`'s (4-layer
Llama-style, hidden 2048, GQA 16/4, StaticCache, bf16, 128 prompt tokens, transformers'
own compile off). At batch 1 the step is host-bound: its weights (~0.67 GB) read once
take ~0.2 ms at 3.35 TB/s, against 2.4 ms a token for torch.compile, so the tokens/s
are the host path's. Per variant (default mode, then reduce-overhead through
`graph_steps`), after one generate() that compiles:

  - ms per token of a generate() of NEW tokens, the graphs dynamo compiled and its
    graph breaks (2 graphs, no breaks, is what a StaticCache needs), what ioaware left
    as it was (an Inductor failure runs a graph unfused, at about eager's speed);
  - per token, from torch.profiler: kernel launches, host syncs (stream/device
    synchronize, device-to-host copies, `aten::_local_scalar_dense`), calls of the
    ioaware ops, and the top CPU ops by self time;
  - with --cprofile, the top Python functions by own time over one generate().

    PYTHONUNBUFFERED=1 python scripts/gpu_generate_host.py [--new 64] [--cprofile]

Each variant runs in its own process (`--variant NAME`), with the seconds Python's
garbage collector took per token. About 3-4 minutes on an H100. A measurement, never a
test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import subprocess
import sys
import time
from typing import Self

import torch

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
         "aten::_local_scalar_dense")


def _per_token(events, new: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for e in events:
        name = e.key
        if "LaunchKernel" in name or name in SYNCS or name.startswith("ioaware::") or \
                ("Memcpy" in name and "DtoH" in name) or name == "cudaMemcpyAsync":
            counts[name] = counts.get(name, 0) + e.count / new
    return counts


class GCClock:
    """Python's garbage collections while on, and the time they took (`gc.callbacks`).
    A suspect for the host slowdown across every op of the variant run third in one
    process (docs/performance.md, seventh session): collections scale with the tracked
    objects a process holds, and their time lands in whatever op runs."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = 0.0
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)


def run_variant(name: str, build, model, ids, new: int, use_cprofile: bool) -> None:
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    from ioaware.bench.decode import _fallbacks, compile_counts, generate_kwargs, graph_steps

    torch._dynamo.reset()
    counters.clear()
    eager_forward = model.forward
    compiled = build(eager_forward)
    model.forward = graph_steps(compiled) if "reduce-overhead" in name else compiled
    kwargs = generate_kwargs(new)
    try:
        with torch.no_grad():
            model.generate(ids, **kwargs)  # compiles
            torch.cuda.synchronize()
            with GCClock() as clock:
                start = time.perf_counter()
                model.generate(ids, **kwargs)
                torch.cuda.synchronize()
                ms = (time.perf_counter() - start) * 1e3 / new
            graphs, breaks = compile_counts()
            print(f"\n== {name}: {ms:.2f} ms/token ({1e3 / ms:.0f} tokens/s), "
                  f"{graphs} graphs, {breaks} breaks")
            print(f"   gc: {clock.seconds * 1e3 / new:.3f} ms per token in "
                  f"{sum(clock.collections)} collections (by generation "
                  f"{clock.collections}), {len(gc.get_objects())} objects tracked")
            fell_back = _fallbacks(compiled)
            if fell_back:
                print(f"   ioaware fallbacks: {fell_back}")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model.generate(ids, **kwargs)
                torch.cuda.synchronize()
            events = prof.key_averages()
            counts = _per_token(events, new)
            print("   per token: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(counts.items())))
            top = sorted((e for e in events if e.self_cpu_time_total > 0),
                         key=lambda e: -e.self_cpu_time_total)[:12]
            print("   top CPU ops by self time, µs per token:")
            for e in top:
                print(f"     {e.self_cpu_time_total / new:8.1f}  {e.count / new:5.1f}x  {e.key}")
            if use_cprofile:
                profiler = cProfile.Profile()
                profiler.enable()
                model.generate(ids, **kwargs)
                torch.cuda.synchronize()
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    except Exception as error:  # noqa: BLE001  (a variant that fails is a line, not a crash)
        print(f"\n== {name}: failed: {type(error).__name__}: {str(error)[:300]}")
    finally:
        model.forward = eager_forward


def variants() -> dict:
    """Each variant's name and how it compiles the model's forward."""
    import ioaware

    return {
        "eager": lambda f: f,
        "torch.compile": torch.compile,
        "ioaware.compile": ioaware.compile,
        "torch.compile(reduce-overhead)": lambda f: torch.compile(f, mode="reduce-overhead"),
        "ioaware.compile(reduce-overhead)": lambda f: ioaware.compile(
            f, mode="reduce-overhead"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=64, help="new tokens per generate()")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--cprofile", action="store_true",
                        help="also the top Python functions of one generate()")
    parser.add_argument("--variant", default=None,
                        help="run only this variant (how each one runs, in its own process)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    if args.variant is not None:
        from ioaware.bench.decode import generate_model

        torch.manual_seed(0)  # every variant's process builds the same model
        model = generate_model()
        ids = torch.randint(1, 32000, (1, args.prompt), device="cuda")
        run_variant(args.variant, variants()[args.variant], model, ids, args.new,
                    args.cprofile)
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name in variants():
        # Each variant in its own process. The reduce-overhead ones both died with
        # SIGSEGV on the H200 (2026-12-07) after the default rows had printed, taking the
        # rest with them; and on the H100 (seventh session) every CPU op of the variant
        # run third in one process took ~1.5x the host time it took in the second (the
        # same 30 aten::mm a token: 771 against 506 µs), so a shared process is no
        # comparison. A fresh process holds no earlier variant's graphs, caches or
        # objects.
        command = [sys.executable, __file__, "--variant", name, "--new", str(args.new),
                   "--prompt", str(args.prompt)] + (["--cprofile"] if args.cprofile else [])
        sys.stdout.flush()  # the child writes to the same stdout
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            how = (f"signal {-done.returncode}" if done.returncode < 0
                   else f"exit {done.returncode}")
            print(f"\n== {name}: its process died ({how})", flush=True)


if __name__ == "__main__":
    main()
