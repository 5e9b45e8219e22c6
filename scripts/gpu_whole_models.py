"""Issue 19 on one GPU: host time per op and the whole-model acceptance tables.

    PYTHONUNBUFFERED=1 python scripts/gpu_whole_models.py            (about 8 minutes)
        [--parts host,sync,graphs,llama,llama-infer,mistral,mamba] [--budget 420]
        [--variant-timeout 100] [--calls 1000] [--parts llama --variants eager,ioaware]

Parts (printed as they run, each line with the seconds since the start):
- host: host µs per call at a tiny size (B=1, H=2, N=128, d=64 bf16; scan Bt=1, Dc=64,
  L=64, N=16), where the kernels take a few µs: `calls` calls back to back, wall time
  with one synchronize at the end, so the figure is the host's cost per call whenever it
  exceeds the kernels'. Rows: the op through the dispatcher (what Inductor's compiled
  code calls), the host function (codegen/host.py: what a graph run as fx calls), SDPA's
  own, and a whole compiled function: ioaware.compile of the eager spelling against
  torch.compile of SDPA. Forward, and forward+backward (torch.autograd.grad), each with
  launch plans off and on (codegen/plan.py; off is the path before them); then, plans
  on, torch.profiler's CPU time per call of the call's own forward events (the op, the
  host function's autograd Function, SDPA's aten op) and of its backward nodes (the
  autograd engine's evaluate_function events), so ours and SDPA's read alike. Targets
  (issue 19): ≤ 15 µs forward, ≤ 40 µs forward+backward; the scan the same.
  Then what Inductor's compiled code calls per region, grad off (the kernel ops of
  codegen/library.py: attention, window and scan, forward and backward; the SSD decode
  step), wall µs plans
  off / on and profiler CPU µs; then the same rows in a subprocess with the ops
  registered as custom ops (IOAWARE_OP_ROUTE=custom_op: the route before issue 19's
  fifth session), so the two routes read side by side (part `inductor-calls` alone).
- sync: every op forward+backward under torch.cuda.set_sync_debug_mode("error").
- graphs: ioaware.compile(mode="reduce-overhead") of a GQA block, training steps,
  outputs and gradients against eager.
- llama: the training step of issue 19 (hidden 2048, 16 heads, 4 KV heads, B=2, S=2048,
  bf16, the eager attention spelling unless the variant says sdpa): eager, SDPA,
  ioaware, torch.compile of both spellings, ioaware reduce-overhead, then torch.compile
  reduce-overhead of both spellings while time is left (`ioaware bench model llama`'s
  columns: median ms, against the best torch.compile row, first call, peak memory,
  regions, error against eager).
- llama-infer: the issue's inference forward, the same model at B=1, S=8192, the same
  variants (grad off).
- mistral: the same sizes, sliding window 1024, S=4096: eager, ioaware, torch.compile
  of both spellings.
- mamba: 4 layers, hidden 768, L=2048: eager and ioaware only (eager steps take
  seconds: 2 timed steps).

A variant may take `--variant-timeout` seconds, compile included, and each table ends by
its share of `--budget` (llama 150 s, llama-infer 90 s, mistral 70 s, mamba 70 s, plus
what earlier parts left): a variant past either is a row saying so, and the run goes on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))

import ioaware
from ioaware.bench.model import Sizes, bench_model, render_model_bench
from ioaware.codegen import library, plan
from ioaware.codegen.attention import host as attention_host
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.scan import host as scan_host

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
        "attention op (grad on: eager)":
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
    for group, inputs, grad in ((cases, (q, k, v), dout),
                                (scans, (u, delta, A, B, C, D, z), dy)):
        for name, fn in group.items():
            both = fwd_bwd(fn, inputs, grad)
            plan.enabled = False  # the "before": every op body runs as written
            before = wall_us(fn, calls), wall_us(both, calls)
            plan.enabled = True
            rows.append((name, *before, wall_us(fn, calls), wall_us(both, calls),
                         *profiled_us(both, max(calls // 5, 50))))
    return rows


def inductor_call_rows(calls: int) -> list[tuple[str, float, float, float]]:
    """What Inductor's compiled forward and backward call per region, grad off: the
    kernel ops (codegen/library.py; on the custom_op route, the custom ops). Rows: (name,
    wall µs plans off, on, profiler CPU µs plans on)."""
    ops = torch.ops.ioaware
    q, k, v = leaf(1, 2, 128, 64), leaf(1, 2, 128, 64), leaf(1, 2, 128, 64)
    dout = torch.randn(1, 2, 128, 64, device="cuda", dtype=DTYPE)
    window = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                           scale=0.125, mask="q_idx - kv_idx < 64").to_json()
    bt, dc, length, n = 1, 64, 64, 16
    u, delta, z = leaf(bt, dc, length), leaf(bt, dc, length, scale=0.1), leaf(bt, dc, length)
    A = leaf(dc, n, dtype=torch.float32, scale=0.1, shift=-1.0)
    B, C, D = leaf(bt, 1, length, n), leaf(bt, 1, length, n), leaf(dc, dtype=torch.float32)
    dy = torch.randn(bt, dc, length, device="cuda", dtype=DTYPE)
    # the SSD decode step (gpu_ssd.py's step table: B 4, H 48, P 64, N 128, G 8)
    state = torch.randn(4, 48, 64, 128, device="cuda").to(DTYPE)
    step_args = (state, torch.randn(4, 48, 64, device="cuda").to(DTYPE),
                 torch.rand(4, 48, device="cuda").to(DTYPE), -torch.rand(48, device="cuda"),
                 torch.randn(4, 8, 128, device="cuda").to(DTYPE),
                 torch.randn(4, 8, 128, device="cuda").to(DTYPE),
                 torch.randn(48, device="cuda"), torch.randn(48, device="cuda"), True, 0.0,
                 float("inf"))
    with torch.no_grad():
        out, lse = ops.flash_attention_forward.default(q, k, v, 0.125, True)
        w_out, w_lse = ops.attention_forward.default(q, k, v, [], window)
    cases = {
        "attention forward op": lambda: ops.flash_attention_forward.default(
            q, k, v, 0.125, True),
        "attention backward op": lambda: ops.flash_attention_backward.default(
            dout, q, k, v, out, lse, 0.125, True, None),
        "window forward op": lambda: ops.attention_forward.default(q, k, v, [], window),
        "window backward op": lambda: ops.attention_backward.default(
            dout, q, k, v, w_out, w_lse, [], window, None, None),
        "selective scan forward op": lambda: ops.selective_scan_forward.default(
            u, delta, A, B, C, D, z, None, True, None),
        "selective scan backward op": lambda: ops.selective_scan_backward.default(
            dy, None, u, delta, A, B, C, D, z, None, True, None),
        "SSD decode step op (state in place)": lambda: ops.ssd_step.default(*step_args),
    }
    rows = []
    with torch.no_grad():
        for name, fn in cases.items():
            plan.enabled = False
            before = wall_us(fn, calls)
            plan.enabled = True
            rows.append((name, before, wall_us(fn, calls),
                         profiled_us(fn, max(calls // 5, 50))[0]))
    return rows


def print_inductor_calls(calls: int) -> None:
    print(f"\nInductor's calls, grad off, ops registered by the {library.ROUTE} route: "
          "wall µs plans off / on, profiler CPU µs plans on")
    for name, before, after, prof in inductor_call_rows(calls):
        print(f"   {name:36s} {before:6.1f} / {after:6.1f} {prof:9.1f}", flush=True)


def profiled_us(fn, calls: int) -> tuple[float, float]:
    """(forward, backward) µs per call of CPU time, as torch.profiler reports it: the
    forward is the call's top-level events on the calling thread (the op, or SDPA's
    aten op, or a host function's autograd Function), the backward the autograd
    engine's `evaluate_function` events (each node's own work, on the device thread)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    forward = backward = 0.0
    for event in prof.events():
        if event.cpu_parent is not None:
            continue
        if event.name.startswith("autograd::engine::evaluate_function"):
            backward += event.cpu_time_total
        elif not event.name.startswith(("autograd::", "cudaDeviceSynchronize",
                                        "ProfilerStep")):
            forward += event.cpu_time_total
    return forward / calls, backward / calls


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


