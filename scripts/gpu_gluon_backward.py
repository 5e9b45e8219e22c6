"""The Gluon dK/dV kernel (issue 15; codegen/attention/gluon_bwd_kernel.py) and its
fused-dQ form ("gluon+atomic", gluon_bwd_dq_kernel.py) on an H100: checked, then timed
beside ioaware's tuned Triton dK/dV kernel and cuDNN's backward.

1. Correctness of every Gluon candidate (`backward.gluon_candidate_configs`), dense and
   causal, d = 64 and 128 (bf16; one fp16 case), at ragged sizes with GQA (B=2, Hq=4,
   Hkv=2, Nq=333, Nk=517 dense / 333 causal), q, k, v, dO in a [B, N, H, d] layout seen
   through a transpose: dK and dV of the Gluon kernel against the fp32 math (autograd
   through SDPA's math backend on fp32 copies; relative Frobenius error 1e-2 bf16,
   2e-3 fp16). The fused-dQ candidates (`backward.gluon_fused_candidate_configs`) the
   same way, dQ checked as well (it comes out of the fused kernel's reduce-adds). Then
   each timed case on a slice of its full-size gradients (dQ, dK, dV).
2. Time (triton.testing.do_bench, median) at B4 H16 N4096 d128 dense and causal and
   B4 H32 N4096 d64 dense and causal (d = 256 is refused by the gate: see
   docs/kernels.md): the dK/dV kernel alone (the Gluon candidates, the tuned Triton
   dK/dV config) and the whole backward (preprocess + dK/dV + the tuned dQ), beside
   cuDNN's SDPA backward (its forward excluded: the gradient of a saved graph). The
   fused rows ("gluon+dQ"): the fused kernel alone (its "dK/dV" TFLOP/s count its five
   products, 5/4 of the others'), and the whole backward as it runs (preprocess, the
   accumulator's zeroing, the fused kernel, `_bwd_dq_convert`).
   TFLOP/s: 4 products of 2·B·H·N²·d for dK/dV, 2.5× the forward's 4·B·H·N²·d for the
   backward, halved causal.

Exit 1 on any wrong answer, or when the gate refuses the kernel here (it runs on Triton
3.6 and sm_90 only). A watchdog ends the process after --timeout seconds (a hung
mbarrier wait shows up as a hang, not a wrong answer).

    python scripts/gpu_gluon_backward.py            # ~2-3 min on an H100
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_attention_frontier import _sdpa, flops

CASES = [(4, 16, 4096, 128, False), (4, 16, 4096, 128, True),
         (4, 32, 4096, 64, False), (4, 32, 4096, 64, True)]
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def modules(d: int, causal: bool, dtype: torch.dtype):
    """The plain forward and backward modules ioaware::flash_attention runs, and the Spec."""
    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.runtime import kernel_module

    spec = ops._plain_spec(d, d, dtype, causal, 1.0 / math.sqrt(d))
    device = torch.device("cuda")
    return (kernel_module("attention_fwd", spec, device),
            kernel_module("attention_bwd", spec, device), spec)


class Problem:
    """Inputs, the forward's O and lse, and buffers for one backward."""

    def __init__(self, fwd, batch, h_q, h_kv, n_q, n_k, d, dtype, seed, strided=False):
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def make(h, n):
            if strided:  # [B, N, H, d] storage seen as [B, H, N, d]
                return torch.randn(batch, n, h, d, device="cuda", generator=gen).to(
                    dtype).transpose(1, 2)
            return torch.randn(batch, h, n, d, device="cuda", generator=gen, dtype=dtype)

        self.q, self.k, self.v = make(h_q, n_q), make(h_kv, n_k), make(h_kv, n_k)
        self.do = make(h_q, n_q)
        self.out = torch.empty_like(self.q)
        self.lse = torch.empty(batch, h_q, n_q, device="cuda", dtype=torch.float32)
        fwd.forward(self.q, self.k, self.v, self.out, self.lse)
        self.dq, self.dk, self.dv = (torch.empty_like(t) for t in (self.q, self.k, self.v))

    def backward(self, bwd, dkdv_config=None):
        bwd.backward(self.do, self.q, self.k, self.v, self.out, self.lse, None, self.dq,
                     self.dk, self.dv, dkdv_config=dkdv_config)
        return self.dq, self.dk, self.dv


def reference(q, k, v, do, causal, batches=slice(None)):
    """fp32 (dQ, dK, dV) by autograd through SDPA's math backend, GQA expanded."""
    group = q.shape[1] // k.shape[1]
    q32, k32, v32 = (t[batches].float().detach().requires_grad_() for t in (q, k, v))
    out = _sdpa("MATH", causal)(q32, k32.repeat_interleave(group, 1),
                                v32.repeat_interleave(group, 1))
    return torch.autograd.grad(out, (q32, k32, v32), do[batches].float())


