"""The Gluon forward (issue 15; codegen/attention/gluon_kernel.py) on an H100: checked,
then timed beside ioaware's Triton forward and cuDNN.

1. Correctness of the Gluon candidate configs (`forward.candidate_configs`: with and
   without ping-pong; both at d = 128, the ping-pong one at d = 64 and 256), dense and
   causal, on fresh random inputs at ragged sizes with GQA (B=2, Hq=4, Hkv=2, Nq=333,
   Nk=517 dense / 333 causal), q, k, v in a [B, N, H, d] layout seen through a
   transpose (the strides a model gives), plus one fp16 case: O against SDPA's math backend in fp32 (relative Frobenius error,
   1e-2 bf16 / 2e-3 fp16) and the log-sum-exp against torch.logsumexp of the fp32
   scores (max abs error 2e-3). Then each timed case on a slice of its full-size output.
2. Forward TFLOP/s (4·B·H·N²·d, halved causal; do_bench median) at B4 H16 N4096 d128
   dense and causal, B4 H32 N4096 d64 dense and causal and B1 H16 N16384 d128 causal
   (issue 15's long-sequence shape): the Gluon configs, the
   Triton forward as a user gets it (tuned on its first call), cuDNN (SDPA's
   CUDNN_ATTENTION), each with its fraction of the 790 TFLOP/s floor and of cuDNN.

--poly (issue 15, the polynomial exp2): instead of the Gluon rows, the plain Triton
forward at the tuned H100 config (128, 64, 8, 3) pinned, without and with a share of P's
exp2 on the FMA pipe ("polyK": 1/K, `forward.POLY_SHARES`), and its TMA form with and
without 1/8, beside the tuned Triton forward and cuDNN at B4 H32 N4096 d64, dense and
causal; each config first checked at ragged sizes (bf16 dense and causal, fp16 causal)
and on the timed shape's slice as every row is. The Gluon gate is not asked.

Exit 1 on any wrong answer, or when the gate refuses the Gluon kernel here (the reason
printed: it runs on Triton 3.6 and sm_90 only). A watchdog ends the process after
--timeout seconds (a hung mbarrier wait shows up as a hang, not a wrong answer).

    python scripts/gpu_gluon_forward.py            # ~2-3 min on an H100
    python scripts/gpu_gluon_forward.py --poly     # ~1-2 min: the poly exp2 rows
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

FLOOR = 790.0  # TFLOP/s: the project's sustained bf16 wgmma floor on an H100 SXM
CASES = [(4, 16, 4096, 128, False), (4, 16, 4096, 128, True),
         (4, 32, 4096, 64, False), (4, 32, 4096, 64, True), (1, 16, 16384, 128, True)]
O_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
LSE_TOLERANCE = 2e-3
POLY_CASES = [(4, 32, 4096, 64, False), (4, 32, 4096, 64, True)]


def poly_configs() -> list[tuple]:
    """The plain forward's tuned d = 64 config, without and with each poly share, and
    its TMA form without and with the default share."""
    from ioaware.codegen.attention import forward

    base = (128, 64, 8, 3)
    return [base, *((*base, f"poly{k}") for k in forward.POLY_SHARES), (*base, "tma"),
            (*base, f"tma+poly{forward.POLY_SHARE}")]


def forward_module(d: int, causal: bool, dtype: torch.dtype):
    """The plain forward module (and its Spec) ioaware::flash_attention runs for these."""
    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.runtime import kernel_module

    spec = ops._plain_spec(d, d, dtype, causal, 1.0 / math.sqrt(d))
    return kernel_module("attention_fwd", spec, torch.device("cuda")), spec


def reference(q, k, v, causal):
    """fp32 O (SDPA math) and lse (logsumexp of the scaled, masked scores), GQA expanded."""
    group = q.shape[1] // k.shape[1]
    q32, k32, v32 = (t.float() for t in (q, k, v))
    k32, v32 = (t.repeat_interleave(group, dim=1) for t in (k32, v32))
    out = _sdpa("MATH", causal)(q32, k32, v32)
    scores = q32 @ k32.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(
            torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return out, torch.logsumexp(scores, dim=-1)


def errors(got_out, got_lse, want_out, want_lse) -> tuple[float, float]:
    rel = ((got_out.float() - want_out).norm() / want_out.norm()).item()
    return rel, (got_lse - want_lse).abs().max().item()


def run(module, config, q, k, v):
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    module.forward(q, k, v, out, lse, config=config)
    return out, lse


def check_ragged(d: int, causal: bool, dtype: torch.dtype, seed: int,
                 configs: slice = slice(None), pinned: list | None = None) -> list[str]:
    """Failures (empty: all passed) of the Gluon candidates `configs` (or of the configs
    `pinned`) at ragged sizes."""
    from ioaware.codegen.attention import forward

    module, spec = forward_module(d, causal, dtype)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n_q, n_k = (333, 333) if causal else (333, 517)
    # [B, N, H, d] storage, read as [B, H, N, d]: the strides a projection's view gives
    q = torch.randn(2, n_q, 4, d, device="cuda", generator=gen).to(dtype).transpose(1, 2)
    k, v = (torch.randn(2, n_k, 2, d, device="cuda", generator=gen).to(dtype).transpose(1, 2)
            for _ in range(2))
    want = reference(q, k, v, causal)
    failures = []
    for config in pinned if pinned is not None else forward.candidate_configs(spec)[configs]:
        rel, lse_err = errors(*run(module, config, q, k, v), *want)
        ok = rel <= O_TOLERANCE[dtype] and lse_err <= LSE_TOLERANCE
        print(f"  check d={d} {'causal' if causal else 'dense '} {str(dtype)[6:]:8s} "
              f"{config!s:34s} O rel {rel:.2e}  lse abs {lse_err:.2e}  "
              f"{'ok' if ok else 'WRONG'}", flush=True)
        if not ok:
            failures.append(f"{config} d={d} causal={causal} {dtype}")
    return failures


def time_case(case, table: list, failures: list, pinned: list | None = None) -> None:
    """One timed case: the Gluon candidates (or the configs `pinned`), the tuned Triton
    forward and cuDNN, each checked on a slice first."""
    from triton.testing import do_bench

    from ioaware.codegen.attention import forward

    batch, heads, n, d, causal = case
    label = f"B{batch} H{heads} N{n} d{d}" + (" causal" if causal else "")
    module, spec = forward_module(d, causal, torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(n + d + causal)
    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", generator=gen,
                           dtype=torch.bfloat16) for _ in range(3))
    sl = (slice(0, 1), slice(0, 2))
    want = reference(q[sl], k[sl], v[sl], causal)
    if pinned is not None:
        rows = [(f"triton {c[4] if len(c) > 4 else 'plain'} {c[:4]}", c) for c in pinned]
    else:
        rows = [(f"gluon {c[4]} {c[:4]}", c) for c in forward.candidate_configs(spec)]
    rows.append(("triton forward (tuned)", None))
    fl = flops(*case)
    cudnn = _sdpa("CUDNN_ATTENTION", causal)
    with torch.no_grad():
        cudnn_ms = do_bench(lambda: cudnn(q, k, v), return_mode="median")
    for name, config in rows:
        out, lse = run(module, config, q, k, v)  # the tuned row tunes here, once
        rel, lse_err = errors(out[sl], lse[sl], *want)
        ok = rel <= O_TOLERANCE[torch.bfloat16] and lse_err <= LSE_TOLERANCE
        if not ok:
            failures.append(f"{name} at {label}")
        ms = do_bench(lambda c=config, o=out, s=lse: module.forward(q, k, v, o, s, config=c),
                      return_mode="median")
        table.append((label, name, fl / ms / 1e9, cudnn_ms / ms, ok, rel))
        print(f"  {label:24s} {name:44s} {fl / ms / 1e9:6.0f} TFLOP/s  "
              f"{cudnn_ms / ms:4.2f}x cuDNN  {'ok' if ok else 'WRONG'} ({rel:.1e})",
              flush=True)
    table.append((label, "cuDNN (SDPA)", fl / cudnn_ms / 1e9, 1.0, True, 0.0))


def print_table(table: list) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"forward, bf16, {torch.cuda.get_device_name()}, "
                      f"torch {torch.__version__}, triton {__import__('triton').__version__}")
    for column in ("shape", "kernel", "TFLOP/s", "of floor", "x cuDNN", "check"):
        out.add_column(column, justify="left" if column in ("shape", "kernel") else "right")
    for label, name, tflops, vs_cudnn, ok, rel in table:
        out.add_row(label, name, f"{tflops:.0f}", f"{tflops / FLOOR:.2f}", f"{vs_cudnn:.2f}",
                    ("ok" if ok else "WRONG") + (f" {rel:.1e}" if rel else ""))
    Console(width=120).print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds before the watchdog ends the process (a hang)")
    parser.add_argument("--skip-check", action="store_true", help="time only")
    parser.add_argument("--poly", action="store_true",
                        help="the polynomial-exp2 rows at d = 64 instead of the Gluon rows")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    from ioaware.config import config

    # The baseline row is the Triton forward as tuned without the Gluon configs that the
    # tuning space now holds where they won (gluon_*.TUNED); the Gluon rows are pinned.
    config.gluon = False

    from ioaware.codegen.attention import gluon_forward
    from ioaware.codegen.attention import op as ops

    if args.poly:
        return run_poly(args.skip_check)
    spec = ops._plain_spec(128, 128, torch.bfloat16, False, 128 ** -0.5)
    reason = gluon_forward.unavailable_reason(spec, torch.device("cuda"))
    if reason:
        print(f"the Gluon forward cannot run here: {reason}")
        return 1
    failures: list[str] = []
    if not args.skip_check:
        print("correctness (ragged sizes, GQA, transposed layout):", flush=True)
        # every candidate at d = 128; the first (ping-pong) at 64 and 256 and in fp16 (the
        # others are checked on the timed shapes below): each is a compile of a few seconds
        for d in (64, 128, 256):
            for causal in (False, True):
                failures += check_ragged(d, causal, torch.bfloat16, seed=d + causal,
                                         configs=slice(None if d == 128 else 1))
        failures += check_ragged(128, True, torch.float16, seed=7, configs=slice(1))
    table: list = []
    print("timing:", flush=True)
    for case in CASES:
        time_case(case, table, failures)
    print_table(table)
    if failures:
        print("WRONG:", *failures, sep="\n  ")
        return 1
    return 0


def run_poly(skip_check: bool) -> int:
    """--poly: the polynomial-exp2 configs checked, then timed at the d = 64 cases."""
    configs = poly_configs()
    failures: list[str] = []
    if not skip_check:
        print("correctness (ragged sizes, GQA, transposed layout):", flush=True)
        for causal in (False, True):
            failures += check_ragged(64, causal, torch.bfloat16, seed=64 + causal,
                                     pinned=configs)
        failures += check_ragged(64, True, torch.float16, seed=7, pinned=configs)
    table: list = []
    print("timing:", flush=True)
    for case in POLY_CASES:
        time_case(case, table, failures, pinned=configs)
    print_table(table)
    if failures:
        print("WRONG:", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
