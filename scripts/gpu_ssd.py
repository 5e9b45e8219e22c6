"""Mamba-2's SSD on a CUDA GPU, in under 4 minutes:

1. checks: the chunked kernels against the recurrence (forward and every gradient, a few
   shapes) and the decode step kernel against the step (y and the state it updates);
2. prefill tables (forward and forward+backward, µs and % of the floor): ioaware's
   chunked kernels beside transformers' torch_forward eager, mamba_ssm where installed,
   torch.compile (first table only, capped) and the plain loop (first table only), at
   Mamba-2 sizes B=4, L=2048, H=48, P=64, N=128, bf16, ngroups 1 and 8 (with
   --issue-shape also at the acceptance shape H=64, L=4096, G=1); ioaware's backward
   with per-head dB/dC partials, with atomic adds (config.ssd_bc_atomic), and split
   parallel over chunks (config.ssd_backward = "chunked");
3. decode step tables (µs per token per layer, % of the floor = the state read and
   written once): the step kernel, ioaware.compile of transformers' step (rewritten in
   place), that step eager and under torch.compile, mamba_ssm where installed; B=4, H=48,
   P=64, N=128, bf16 x, fp32 state, ngroups 1 and 8;
4. a Mamba-2 model (4 layers of H=48, P=64, N=128, fp32) on the GPU: generate() under
   ioaware.compile gives eager's tokens with every decode step rewritten, and the time
   per generated token, eager vs ioaware.compile.

    python scripts/gpu_ssd.py [--compile-timeout 60] [--skip PART ...] [--issue-shape]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "interp"), str(TESTS)]  # the kernel tests import tests/sm90.py

PARTS = ("checks", "prefill", "step", "model")


def check_kernels() -> None:
    from test_ssd_kernel import CLAMP, check, make_inputs

    from ioaware.config import config

    saved = config.ssd_backward
    shapes = [  # L, heads, groups, head_dim, d_state, dtype, parts
        (1000, 4, 2, 64, 128, torch.bfloat16, {"D", "dt_bias", "softplus", "h0"}),
        (333, 2, 1, 48, 16, torch.float32, {"D", "dt_bias", "softplus", "h0", "clamp"}),
        (777, 3, 3, 32, 64, torch.float16, {"softplus", "h0"}),
    ]
    for length, heads, groups, p, n, dtype, parts in shapes:
        inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in
                       make_inputs(5, 2, length, heads, groups, p, n, dtype, parts))
        for split in ("sequential", "chunked"):
            start = time.perf_counter()
            config.ssd_backward = split
            try:
                check(inputs, 5, CLAMP if "clamp" in parts else None)
            finally:
                config.ssd_backward = saved
            print(f"check ok: L={length} H={heads} G={groups} P={p} N={n} {dtype} "
                  f"{sorted(parts)} {split} backward ({time.perf_counter() - start:.1f} s)",
                  flush=True)


def check_step() -> None:
    from test_ssd_step_kernel import CLAMP, eager_step, make_inputs, rel_err, tolerance

    from ioaware.codegen.ssd import step_op

    shapes = [  # batch, heads, groups, head_dim, d_state, dtype, state dtype, parts, layout
        (4, 48, 8, 64, 128, torch.bfloat16, torch.float32, {"D", "dt_bias", "softplus"},
         "contiguous"),
        (3, 6, 3, 20, 24, torch.float32, torch.float32, {"D", "softplus", "clamp"},
         "strided"),
        (2, 8, 1, 64, 256, torch.float16, torch.bfloat16, {"dt_bias", "softplus"},
         "contiguous"),
    ]
    for batch, heads, groups, p, n, dtype, sdtype, parts, layout in shapes:
        state, *rest = (t.cuda() if isinstance(t, torch.Tensor) else t for t in make_inputs(
            5, batch, heads, groups, p, n, dtype, sdtype, parts, layout))
        limit = CLAMP if "clamp" in parts else None
        y_ref, new_ref = eager_step(state.cpu(), *(t.cpu() if t is not None else None
                                                   for t in rest), "softplus" in parts, limit)
        y = step_op.ssd_step(state, *rest, dt_softplus="softplus" in parts,
                             **({"dt_limit": limit} if limit else {}))
        errors = rel_err(y.cpu(), y_ref), rel_err(state.cpu(), new_ref)
        ok = max(errors) <= tolerance(dtype, sdtype)
        print(f"step check {'ok' if ok else 'FAILED'}: B={batch} H={heads} G={groups} P={p} "
              f"N={n} {dtype} state {sdtype} {sorted(parts)} {layout}: y {errors[0]:.2g}, "
              f"state {errors[1]:.2g}", flush=True)
        if not ok:
            raise SystemExit(1)


def prefill_tables(compile_timeout: float, issue_shape: bool) -> bool:
    from ioaware.bench.ssd import bench_ssd, render_ssd_bench

    ok = True
    shapes = [  # B, H, G, L, torch.compile row, plain loop row
        (4, 48, 1, 2048, True, True), (4, 48, 8, 2048, False, False)]
    if issue_shape:
        shapes.append((4, 64, 1, 4096, False, False))
    for batch, heads, groups, length, compiled, loop in shapes:
        rows, info = bench_ssd(batch, heads, 64, 128, groups, length, "bf16",
                               compile_timeout_s=compile_timeout if compiled else 0,
                               skip_slow=not loop, progress=lambda m: print(m, flush=True))
        title = (f"SSD prefill on {torch.cuda.get_device_name()}: B={batch} H={heads} P=64 "
                 f"N=128 G={groups} L={length} bf16")
        print(render_ssd_bench(rows, info, title), end="")
        ours = rows[0]
        for r in rows[1:]:
            if r.fwd_bwd_ms and ours.fwd_bwd_ms:
                print(f"ioaware vs {r.variant}: fwd {r.fwd_ms / ours.fwd_ms:.1f}x, "
                      f"fwd+bwd {r.fwd_bwd_ms / ours.fwd_bwd_ms:.1f}x")
        ok &= all(r.ok for r in rows if r.ok is not None)
    return ok


def step_tables() -> bool:
    from ioaware.bench.scan import render_scan_bench
    from ioaware.bench.ssd_step import bench_ssd_step

    ok = True
    for groups in (1, 8):
        rows, info = bench_ssd_step(4, 48, 64, 128, groups, "bf16",
                                    progress=lambda m: print(m, flush=True))
        title = (f"SSD decode step on {torch.cuda.get_device_name()}: B=4 H=48 P=64 N=128 "
                 f"G={groups}, bf16 x, fp32 state (fwd = one step of one layer)")
        print(render_scan_bench(rows, title), end="")
        print(f"floor: {info['floor_us']:.1f} µs (state read and written once); "
              f"ioaware.compile rewrote {info['rewritten']} step(s)")
        eager = next(r for r in rows if r.variant == "transformers step eager")
        for r in rows:
            if r.fwd_ms and eager.fwd_ms and r is not eager:
                print(f"{r.variant}: {eager.fwd_ms / r.fwd_ms:.1f}x eager")
        ok &= all(r.ok for r in rows if r.ok is not None) and info["rewritten"] >= 1
    return ok


def model_decode() -> bool:
    """generate() of a 4-layer Mamba-2 on the GPU (fp32, TF32 off): eager's tokens, and
    the time per generated token, eager vs ioaware.compile."""
    import transformers

    import ioaware
    from ioaware import backend

    cfg = transformers.Mamba2Config(
        num_hidden_layers=4, hidden_size=1536, expand=2, num_heads=48, head_dim=64,
        state_size=128, n_groups=1, chunk_size=256, vocab_size=1024, use_cache=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Mamba2ForCausalLM(cfg).cuda().eval()
    ids = torch.randint(1, 1024, (4, 64), device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=8, do_sample=False)
        eager_forward = model.forward
        before = collections.Counter(backend.counters)
        model.forward = ioaware.compile(eager_forward)
        got = model.generate(ids, max_new_tokens=8, do_sample=False)
    counted = backend.counters - before
    same = got.tolist() == want.tolist()
    print(f"model generate (fp32, B=4, 64 + 8 tokens): tokens {'equal' if same else 'DIFFER'} "
          f"to eager; rewrites {dict(counted)}", flush=True)
    compiled_forward = model.forward
    times = {}
    for name, forward in (("eager", eager_forward), ("ioaware.compile", compiled_forward)):
        model.forward = forward
        with torch.no_grad():
            model.generate(ids, max_new_tokens=4, do_sample=False)  # warm up, compile
            for new in (4, 36):
                torch.cuda.synchronize()
                start = time.perf_counter()
                model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                torch.cuda.synchronize()
                times[name, new] = time.perf_counter() - start
    for name in ("eager", "ioaware.compile"):
        per_token = (times[name, 36] - times[name, 4]) / 32
        print(f"model decode (fp32, B=4, 4 layers): {name}: {per_token * 1e3:.2f} ms per "
              f"token (host and device, generate() overhead included)")
    return same and counted["ssd_decode"] >= 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-timeout", type=float, default=60,
                        help="seconds for torch.compile(torch_forward), in a child process")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS,
                        help="parts not to run")
    parser.add_argument("--issue-shape", action="store_true",
                        help="also the prefill table at H=64, L=4096 (the acceptance shape)")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    ok = True
    if "checks" not in options.skip:
        check_kernels()
        check_step()
    if "prefill" not in options.skip:
        ok &= prefill_tables(options.compile_timeout, options.issue_shape)
    if "step" not in options.skip:
        ok &= step_tables()
    if "model" not in options.skip:
        ok &= model_decode()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