def rel(got, want) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def check_ragged(d, causal, dtype, seed, failures) -> None:
    from ioaware.codegen.attention import backward, gluon_backward

    fwd, bwd, spec = modules(d, causal, dtype)
    n_q, n_k = (333, 333) if causal else (333, 517)
    problem = Problem(fwd, 2, 4, 2, n_q, n_k, d, dtype, seed, strided=True)
    want = reference(problem.q, problem.k, problem.v, problem.do, causal)
    for config in (backward.gluon_candidate_configs(spec)
                   + backward.gluon_fused_candidate_configs(spec)):
        dq, dk, dv = problem.backward(bwd, config)
        errors = rel(dk, want[1]), rel(dv, want[2])
        fused = ""
        if gluon_backward.is_fused(config):  # dQ is the fused kernel's too
            errors += (rel(dq, want[0]),)
            fused = f"  dQ rel {errors[2]:.2e}"
        ok = max(errors) <= TOLERANCE[dtype]
        print(f"  check d={d} {'causal' if causal else 'dense '} {str(dtype)[6:]:8s} "
              f"{config!s:34s} dK rel {errors[0]:.2e}  dV rel {errors[1]:.2e}{fused}  "
              f"{'ok' if ok else 'WRONG'}", flush=True)
        if not ok:
            failures.append(f"{config} d={d} causal={causal} {dtype}")


