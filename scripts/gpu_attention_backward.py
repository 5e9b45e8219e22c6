"""Attention backward at the Hopper frontier (issue 15, phase 2), as a user gets it.

For each acceptance case (bf16; B, H, N, d; causal or not) on one GPU:
  1. ioaware tuned as in a real call (the first call's wall time, compiles and tuning
     included, is printed), cuDNN and SDPA's FLASH backend (FA2): out, dq, dk, dv checked
     against SDPA's fp32 math backend on a slice (batch 0, heads 0-1), forward and
     forward+backward timed (do_bench median), TFLOP/s and the ratio to cuDNN;
  2. the configs the tuner chose, forward, dK/dV (an "atomic" one is the one-kernel
     backward: dQ by atomics, no dQ pass) and dQ;
  3. every dK/dV config of the tuning space pinned, the backward alone (preprocess,
     dK/dV, then the dQ pass or the dQ conversion), checked on the slice and timed: the
     one-kernel against the two-kernel backward;
  4. the GPU kernels of one forward+backward step, ours beside cuDNN (torch.profiler).

    python scripts/gpu_attention_backward.py            # 5 cases, ~3 min on an H100
    python scripts/gpu_attention_backward.py --cases 0  # B=4 H=16 N=4096 d=128 full
    python scripts/gpu_attention_backward.py --candidates  # the study candidates, ~3 min
    python scripts/gpu_attention_backward.py --candidates --cases 2 4  # d=128, d=256 only

--candidates: at d = 64, 128, 256, causal and not, the backward alone (preprocess, dK/dV,
dQ) with the configs the tuner chose, then each study candidate pinned in its kernel's
place (`backward.candidate_configs`: dK/dV "dpfirst", dQ "tma", d = 256 tiles), the other
kernel kept at its tuned config, then the fastest of each together; every row checked
against SDPA's fp32 math on a slice before it is timed.

Floors (H100 SXM, bf16 dense 989 TFLOP/s peak): the backward is 5 matmuls of 2·N²·d per
(batch, head) (S, dP, dV, dK, dQ; the two-kernel backward recomputes S and dP: 7), at
d=128, B=4, H=16, N=4096 1.37 TFLOP = 1.39 ms at peak; its exp2 (one per score, two with
the two kernels) 1.07 G at 3.7e12/s = 0.29 ms. The atomic dQ adds N/BLOCK_N fp32 adds
per dQ element: 4.3 GB of L2 reductions at BLOCK_N = 128 (8.6 at 64).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_attention_frontier as frontier
from profile_attention_step import step_table

CASES = [  # (batch, heads, seqlen, head_dim, causal)
    (4, 16, 4096, 128, False), (4, 16, 4096, 128, True),
    (4, 16, 4096, 256, False), (4, 16, 4096, 256, True),
    (4, 32, 4096, 64, False),
]


def _slice_error(got, want) -> float:
    return max(((g.float() - w).norm() / w.norm()).item() for g, w in zip(got, want))


def _chosen(module, kernel: str):
    return [c for key, c in module._CHOSEN.items() if key[0] == kernel]


def dkdv_space(spec, tensors, want, device) -> None:
    """Each dK/dV config of the tuning space pinned: the backward alone, checked, timed."""
    from triton.testing import do_bench

    from ioaware.codegen.runtime import kernel_module

    q, k, v, dout, sl = (t.detach() if isinstance(t, torch.Tensor) else t for t in tensors)
    fwd = kernel_module("attention_fwd", spec, torch.device(device))
    bwd = kernel_module("attention_bwd", spec, torch.device(device))
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    fwd.forward(q, k, v, out, lse)
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    dq_config = (_chosen(bwd, "dq") or [bwd.DEFAULT_DQ])[0]
    batch, heads, n, d = q.shape
    bwd_flops = 2.5 * frontier.flops(batch, heads, n, d, spec.causal)
    print(f"  dK/dV space (dQ pass {dq_config} where not atomic); backward alone:")
    from ioaware.codegen.attention.backward import atomic_dkdv_configs

    # the space, then the one-kernel backward's atomic configs (out of the space, measured)
    for config in (bwd.TUNE_DKDV or [bwd.DEFAULT_DKDV]) + atomic_dkdv_configs(spec):
        try:
            bwd.backward(dout, q, k, v, out, lse, None, dq, dk, dv, dkdv_config=config,
                         dq_config=dq_config)
            err = _slice_error((dq[sl], dk[sl], dv[sl]), want[1:])
            ms = do_bench(lambda c=config: bwd.backward(
                dout, q, k, v, out, lse, None, dq, dk, dv, dkdv_config=c, dq_config=dq_config),
                warmup=10, rep=40, return_mode="median")
        except Exception as error:  # noqa: BLE001 - a config that cannot run says why
            print(f"    {config!s:32s} failed: {str(error).strip()[:100]}", flush=True)
            continue
        verdict = "ok" if err <= frontier.TOLERANCE else "FAIL"
        print(f"    {config!s:32s} err {err:.1e} {verdict:4s} {ms:7.3f} ms "
              f"{bwd_flops / ms / 1e9:5.0f} TF/s", flush=True)


CANDIDATE_CASES = [  # (batch, heads, seqlen, head_dim, causal)
    (4, 32, 4096, 64, False), (4, 32, 4096, 64, True),
    (4, 16, 4096, 128, False), (4, 16, 4096, 128, True),
    (4, 16, 4096, 256, False), (4, 16, 4096, 256, True),
]


def candidates_case(case, device) -> bool:
    """The tuned backward against each study candidate pinned (see the docstring)."""
    from triton.testing import do_bench

    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.attention.backward import candidate_configs
    from ioaware.codegen.runtime import kernel_module

    batch, heads, n, d, causal = case
    print(f"\n== B={batch} H={heads} N={n} d={d} {'causal' if causal else 'full'}",
          flush=True)
    q, k, v, dout, sl, want = frontier.case_inputs(case, device)
    q, k, v = (t.detach() for t in (q, k, v))
    spec = ops._plain_spec(d, d, torch.bfloat16, causal, 1.0 / math.sqrt(d))
    fwd = kernel_module("attention_fwd", spec, torch.device(device))
    bwd = kernel_module("attention_bwd", spec, torch.device(device))
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    fwd.forward(q, k, v, out, lse, config=fwd.DEFAULT_CONFIG)  # the forward is not studied
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    start = time.perf_counter()
    bwd.backward(dout, q, k, v, out, lse, None, dq, dk, dv)  # tunes both kernels once
    torch.cuda.synchronize()
    tuned = ((_chosen(bwd, "dkdv") or [bwd.DEFAULT_DKDV])[0],
             (_chosen(bwd, "dq") or [bwd.DEFAULT_DQ])[0])
    print(f"  tuned in {time.perf_counter() - start:.1f} s: dK/dV {tuned[0]}, dQ {tuned[1]}",
          flush=True)
    bwd_flops = 2.5 * frontier.flops(*case)

    def row(label, dkdv_config, dq_config, base_ms=None):
        def run():
            bwd.backward(dout, q, k, v, out, lse, None, dq, dk, dv,
                         dkdv_config=dkdv_config, dq_config=dq_config)
        try:
            for x in (dq, dk, dv):
                x.fill_(float("nan"))  # a kernel that writes nothing cannot pass
            run()
            err = _slice_error((dq[sl], dk[sl], dv[sl]), want[1:])
            ms = do_bench(run, warmup=10, rep=40, return_mode="median")
        except Exception as error:  # noqa: BLE001 - a config that cannot run says why
            print(f"    {label:8s} {dkdv_config!s:30s} {dq_config!s:26s} failed: "
                  f"{str(error).strip().splitlines()[-1][:90]}", flush=True)
            return None, False
        ok = err <= frontier.TOLERANCE
        speed = f" {base_ms / ms:5.2f}x tuned" if base_ms else ""
        print(f"    {label:8s} {dkdv_config!s:30s} {dq_config!s:26s} err {err:.1e} "
              f"{'ok' if ok else 'FAIL':4s} {ms:7.3f} ms {bwd_flops / ms / 1e9:4.0f} TF/s"
              f"{speed}", flush=True)
        return (ms if ok else None), ok

    print(f"    {'row':8s} {'dK/dV config':30s} {'dQ config':26s} backward alone "
          "(preprocess, dK/dV, dQ)", flush=True)
    base_ms, all_ok = row("tuned", *tuned)
    dkdv_candidates, dq_candidates = candidate_configs(spec)
    best = list(tuned)
    for slot, configs in ((0, dkdv_candidates), (1, dq_candidates)):
        best_ms = base_ms
        for config in configs:
            pinned = list(tuned)
            pinned[slot] = config
            ms, ok = row(("dK/dV", "dQ")[slot], *pinned, base_ms=base_ms)
            all_ok &= ok
            if ms is not None and (best_ms is None or ms < best_ms):
                best_ms, best[slot] = ms, config
    if best[0] != tuned[0] and best[1] != tuned[1]:  # both kernels gained: together
        all_ok &= row("both", *best, base_ms=base_ms)[1]
    return all_ok


def run_case(case, args) -> bool:
    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.runtime import kernel_module

    batch, heads, n, d, causal = case
    label = f"B={batch} H={heads} N={n} d={d} {'causal' if causal else 'full'}"
    print(f"\n== {label}", flush=True)
    q, k, v, dout, sl, want = frontier.case_inputs(case, args.device)
    spec = ops._plain_spec(d, d, torch.bfloat16, causal, 1.0 / math.sqrt(d))

    def ours():
        return lambda q, k, v: ops.flash_attention(q, k, v, causal=causal)

    start = time.perf_counter()  # the first call: compiles and tunes both directions
    ours()(q, k, v).backward(dout)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    fwd = kernel_module("attention_fwd", spec, q.device)
    bwd = kernel_module("attention_bwd", spec, q.device)
    print(f"  first call {first_s:.1f} s (compiles + tuning); chosen: forward "
          f"{_chosen(fwd, 'forward')}, dK/dV {_chosen(bwd, 'dkdv')}, dQ {_chosen(bwd, 'dq')}",
          flush=True)
    rows = [("sdpa cuDNN", lambda: frontier._sdpa("CUDNN_ATTENTION", causal)),
            ("sdpa FLASH (FA2)", lambda: frontier._sdpa("FLASH_ATTENTION", causal)),
            ("ioaware tuned", ours)]
    fl = frontier.flops(*case)
    cudnn_ms = [None, None]
    all_ok = True
    for name, build in rows:
        err, ok, ms_fwd, ms_all, note = frontier.run_row(build, (q, k, v, dout, sl), want, 60)
        all_ok &= ok is not False
        if name == "sdpa cuDNN":
            cudnn_ms = [ms_fwd, ms_all]
        ratio = [c / m if c and m else None for c, m in zip(cudnn_ms, (ms_fwd, ms_all))]
        fmt = frontier._fmt
        verdict = "-" if ok is None else "ok" if ok else "FAIL"
        print(f"  {name:18s} err {fmt(err, '.1e')} {verdict}"
              f"  fwd {fmt(ms_fwd, '.3f')} ms {fmt(fl / ms_fwd / 1e9 if ms_fwd else None, '.0f')}"
              f" TF/s ({fmt(ratio[0], '.2f')}x cuDNN)  fwd+bwd {fmt(ms_all, '.3f')} ms "
              f"{fmt(3.5 * fl / ms_all / 1e9 if ms_all else None, '.0f')} TF/s "
              f"({fmt(ratio[1], '.2f')}x) {note}", flush=True)
    dkdv_space(spec, (q, k, v, dout, sl), want, args.device)

    def step(attention):
        def run():
            attention(q, k, v).backward(dout)
            q.grad = k.grad = v.grad = None
        return run

    if not args.no_profile:
        step_table("  ioaware forward+backward", step(ours()), 3)
        step_table("  cuDNN forward+backward",
                   step(frontier._sdpa("CUDNN_ATTENTION", causal)), 3)
    return all_ok  # the case's tensors go with the frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="*",
                        help=f"indices into CASES: {CASES} (all by default); with "
                             f"--candidates into CANDIDATE_CASES: {CANDIDATE_CASES}")
    parser.add_argument("--no-profile", action="store_true", help="skip the kernel tables")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--candidates", action="store_true",
                        help="time the backward's study candidates against the tuned configs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton "
          f"{triton.__version__}  bf16", flush=True)
    start = time.perf_counter()
    cases = CANDIDATE_CASES if args.candidates else CASES
    picked = [cases[i] for i in (range(len(cases)) if args.cases is None else args.cases)]
    if args.candidates:
        results = [candidates_case(case, args.device) for case in picked]
    else:  # every case, even after a FAIL
        results = [run_case(case, args) for case in picked]
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
