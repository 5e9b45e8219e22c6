"""Issue 19 on one GPU: host time per op, no host syncs, CUDA graphs, the Llama-4L table.

    PYTHONUNBUFFERED=1 python scripts/gpu_whole_models.py [--calls 2000] [--skip-table]
        [--variants eager,sdpa,...] [--seq-len 2048 --batch 2 --layers 4 --hidden 2048]

1. Host µs per call at a tiny size (B=1, H=2, N=128, d=64 bf16; scan Bt=1, Dc=64, L=64,
   N=16), where the kernels take a few µs: `calls` calls back to back, wall time with one
   synchronize at the end (no CUDA events, no profiler), so the figure is the host's
   cost per call whenever it exceeds the kernels'. Rows: the op through the dispatcher
   (what Inductor's compiled code calls), the host function (codegen/host.py: what a
   graph run as fx calls), SDPA's own, and a whole compiled function: ioaware.compile of
   the eager spelling against torch.compile of SDPA. Forward, and forward+backward
   (torch.autograd.grad). Targets (issue 19): attention ≤ 15 µs forward, ≤ 40 µs
   forward+backward; the scan the same.
2. Every op forward+backward under torch.cuda.set_sync_debug_mode("error").
3. reduce-overhead: ioaware.compile(mode="reduce-overhead") of a GQA block, training
   steps, outputs and gradients against eager.
4. The training-step table of issue 19 (`ioaware bench model llama`): eager, SDPA,
   torch.compile of both spellings with and without reduce-overhead, ioaware with and
   without (median ms a step, first call, peak memory, regions, error vs eager).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))

import ioaware
from ioaware.codegen import load_families
from ioaware.codegen.attention import host as attention_host
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.scan import host as scan_host

load_families()
DTYPE = torch.bfloat16


def wall_us(fn, calls: int) -> float:
    """µs per call of `calls` back-to-back calls, one synchronize at the end."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def leaf(*shape, dtype=DTYPE, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device="cuda") * scale + shift).to(dtype).requires_grad_()


def fwd_bwd(fn, tensors, dout):
    def run():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, tensors, dout)
    return run


def host_rows(calls: int) -> list[tuple[str, float, float]]:
    q, k, v = leaf(1, 2, 128, 64), leaf(1, 2, 128, 64), leaf(1, 2, 128, 64)
    dout = torch.randn(1, 2, 128, 64, device="cuda", dtype=DTYPE)
    window = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                           scale=0.125, mask="q_idx - kv_idx < 64").to_json()
    cases = {
        "attention op (Inductor calls this)":
            lambda: torch.ops.ioaware.flash_attention(q, k, v, 0.125, True)[0],
        "attention host function (fx path)":
            lambda: attention_host.flash_attention_host(q, k, v, 0.125, True)[0],
        "attention window op (general Spec)":
            lambda: torch.ops.ioaware.attention(q, k, v, [], window)[0],
        "attention window host function":
            lambda: attention_host.attention_host(q, k, v, [], window)[0],
        "SDPA (is_causal)":
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }

    def eager_spelling(q, k, v):
        s = (q @ k.transpose(-2, -1)) * 0.125
        causal = torch.ones(128, 128, dtype=torch.bool, device=q.device).tril()
        return s.masked_fill(~causal, float("-inf")).softmax(-1) @ v

    torch._dynamo.reset()
    ours = ioaware.compile(eager_spelling)
    theirs = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                        is_causal=True))
    cases["ioaware.compile(eager spelling)"] = lambda: ours(q, k, v)
    cases["torch.compile(SDPA)"] = lambda: theirs(q, k, v)

    bt, dc, length, n = 1, 64, 64, 16
    u, delta, z = leaf(bt, dc, length), leaf(bt, dc, length, scale=0.1), leaf(bt, dc, length)
    A = leaf(dc, n, dtype=torch.float32, scale=0.1, shift=-1.0)
    B, C, D = leaf(bt, 1, length, n), leaf(bt, 1, length, n), leaf(dc, dtype=torch.float32)
    dy = torch.randn(bt, dc, length, device="cuda", dtype=DTYPE)
    scan_args = (u, delta, A, B, C, D, z, None, True, None)
    scans = {
        "selective scan op": lambda: torch.ops.ioaware.selective_scan(*scan_args)[0],
        "selective scan host function": lambda: scan_host.selective_scan_host(*scan_args)[0],
    }
    rows = []
    for name, fn in cases.items():
        rows.append((name, wall_us(fn, calls), wall_us(fwd_bwd(fn, (q, k, v), dout), calls)))
    for name, fn in scans.items():
        rows.append((name, wall_us(fn, calls),
                     wall_us(fwd_bwd(fn, (u, delta, A, B, C, D, z), dy), calls)))
    return rows