def _dkdv_alone(bwd, problem, config, n_q, n_k):
    """A callable that launches only the dK/dV kernel at `config` (Gluon or Triton),
    with the backward's own delta; a fused-dQ config adds into an accumulator zeroed
    once, outside the timing (the whole backward's rows count the zeroing)."""
    from ioaware.codegen.attention import gluon_backward

    p = problem
    batch, h_q = p.q.shape[:2]
    h_kv = p.k.shape[1]
    delta = torch.empty(batch * h_q, n_q, device="cuda", dtype=torch.float32)
    bwd.launch(bwd._bwd_preprocess, (-(-n_q // bwd.PRE_BLOCK_M), batch * h_q), p.out, p.do,
               p.lse, delta, *p.out.stride(), *p.do.stride(), h_q, n_q, HAS_DLSE=False,
               BLOCK_M=bwd.PRE_BLOCK_M)
    if gluon_backward.is_fused(config):
        acc = torch.zeros(batch * h_q, n_q, p.q.shape[-1], device="cuda",
                          dtype=torch.float32)
        return lambda: gluon_backward.launch(config, p.q, p.k, p.v, p.do, p.dk, p.dv, p.lse,
                                             delta, bwd.SCALE.value, bwd.CAUSAL.value,
                                             dq_acc=acc)
    if gluon_backward.is_gluon(config):
        return lambda: gluon_backward.launch(config, p.q, p.k, p.v, p.do, p.dk, p.dv, p.lse,
                                             delta, bwd.SCALE.value, bwd.CAUSAL.value)
    buckets = (1 << (n_q - 1).bit_length(), 1 << (n_k - 1).bit_length())
    args = (p.q, p.k, p.v, p.do, p.dk, p.dv, p.lse, delta, delta, *p.q.stride(),
            *p.k.stride(), *p.v.stride(), *p.do.stride(), *p.dk.stride(), *p.dv.stride(),
            h_q, h_kv, h_q // h_kv, n_q, n_k, *buckets)
    return lambda: bwd._launch(bwd._bwd_dkdv, config, n_k, batch * h_kv, args)


def time_case(case, table, failures) -> None:
    from triton.testing import do_bench

    from ioaware.codegen.attention import backward, gluon_backward

    batch, heads, n, d, causal = case
    label = f"B{batch} H{heads} N{n} d{d}" + (" causal" if causal else "")
    fwd, bwd, spec = modules(d, causal, torch.bfloat16)
    problem = Problem(fwd, batch, heads, heads, n, n, d, torch.bfloat16, n + d + causal)
    sl = slice(0, 1)
    want = reference(problem.q, problem.k, problem.v, problem.do, causal, sl)
    problem.backward(bwd)  # tunes the Triton dK/dV and dQ configs once
    tuned = ([c for key, c in bwd._CHOSEN.items() if key[0] == "dkdv"]
             or [bwd.DEFAULT_DKDV])[0]
    fl_fwd = flops(*case)  # 4·B·H·N²·d, halved causal
    fl_dkdv, fl_bwd = fl_fwd, 2.5 * fl_fwd

    cudnn = _sdpa("CUDNN_ATTENTION", causal)
    q, k, v = (t.detach().requires_grad_() for t in (problem.q, problem.k, problem.v))
    out = cudnn(q, k, v)
    cudnn_ms = do_bench(lambda: torch.autograd.grad(out, (q, k, v), problem.do,
                                                    retain_graph=True),
                        return_mode="median")
    rows = [(f"gluon {c[:4]}", c) for c in backward.gluon_candidate_configs(spec)]
    rows += [(f"gluon+dQ {c[:4]}", c) for c in backward.gluon_fused_candidate_configs(spec)]
    rows.append((f"triton tuned {tuned}", tuned))
    triton_ms = {}
    for name, config in rows:
        dq, dk, dv = problem.backward(bwd, config)
        errors = [rel(g[sl], w) for g, w in zip((dq, dk, dv), want)]
        ok = max(errors) <= TOLERANCE[torch.bfloat16]
        if not ok:
            failures.append(f"{name} at {label}")
        kernel_ms = do_bench(_dkdv_alone(bwd, problem, config, n, n), return_mode="median")
        whole_ms = do_bench(lambda c=config: problem.backward(bwd, c), return_mode="median")
        if config == tuned:
            triton_ms = {"kernel": kernel_ms, "whole": whole_ms}
        products = 1.25 if gluon_backward.is_fused(config) else 1.0  # dQ's fifth product
        table.append([label, name, kernel_ms, products * fl_dkdv / kernel_ms / 1e9, whole_ms,
                      fl_bwd / whole_ms / 1e9, cudnn_ms, ok, max(errors)])
    for row in table[-len(rows):]:
        row.append(triton_ms["kernel"] / row[2])
        row.append(triton_ms["whole"] / row[4])
        print(f"  {label:24s} {row[1]:40s} dK/dV {row[2]:.3f} ms ({row[3]:.0f} TFLOP/s, "
              f"{row[-2]:.2f}x triton)  backward {row[4]:.3f} ms ({row[-1]:.2f}x triton, "
              f"{cudnn_ms / row[4]:.2f}x cuDNN)  {'ok' if row[7] else 'WRONG'}", flush=True)
    table.append([label, "cuDNN SDPA backward", float("nan"), float("nan"), cudnn_ms,
                  fl_bwd / cudnn_ms / 1e9, cudnn_ms, True, 0.0, float("nan"),
                  triton_ms["whole"] / cudnn_ms])


def print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"attention backward, bf16, {torch.cuda.get_device_name()}, "
                      f"torch {torch.__version__}, triton {__import__('triton').__version__}")
    for column in ("shape", "dK/dV kernel", "dK/dV ms", "TFLOP/s", "x triton", "bwd ms",
                   "TFLOP/s", "x triton", "x cuDNN", "check"):
        out.add_column(column, justify="left" if column in ("shape", "dK/dV kernel")
                       else "right")
    for (label, name, kernel_ms, kernel_tf, whole_ms, whole_tf, cudnn_ms, ok, err,
         x_kernel, x_whole) in table:
        out.add_row(label, name, f"{kernel_ms:.3f}", f"{kernel_tf:.0f}", f"{x_kernel:.2f}",
                    f"{whole_ms:.3f}", f"{whole_tf:.0f}", f"{x_whole:.2f}",
                    f"{cudnn_ms / whole_ms:.2f}",
                    ("ok" if ok else "WRONG") + (f" {err:.1e}" if err else ""))
    Console(width=140).print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=230.0,
                        help="seconds before the watchdog ends the process (a hang)")
    parser.add_argument("--skip-check", action="store_true", help="time only")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    from ioaware.config import config

    # The baseline row is the Triton dK/dV as tuned without the Gluon configs that the
    # tuning space now holds where they won (gluon_*.TUNED); the Gluon rows are pinned.
    config.gluon = False

    from ioaware.codegen.attention import gluon_backward
    from ioaware.codegen.attention import op as ops

    spec = ops._plain_spec(128, 128, torch.bfloat16, False, 128 ** -0.5)
    reason = gluon_backward.unavailable_reason(spec, torch.device("cuda"))
    if reason:
        print(f"the Gluon dK/dV kernel cannot run here: {reason}")
        return 1
    failures: list[str] = []
    if not args.skip_check:
        print("correctness (ragged sizes, GQA, transposed layout):", flush=True)
        for d in (64, 128):
            for causal in (False, True):
                check_ragged(d, causal, torch.bfloat16, d + causal, failures)
        check_ragged(128, True, torch.float16, 7, failures)
    table: list = []
    print("timing:", flush=True)
    for case in CASES:
        time_case(case, table, failures)
    print_table(table)
    if failures:
        print("WRONG:", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
