"""Compile time of a Mamba-style model through ioaware.compile, and where it goes.

    python3 scripts/compile_time_scan.py [--layers 24] [--length 2048] [--path assoc|loop]
                                         [--device cuda|cpu] [--hidden 256]

Builds a `transformers` MambaForCausalLM with random weights (`use_associative_scan` for
--path assoc; transformers <= 5.17 lacks it and the script says so) and times, each from
a fresh dynamo:

  dynamo     torch.compile with a backend that returns the graph as it is: dynamo's own
             capture (for --path loop this is where the L unrolled steps are traced)
  ioaware    ioaware.compile's first call minus a second call: capture + canonicalise
             + passes (+ Inductor on CUDA) + the generated kernels' compilation
  passes     the scan pass alone (inside the above), and its share of dynamo's time

On the CPU without IOAWARE_INTERPRET the rewritten regions run the torch reference path,
a proxy for everything but the Triton compile. The issue's target (issue 4): under one
minute on a GPU machine for 24 layers at L=2048 on the associative_scan path.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
import transformers

import ioaware
from ioaware.passes import scan

timings: dict[str, float] = {"passes": 0.0}


def _timed_scan_run(run):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            timings["passes"] += time.perf_counter() - start

    return wrapper


def build(layers: int, hidden: int, assoc: bool) -> torch.nn.Module:
    cfg = transformers.MambaConfig(
        num_hidden_layers=layers, hidden_size=hidden, state_size=16,
        intermediate_size=2 * hidden, vocab_size=256, use_cache=False,
    )
    if assoc:
        if not hasattr(cfg, "use_associative_scan"):
            raise SystemExit("this transformers has no use_associative_scan; use --path loop")
        cfg.use_associative_scan = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.MambaForCausalLM(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--path", choices=["assoc", "loop"], default="assoc")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-dynamo", action="store_true", help="do not time dynamo alone")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.path == "assoc").to(args.device).eval()
    ids = torch.randint(0, 256, (1, args.length), device=args.device)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.device}, {args.layers} layers, L={args.length}, path={args.path}")

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        dynamo_s = float("nan")
        if not args.skip_dynamo:
            torch._dynamo.reset()
            start = time.perf_counter()
            torch.compile(model, backend=lambda gm, _: gm.forward)(ids)
            sync()
            dynamo_s = time.perf_counter() - start
            print(f"dynamo alone (capture + eager run): {dynamo_s:8.2f} s")

        torch._dynamo.reset()
        # the pipeline looks scan.run up at each call, so this times every scan pass run
        scan.run = _timed_scan_run(scan.run)
        fast = ioaware.compile(model)
        start = time.perf_counter()
        fast(ids)
        sync()
        first = time.perf_counter() - start
        start = time.perf_counter()
        fast(ids)
        sync()
        second = time.perf_counter() - start
    expl = ioaware.explain(model, ids) if args.length <= 64 else None
    print(f"ioaware first call:  {first:8.2f} s   second call: {second:8.2f} s   "
          f"compile ≈ {first - second:8.2f} s")
    print(f"scan pass:           {timings['passes']:8.2f} s"
          + (f"   ({100 * timings['passes'] / dynamo_s:.1f}% of dynamo alone)"
             if not math.isnan(dynamo_s) else ""))
    if expl is not None:
        print(expl)



if __name__ == "__main__":
    main()
