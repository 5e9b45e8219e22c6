"""Mamba-2's SSD on a CUDA GPU, in under 4 minutes: check the chunked kernels against the
recurrence (forward and every gradient, a few shapes), then time them beside transformers'
torch_forward (eager and torch.compile, the compile capped) and the plain loop at the
issue's shape: B=4, 64 heads, head_dim 64, d_state 128, L=4096, bf16, chunk from the
cost model. Prints the check lines and the table (µs and % of the floor).

    python scripts/gpu_ssd.py [--compile-timeout 100] [--skip-slow]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "interp"), str(TESTS)]  # test_ssd_kernel imports tests/sm90.py


def check_kernels() -> None:
    from test_ssd_kernel import CLAMP, check, make_inputs

    shapes = [  # L, heads, groups, head_dim, d_state, dtype, parts
        (1000, 4, 2, 64, 128, torch.bfloat16, {"D", "dt_bias", "softplus", "h0"}),
        (333, 2, 1, 48, 16, torch.float32, {"D", "dt_bias", "softplus", "h0", "clamp"}),
        (777, 3, 3, 32, 64, torch.float16, {"softplus", "h0"}),
    ]
    for length, heads, groups, p, n, dtype, parts in shapes:
        inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in
                       make_inputs(5, 2, length, heads, groups, p, n, dtype, parts))
        start = time.perf_counter()
        check(inputs, 5, CLAMP if "clamp" in parts else None)
        print(f"check ok: L={length} H={heads} G={groups} P={p} N={n} {dtype} "
              f"{sorted(parts)} ({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-timeout", type=float, default=100,
                        help="seconds for torch.compile(torch_forward), in a child process")
    parser.add_argument("--skip-slow", action="store_true", help="drop the plain loop")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    check_kernels()
    from ioaware.bench.ssd import bench_ssd, render_ssd_bench

    rows, info = bench_ssd(4, 64, 64, 128, 1, 4096, "bf16",
                           compile_timeout_s=options.compile_timeout,
                           skip_slow=options.skip_slow,
                           progress=lambda m: print(m, flush=True))
    title = (f"SSD (Mamba-2) on {torch.cuda.get_device_name()}: B=4 H=64 P=64 N=128 G=1 "
             f"L=4096 bf16")
    print(render_ssd_bench(rows, info, title), end="")
    ours = rows[0]
    for r in rows[1:]:
        if r.fwd_bwd_ms and ours.fwd_bwd_ms:
            print(f"ioaware vs {r.variant}: fwd {r.fwd_ms / ours.fwd_ms:.1f}x, "
                  f"fwd+bwd {r.fwd_bwd_ms / ours.fwd_bwd_ms:.1f}x")
    return 0 if all(r.ok for r in rows if r.ok is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
