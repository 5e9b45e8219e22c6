"""Where a forward+backward step of the attention kernels spends its GPU time.

    python scripts/profile_attention_step.py [--batch 4 --heads 16 --seqlen 4096 --head-dim 128]

Runs `flash_attention(q, k, v).backward(dout)` (the bench's "ioaware kernel" row, tuned
first) under `torch.profiler` for a few steps, beside cuDNN's SDPA, and prints per step:
each CUDA kernel's time and launch count, the kernels' sum, and the wall time of the step
measured with events. A step whose wall time exceeds its kernels' sum is waiting on
something else (host work the GPU cannot run ahead of, a sync, an allocation).

    python scripts/profile_attention_step.py --window [--batch 2 --seqlen 8192]

profiles instead the sliding window (512) as the bench runs it: the kernel called with
the bench's Spec, and ioaware.compile of the plain masked_fill spelling (the compiled
forward+backward measured 1.37x the kernel's on 2026-12-07; this shows which kernels
differ).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def step_table(name: str, step, steps: int) -> None:
    for _ in range(3):  # warm: compiles and tunes outside the profile
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / steps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows) / steps / 1e3
    print(f"\n{name}: wall {wall_ms:.3f} ms/step, kernels {total:.3f} ms/step")
    for e in rows[:12]:
        print(f"  {e.device_time_total / steps / 1e3:8.3f} ms  x{e.count // steps:<3} "
              f"{e.key[:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--window", action="store_true",
                        help="the sliding window: the kernel vs ioaware.compile")
    args = parser.parse_args()
    if args.window:
        return window(args)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ioaware.codegen.attention.op import flash_attention

    shape = (args.batch, args.heads, args.seqlen, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}  B,H,N,d={shape}  bf16")
    for causal in (False, True):
        def ours(causal=causal):
            flash_attention(q, k, v, causal=causal).backward(dout)
            q.grad = k.grad = v.grad = None

        def cudnn(causal=causal):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(dout)
            q.grad = k.grad = v.grad = None

        def ours_forward(causal=causal):
            with torch.no_grad():
                flash_attention(q, k, v, causal=causal)

        step_table(f"ioaware forward, causal={causal}", ours_forward, args.steps)
        step_table(f"ioaware forward+backward, causal={causal}", ours, args.steps)
        step_table(f"cuDNN forward+backward, causal={causal}", cudnn, args.steps)


def window(args: argparse.Namespace) -> None:
    import ioaware
    from ioaware.bench.attention import AttentionProblem
    from ioaware.bench.masks import _spec, sliding_window_attention
    from ioaware.codegen.attention import op as ops

    shape = (args.batch, args.heads, args.seqlen, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    problem = AttentionProblem(*shape, torch.bfloat16, True)
    spec = _spec("sliding_window", problem)
    compiled = ioaware.compile(sliding_window_attention)
    print(f"{torch.cuda.get_device_name()}  B,H,N,d={shape}  bf16, sliding window")

    def kernel():
        ops.attention(q, k, v, spec, []).backward(dout)
        q.grad = k.grad = v.grad = None

    def through_compile():
        compiled(q, k, v).backward(dout)
        q.grad = k.grad = v.grad = None

    step_table("kernel forward+backward", kernel, args.steps)
    step_table("ioaware.compile forward+backward", through_compile, args.steps)
    print(compiled._ioaware_backend.explanation)


if __name__ == "__main__":
    main()