class Table(NamedTuple):
    """One of the issue's acceptance tables."""

    model: str
    variants: str  # in the order they run; the first is the error's reference
    sizes: Sizes
    steps: int  # timed
    warmup: int
    share_s: float  # of the run's --budget (what a part leaves unused goes to the next)
    train: bool = True  # a training step; False: an inference forward


TABLES = {
    # ioaware right after the uncompiled rows (eager is the error's reference), then
    # torch.compile from the faster spelling: the comparison the issue asks for
    # comes first when the budget runs short
    "llama": Table("llama", "eager,sdpa,ioaware,compile-sdpa,compile,ioaware-ro,"
                            "compile-sdpa-ro,compile-ro",
                   Sizes(batch=2, seq_len=2048, layers=4, hidden=2048, heads=16, kv_heads=4),
                   10, 3, 150),
    # the inference row: a forward at S = 8192, B = 1 (eager attention holds
    # 16 × 8192² bf16 scores per layer: 2 GB)
    "llama-infer": Table("llama", "eager,sdpa,ioaware,compile-sdpa,compile,ioaware-ro,"
                                  "compile-sdpa-ro,compile-ro",
                         Sizes(batch=1, seq_len=8192, layers=4, hidden=2048, heads=16,
                               kv_heads=4), 10, 3, 90, train=False),
    "mistral": Table("mistral", "eager,ioaware,compile-sdpa,compile",
                     Sizes(batch=2, seq_len=4096, layers=4, hidden=2048, heads=16, kv_heads=4,
                           window=1024), 5, 2, 70),
    # eager Mamba walks L step by step in Python (about 1 s a step at L = 512): few steps
    "mamba": Table("mamba", "eager,ioaware", Sizes(batch=2, seq_len=2048, layers=4, hidden=768),
                   2, 0, 70),
}
PARTS = ("host", "inductor-calls", "sync", "graphs", *TABLES)
DEFAULT_PARTS = ("host", *TABLES)  # sync and graphs: tests/gpu/test_cudagraphs_gpu.py too