def sync_check() -> list[tuple[str, str]]:
    from test_cudagraphs_gpu import CALLS

    results = []
    for name in sorted(CALLS):
        make, step = CALLS[name]()
        inputs = make()
        step(*inputs)
        torch.cuda.synchronize()
        old = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(*inputs)
            results.append((name, "no host sync"))
        except RuntimeError as e:
            results.append((name, f"SYNCS: {str(e).splitlines()[0][:100]}"))
        finally:
            torch.cuda.set_sync_debug_mode(old)
        torch.cuda.synchronize()
    return results


def cudagraph_check() -> str:
    from test_cudagraphs_gpu import Block

    from ioaware.verify import TOLERANCE, relative_error

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Block().cuda().to(DTYPE)
    compiled = ioaware.compile(model, mode="reduce-overhead")
    worst = 0.0
    for _ in range(4):
        x = torch.randn(2, 128, 256, device="cuda", dtype=DTYPE)
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(x)
        out.float().square().mean().backward()
        got = [out.detach().clone()] + [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        ref = model(x)
        ref.float().square().mean().backward()
        want = [ref.detach()] + [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        worst = max(worst, *(relative_error(g, w, floor=0.1) for g, w in zip(got, want)))
    from torch._dynamo.utils import counters

    skips = counters["inductor"]["cudagraph_skips"]
    return (f"reduce-overhead training, 4 steps: worst relative error {worst:.2e} "
            f"(bf16 tolerance {TOLERANCE[DTYPE]}); cudagraph skips: {skips}; "
            f"regions rewritten: {ioaware.counters['attention']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--variants", default="eager,sdpa,compile,compile-ro,compile-sdpa,"
                        "compile-sdpa-ro,ioaware,ioaware-ro")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=180,
                        help="seconds a table variant may take, compile included")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"ioaware {ioaware.__version__}")
    started = time.perf_counter()

    def elapsed() -> str:
        return f"[{time.perf_counter() - started:.0f} s]"

    print("\n1. host µs per call (tiny sizes; wall time of back-to-back calls)")
    print(f"   {'call':40s} {'fwd µs':>9s} {'fwd+bwd µs':>11s}")
    for name, fwd, both in host_rows(args.calls):
        print(f"   {name:40s} {fwd:9.1f} {both:11.1f}")

    print(elapsed())
    print("\n2. launches under torch.cuda.set_sync_debug_mode('error')")
    for name, verdict in sync_check():
        print(f"   {name:20s} {verdict}")

    print(elapsed())
    print("\n3. CUDA graphs")
    print("   " + cudagraph_check())
    print(elapsed())

    if args.skip_table:
        return
    from ioaware.bench.model import Sizes, bench_model, render_model_bench

    print("\n4. Llama training step")
    sizes = Sizes(batch=args.batch, seq_len=args.seq_len, layers=args.layers,
                  hidden=args.hidden, heads=16, kv_heads=4)
    rows = bench_model("llama", sizes, args.variants.split(","), train=True, steps=10,
                       warmup=3, timeout=args.timeout, progress=lambda m: print(f"   [{time.strftime('%X')}] {m}",
                                                          flush=True))
    print(render_model_bench(rows, f"llama, {args.layers} layers, hidden {args.hidden}, "
                                   f"16 heads / 4 KV, B={args.batch}, S={args.seq_len}, bf16, "
                                   "training step"))
    print(elapsed())


if __name__ == "__main__":
    main()
