"""The measured choice of attention implementation on a GPU (issue 15), checked and timed.

    python scripts/gpu_attention_choice.py [--quick]

For B=4 H=16 N=4096 d=128 bf16, non-causal and causal, every row is first checked against
SDPA's math backend in fp32 (output and the three gradients), then timed (median):
    ioaware kernel                  the generated kernel called directly
    ioaware.compile(eager)          the plain masked_fill spelling, generated kernels only
    ioaware.compile(eager) choice   the same, the compiler choosing by measurement
    sdpa[CUDNN / FLASH / EFFICIENT] SDPA's backends, each pinned
then the choice's candidates with their measured times and the one chosen (what
`explain` shows), and compile(generated) / kernel, the issue's "within 3%" row. Then
B=2 H=16 N=8192 d=128 with a sliding window of 512: the kernel and ioaware.compile of
the plain spelling (SDPA is not exact for a window mask: the generated kernel runs, and
explain says so). Exits 1 when a row fails its check. Under 3 minutes on an H100
(--quick: shorter timing).
"""

from __future__ import annotations

import sys

import torch

import ioaware
from ioaware.bench.attention import AttentionProblem, BenchRow, bench_problem, eager_attention
from ioaware.bench.masks import bench_masked, sliding_window_attention


def show(title: str, rows: list[BenchRow]) -> bool:
    print(f"\n{title}")
    print(f"  {'variant':34} {'ok':>3} {'rel err':>8} {'fwd ms':>8} {'TFLOP/s':>8} "
          f"{'f+b ms':>8} {'TFLOP/s':>8}  note")
    ok = True
    for r in rows:
        def num(x, fmt):
            return format(x, fmt) if x is not None else "-"
        print(f"  {r.variant:34} {'yes' if r.ok else 'NO':>3} {num(r.rel_err, '.1e'):>8} "
              f"{num(r.fwd_ms, '.3f'):>8} {num(r.fwd_tflops, '.0f'):>8} "
              f"{num(r.fwd_bwd_ms, '.3f'):>8} {num(r.fwd_bwd_tflops, '.0f'):>8}  {r.note}")
        ok &= bool(r.ok) or r.note.startswith("skipped")
    by_name = {r.variant: r for r in rows}
    kernel, compiled = by_name.get("ioaware kernel"), by_name.get("ioaware.compile(eager)")
    if kernel and compiled:
        for what in ("fwd_ms", "fwd_bwd_ms"):
            a, b = getattr(compiled, what), getattr(kernel, what)
            if a and b:
                ratio = a / b
                print(f"  compile(generated) / kernel, {what[:-3]}: {ratio:.3f} "
                      f"({'within' if ratio <= 1.03 else 'NOT within'} 3%)")
    return ok


def choice_line(problem: AttentionProblem, spelling) -> str:
    """What explain says the compiler chose for `spelling` at `problem`'s sizes (the
    measurement the bench's choice row made is on disk, so this reads it)."""
    torch._dynamo.reset()
    shape = (problem.batch, problem.heads, problem.seqlen, problem.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=problem.dtype, requires_grad=True)
               for _ in range(3))
    expl = ioaware.explain(spelling, q, k, v)
    if not expl.rewrites:
        return "no rewrite: " + "; ".join(f.reason for f in expl.fallbacks)
    return expl.rewrites[0].detail.get("implementation", "-")


def main() -> int:
    if {"-h", "--help"} & set(sys.argv):
        print(__doc__)
        return 0
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (it times SDPA's CUDA backends)", file=sys.stderr)
        return 2
    quick = "--quick" in sys.argv
    timing = {"warmup_ms": 10, "rep_ms": 30} if quick else {"warmup_ms": 25, "rep_ms": 100}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    ok = True
    for causal in (False, True):
        problem = AttentionProblem(4, 16, 4096, 128, torch.bfloat16, causal=causal)
        rows = bench_problem(problem, ("sdpa",), skip_slow=True, **timing,
                             progress=lambda m: print("  ..", m, flush=True))
        ok &= show(f"B=4 H=16 N=4096 d=128 bf16 causal={causal}", rows)
        line = choice_line(problem, lambda q, k, v, c=causal: eager_attention(q, k, v, c))
        print(f"  choice (explain): attention: {line}")
    rows = bench_masked("sliding_window", 2, 16, 8192, 128, "bf16", (), **timing,
                        progress=lambda m: print("  ..", m, flush=True))
    ok &= show("B=2 H=16 N=8192 d=128 bf16 sliding window 512", rows)
    window = AttentionProblem(2, 16, 8192, 128, torch.bfloat16, causal=True)
    print(f"  choice (explain): attention: {choice_line(window, sliding_window_attention)}")
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