def run_table(part: str, variants: str | None, deadline: float, variant_timeout: float,
              log) -> None:
    name, default_variants, sizes, steps, warmup, _, train = TABLES[part]
    rows = bench_model(name, sizes, (variants or default_variants).split(","), train=train,
                       steps=steps, warmup=warmup, timeout=variant_timeout,
                       deadline=deadline, progress=log)
    window = f", window {sizes.window}" if name == "mistral" else ""
    heads = f", {sizes.heads} heads / {sizes.kv_heads} KV" if sizes.heads else ""
    print(render_model_bench(rows, f"{name}, {sizes.layers} layers, hidden {sizes.hidden}"
                                   f"{heads}{window}, B={sizes.batch}, S={sizes.seq_len}, "
                                   f"bf16, {'training step' if train else 'inference forward'} "
                                   f"(median of {steps})"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} "
                             f"(default: {','.join(DEFAULT_PARTS)})")
    parser.add_argument("--calls", type=int, default=1000,
                        help="calls per host-time row")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds for the whole run: each table gets its share "
                             "(llama 150, llama-infer 90, mistral 70, mamba 70) plus "
                             "what earlier parts "
                             "left; variants past it are rows saying they did not run")
    parser.add_argument("--variant-timeout", type=float, default=100,
                        help="seconds one table variant may take, compile included")
    parser.add_argument("--variants", default=None,
                        help="with a single table in --parts: its variants, comma-separated")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: {', '.join(unknown)} not understood; expected a "
                     f"comma-separated subset of {','.join(PARTS)}")
    tables = [p for p in parts if p in TABLES]
    if args.variants and len(tables) != 1:
        parser.error("--variants: give exactly one table in --parts")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"ioaware {ioaware.__version__}, ops by the {library.ROUTE} route", flush=True)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"   [{time.monotonic() - started:5.0f} s] {message}", flush=True)

    if "host" in parts:
        print(f"\nhost µs per call (tiny sizes; wall: {args.calls} back-to-back calls, "
              "launch plans off / on; profiler: CPU time of the call's own forward "
              "events and its backward nodes, plans on)")
        print(f"   {'call':36s} {'wall fwd':>15s} {'wall fwd+bwd':>15s} "
              f"{'prof fwd':>9s} {'prof bwd':>9s}", flush=True)
        for name, fwd0, both0, fwd, both, pf, pb in host_rows(args.calls):
            print(f"   {name:36s} {fwd0:6.1f} / {fwd:6.1f} {both0:6.1f} / {both:6.1f} "
                  f"{pf:9.1f} {pb:9.1f}", flush=True)
        print_inductor_calls(args.calls)
        if library.ROUTE != "custom_op":  # the same rows with the ops as custom_op made them
            subprocess.run([sys.executable, __file__, "--parts", "inductor-calls",
                            "--calls", str(args.calls)], check=False,
                           env={**os.environ, "IOAWARE_OP_ROUTE": "custom_op"})
        log("host rows done")
    if "inductor-calls" in parts and "host" not in parts:
        print_inductor_calls(args.calls)
    if "sync" in parts:
        print("\nlaunches under torch.cuda.set_sync_debug_mode('error')")
        for name, verdict in sync_check():
            print(f"   {name:20s} {verdict}", flush=True)
        log("sync check done")
    if "graphs" in parts:
        print("\nCUDA graphs\n   " + cudagraph_check(), flush=True)
        log("CUDA-graph check done")
    # Each table ends by its own deadline: its share after what ran before, and what
    # the parts before it left unused of theirs. The shares are scaled to the budget
    # left, up as well as down (capped at 1, a run of one table with --budget 140 gave
    # that table only its 70 s share: Mistral's compile rows ran out of time so).
    shares = {p: TABLES[p].share_s for p in tables}
    scale = (max(0.0, args.budget - (time.monotonic() - started))
             / max(sum(shares.values()), 1))
    deadline = time.monotonic()
    for part in tables:
        deadline = max(deadline, time.monotonic()) + shares[part] * scale
        print(f"\n{part} (until {deadline - started:.0f} s into the run)", flush=True)
        run_table(part, args.variants, deadline, args.variant_timeout, log)
    log("done")


if __name__ == "__main__":
    main()
