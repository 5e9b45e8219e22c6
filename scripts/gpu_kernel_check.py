"""One GPU session for the attention kernels: versions, correctness, speed vs SDPA-flash.

    python3 scripts/gpu_kernel_check.py [--skip-check] [--skip-bench]

Correctness: out, lse, dq, dk, dv of `ioaware::flash_attention` against eager math in
fp32 on the GPU (relative error ‖a − b‖ / ‖b‖). Speed: median of triton.testing.do_bench
at bf16, B=4, H=16, N=4096, d=128, in TFLOP/s with FLOPs = 4·B·H·N²·d forward (halved
when causal) and 3.5× that for forward + backward, against
`scaled_dot_product_attention` restricted to SDPBackend.FLASH_ATTENTION.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from ioaware.codegen import cache
from ioaware.codegen.attention import op as ops

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def eager_fp32(q, k, v, scale, causal):
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1)
    v = v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        visible = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(b, h_q, h_kv, n_q, n_k, d, d_v, dtype, causal, layout="contiguous") -> bool:
    gen = torch.Generator(device="cuda").manual_seed(n_q * 7 + n_k)

    def make(h, n, dd):
        if layout == "bnhd":
            t = torch.randn(b, n, h, dd, device="cuda", generator=gen, dtype=dtype).transpose(1, 2)
        else:
            t = torch.randn(b, h, n, dd, device="cuda", generator=gen, dtype=dtype)
        return t.requires_grad_()

    q, k, v = make(h_q, n_q, d), make(h_kv, n_k, d), make(h_kv, n_k, d_v)
    scale = 1.0 / math.sqrt(d)
    t0 = time.perf_counter()
    out, lse = torch.ops.ioaware.flash_attention(q, k, v, scale, causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out32, lse32 = eager_fp32(q32, k32, v32, scale, causal)
    grads32 = torch.autograd.grad(out32, (q32, k32, v32), dout.float())
    errs = [rel(out, out32), rel(lse, lse32)] + [rel(g, g32) for g, g32 in zip(grads, grads32)]
    nan = any(torch.isnan(t).any().item() for t in (out, lse, *grads))
    # fp32 runs are held to 1e-4 against fp32 eager; eager fp32 itself differs from
    # exact math by ~1e-6, far below it.
    ok = not nan and max(errs) < TOLERANCE[dtype]
    print(f"  {'ok ' if ok else 'BAD'} B={b} Hq={h_q} Hkv={h_kv} Nq={n_q} Nk={n_k} d={d} dv={d_v}"
          f" {str(dtype)[6:]:8s} causal={causal!s:5s} {layout:10s} rel err out/lse/dq/dk/dv = "
          + " ".join(f"{e:.1e}" for e in errs) + f"  (first call {first_call_s:.1f}s)",
          flush=True)
    return ok


def bench(causal: bool) -> dict[str, float]:
    b, h, n, d = 4, 16, 4096, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
    scale = 1.0 / math.sqrt(d)
    flops_fwd = 4 * b * h * n * n * d / (2 if causal else 1)

    def ours():
        return ops.flash_attention(q, k, v, scale=scale, causal=causal)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    results = {}
    for name, fn in (("ioaware", ours), ("sdpa-flash", sdpa)):
        t0 = time.perf_counter()
        out = fn()  # autotunes the forward on first call
        torch.autograd.grad(out, (q, k, v), dout)  # ... and the backward
        torch.cuda.synchronize()
        warm_s = time.perf_counter() - t0
        with torch.no_grad():
            ms_fwd = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
        ms_all = triton.testing.do_bench(
            lambda fn=fn: torch.autograd.grad(fn(), (q, k, v), dout),
            warmup=50, rep=300, return_mode="median")
        results[f"{name} fwd"] = flops_fwd / ms_fwd * 1e-9
        results[f"{name} fwd+bwd"] = 3.5 * flops_fwd / ms_all * 1e-9
        results[f"{name} ms"] = (ms_fwd, ms_all)
        print(f"  {name:10s} causal={causal!s:5s} fwd {ms_fwd:7.3f} ms"
              f" {results[f'{name} fwd']:6.1f} TFLOP/s | fwd+bwd {ms_all:7.3f} ms"
              f" {results[f'{name} fwd+bwd']:6.1f} TFLOP/s (warm-up incl. tuning {warm_s:.0f}s)",
              flush=True)
    spec = ops._spec(q, v, scale, causal)
    fwd = cache.load_kernel_module("attention_fwd", spec, cache.device_tag(q.device))
    bwd = cache.load_kernel_module("attention_bwd", spec, cache.device_tag(q.device))
    for label, tuner in (("fwd", fwd._attn_fwd_tuned), ("dkdv", bwd._bwd_dkdv_tuned),
                         ("dq", bwd._bwd_dq_tuned)):
        best = getattr(tuner, "best_config", None)
        print(f"    tuned {label}: {best}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    print(f"python {platform.python_version()} torch {torch.__version__} triton "
          f"{triton.__version__} cuda {torch.version.cuda}")
    print(f"device {torch.cuda.get_device_name()} cap {torch.cuda.get_device_capability()}"
          f" backend {ops.backend_name('cuda')}", flush=True)
    all_ok = True
    if not args.skip_check:
        print("correctness vs eager fp32 on the GPU:")
        for case in [
            (2, 4, 2, 300, 517, 64, 64, torch.bfloat16, False),
            (2, 4, 2, 300, 517, 64, 64, torch.bfloat16, True),
            (1, 2, 2, 1024, 1024, 128, 128, torch.float16, True, "bnhd"),
            (1, 3, 1, 257, 129, 80, 40, torch.bfloat16, True),
            (1, 2, 2, 200, 333, 256, 256, torch.bfloat16, False),
            (1, 2, 2, 130, 70, 64, 64, torch.float32, True),
            (1, 4, 4, 2048, 2048, 128, 128, torch.bfloat16, True),
        ]:
            all_ok &= check(*case)
    table = {}
    if not args.skip_bench:
        print("speed, bf16 B=4 H=16 N=4096 d=128 (median of do_bench):", flush=True)
        for causal in (False, True):
            table[causal] = bench(causal)
        targets = {(False, "fwd"): 344, (True, "fwd"): 304,
                   (False, "fwd+bwd"): 296, (True, "fwd+bwd"): 249}
        print("\n| causal | pass    | ioaware TFLOP/s | SDPA-flash TFLOP/s | target |")
        print("|--------|---------|-----------------|--------------------|--------|")
        for (causal, kind), target in targets.items():
            r = table[causal]
            print(f"| {causal!s:6s} | {kind:7s} | {r[f'ioaware {kind}']:15.1f} |"
                  f" {r[f'sdpa-flash {kind}']:18.1f} | {target:6d} |")
    print("correctness:", "all ok" if all_ok else "FAILURES")


if __name__ == "__main__":
    main()
