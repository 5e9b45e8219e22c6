"""Issue 14 on a CUDA GPU: the reproducers and generated programs with compiled kernels,
each compared with eager (outputs, gradients, NaN patterns), with the forward time of
ioaware beside eager's for the reproducers. Prints a table; under 4 minutes on an H100.

    python scripts/gpu_reliability.py [--cases 200] [--seed 142026]

The same checks as `pytest -q -m gpu tests/gpu/test_reliability_gpu.py`. The timings are
of tiny problems (launch-bound): they show the rewrite costs no more than eager's
launches, not kernel throughput (see docs/performance.md for that).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eager_compare import compare
from generated.test_generated import RUN_SEED, run_programs
from reproducers import CASES, params

import ioaware


def _ms(fn, args, reps: int = 20) -> float:
    with torch.no_grad():
        fn(*args)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn(*args)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="generated cases (default 200)")
    parser.add_argument("--seed", type=int, default=RUN_SEED, help="generator seed")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_reliability: needs a CUDA GPU", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    table = Table(title=f"issue 14 reproducers on {torch.cuda.get_device_name()}")
    for col in ("case", "dtype", "rewritten", "matches eager", "ioaware ms", "eager ms"):
        table.add_column(col)
    failed = 0
    for name, dtype in params():
        torch._dynamo.reset()
        fn, make, _ = CASES[name]
        inputs = make(dtype, "cuda")
        rewritten = bool(ioaware.explain(fn, *inputs).rewrites)
        torch._dynamo.reset()
        compiled = ioaware.compile(fn)
        problems = compare(fn, inputs, dtype, compiled)
        failed += bool(problems) or not rewritten
        plain = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs]
        table.add_row(name, str(dtype).removeprefix("torch."), str(rewritten),
                      "yes" if not problems else "; ".join(problems)[:60],
                      f"{_ms(compiled, plain):.3f}", f"{_ms(fn, plain):.3f}")
    Console().print(table)
    start = time.perf_counter()
    done, failures = run_programs(args.seed, args.cases, device="cuda")
    print(f"generated: seed {args.seed}, {done} cases, {len(failures)} differ from eager, "
          f"{time.perf_counter() - start:.0f} s")
    for report in failures[:3]:
        print(report)
    return 1 if failed or failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
