"""Attention at the Hopper frontier (issue 15): the plain forward's sm_90 variants beside
cuDNN, FlashAttention-2 (SDPA's FLASH backend) and FlexAttention, on one GPU.

For each case (bf16; B, H, N, d; causal or not) and each row -- an ioaware forward config
(BLOCK_M, BLOCK_N, warps, stages[, variant]; `codegen/attention/forward.py` VARIANTS), or
a peer -- the script
  1. checks out, dq, dk, dv against SDPA's math backend in fp32 on a slice of the
     problem (batch 0, heads 0-1: heads are independent, so the slice of the full run's
     result is what the slice alone gives), bf16 tolerance 3e-2 relative;
  2. times the forward, and forward+backward, with do_bench (median ms), and prints
     TFLOP/s (4·B·H·N²·d forward, halved for causal; ×3.5 forward+backward) and the
     ratio to cuDNN.
The ioaware rows pin the forward config (no tuning); the backward runs its untuned
default configs (DEFAULT_DKDV / DEFAULT_DQ), the same for those rows of a case, so their
forward+backward column compares forwards; rows marked "dkdv (..., 'tma')" pin the
dK/dV kernel's TMA variant instead; `--tune` adds a row that tunes both directions.
Lines print as they are measured (flushed); one table at the end. A time budget
(--budget, seconds) is shared out over the cases; a case past its share skips its
remaining rows, saying so.

    python scripts/gpu_attention_frontier.py                 # every case, ~4-5 min
    python scripts/gpu_attention_frontier.py --cases 0 1     # the B=4 H=16 N=4096 d=128 pair
    python scripts/gpu_attention_frontier.py --full --tune   # every variant config everywhere

Floor (H100 SXM, dense bf16 989 TFLOP/s peak, ~790 sustained by matmuls): forward time
≥ FLOPs / 790e12; exp2 (MUFU, 16/clk/SM: 132·16·1.83e9 = 3.9e12/s) needs B·H·N² exps,
N²·B·H / 3.9e12 s: at d=128 that is 1/(4·128)·790/3.9 = 0.4 of the matmul time, hidden
only when softmax overlaps the wgmma (FA3's ping-pong).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

CASES = [  # (batch, heads, seqlen, head_dim, causal)
    (4, 16, 4096, 128, False), (4, 16, 4096, 128, True),
    (1, 16, 16384, 128, False), (1, 16, 16384, 128, True),
    (4, 32, 4096, 64, False), (4, 32, 4096, 64, True),
    (4, 16, 4096, 256, False), (4, 16, 4096, 256, True),
]
TOLERANCE = 3e-2  # bf16, as `ioaware bench attention`
PEERS = ("cudnn", "flash", "flex")


def flops(batch: int, heads: int, n: int, d: int, causal: bool) -> float:
    fwd = 4.0 * batch * heads * n * n * d
    return fwd / 2 if causal else fwd


def _sdpa(backend_name: str, causal: bool):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def attention(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return attention


def _flex(n: int, causal: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)
    mask = create_block_mask(lambda b, h, q, kv: q >= kv, None, None, n, n,
                             device="cuda") if causal else None
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def _ioaware(spec, config, tune: bool, device: str, dkdv=None):
    """flash_attention with the forward module pinned to `config` and the backward's
    dK/dV to `dkdv` (None: its default) (tune: both directions tuned as in a real
    call)."""
    from ioaware.codegen.attention import op as ops
    from ioaware.codegen.runtime import kernel_module

    fwd = kernel_module("attention_fwd", spec, torch.device(device))
    bwd = kernel_module("attention_bwd", spec, torch.device(device))
    saved = {m: dict(vars(m)) for m in (fwd, bwd)}

    def pin():
        for m in (fwd, bwd):  # each row sets what it needs: a module is shared by rows
            for name in ("TUNE_CONFIGS", "DEFAULT_CONFIG", "TUNE_DKDV", "TUNE_DQ",
                         "DEFAULT_DKDV"):
                if name in saved[m]:
                    setattr(m, name, saved[m][name])
        if not tune:
            fwd.TUNE_CONFIGS, fwd.DEFAULT_CONFIG = [], config
            bwd.TUNE_DKDV, bwd.TUNE_DQ = [], []
            if dkdv is not None:
                bwd.DEFAULT_DKDV = dkdv

    def attention(q, k, v):
        pin()
        return ops.flash_attention(q, k, v, scale=spec.scale, causal=spec.causal)
    return attention


def ioaware_rows(spec, full: bool) -> list[tuple]:
    """(forward config, dK/dV config or None) pairs to run: today's forward first (the
    fallback), then the forward variant configs of the tuning space (all with --full or
    at the headline d=128, N=4096 cases; else the first three); then the dK/dV TMA
    configs beside the first forward TMA config (all, or the first); then the other
    pointer forward configs with --full."""
    from ioaware.codegen.attention import backward, forward

    configs = forward.forward_configs(spec, "h100")
    plain = [c for c in configs if len(c) == 4]
    variants = [c for c in configs if len(c) > 4]
    rows = [(c, None) for c in plain[:1] + (variants if full else variants[:3])]
    tma_fwd = next((c for c in variants if "tma" in c[4]), plain[0])
    dkdv = [c for c in backward.dkdv_configs(spec, "h100") if len(c) > 4]
    rows += [(tma_fwd, c) for c in (dkdv if full else dkdv[:1])]
    return (rows + [(c, None) for c in plain[1:]]) if full else rows


def run_row(build, tensors, want, timeout_s):
    """(rel_err, ok, fwd_ms, fwd_bwd_ms, note) of one row: the check, then the times
    (a failure of either becomes the note, the check's result kept)."""
    from triton.testing import do_bench

    q, k, v, dout, sl = tensors
    err = ok = ms_fwd = ms_all = None
    try:
        attention = build()
        for t in (q, k, v):
            t.grad = None
        out = attention(q, k, v)
        out.backward(dout)
        got = (out[sl], q.grad[sl], k.grad[sl], v.grad[sl])
        err = max(((g.float() - w).norm() / w.norm()).item() for g, w in zip(got, want))
        ok = err <= TOLERANCE
        start = time.perf_counter()

        def fwd():
            with torch.no_grad():
                attention(q, k, v)

        ms_fwd = do_bench(fwd, warmup=10, rep=40, return_mode="median")
        if time.perf_counter() - start < timeout_s:
            ms_all = do_bench(lambda: attention(q, k, v).backward(dout), warmup=10, rep=40,
                              grad_to_none=[q, k, v], return_mode="median")
        return err, ok, ms_fwd, ms_all, ""
    except Exception as error:  # noqa: BLE001 - a row that cannot run says why
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        line = (str(error).strip().splitlines() or [""])[0][:100]
        return err, ok, ms_fwd, ms_all, f"{type(error).__name__}: {line}"


def case_inputs(case, device):
    """q, k, v (requiring grad), dout in bf16, seeded; the slice the check compares (batch
    0, heads 0-1) and SDPA math's fp32 output and q, k, v gradients on it."""
    batch, heads, n, d, causal = case
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (torch.randn(batch, heads, n, d, device=device, dtype=torch.bfloat16,
                                 generator=gen) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    sl = (slice(0, 1), slice(0, 2))
    q32, k32, v32 = (t.detach()[sl].float().requires_grad_() for t in (q, k, v))
    out32 = _sdpa("MATH", causal)(q32, k32, v32)
    out32.backward(dout[sl].float())
    return q, k, v, dout, sl, (out32.detach(), q32.grad, k32.grad, v32.grad)


def run_case(case, args, table, deadline):
    from ioaware.codegen.attention import op as ops

    batch, heads, n, d, causal = case
    label = f"B={batch} H={heads} N={n} d={d} {'causal' if causal else 'full'}"
    print(f"\n== {label}", flush=True)
    q, k, v, dout, sl, want = case_inputs(case, args.device)
    fl = flops(*case)
    # the Spec flash_attention builds for these tensors (same scale: the same module)
    spec = ops._plain_spec(d, d, torch.bfloat16, causal, 1.0 / math.sqrt(d))
    rows = [(f"ioaware {c}" + (f" dkdv {b}" if b else ""),
             lambda c=c, b=b: _ioaware(spec, c, False, args.device, b))
            for c, b in ioaware_rows(spec, args.full or (n == 4096 and d == 128))]
    if args.tune:
        rows.append(("ioaware tuned", lambda: _ioaware(spec, None, True, args.device)))
    peers = {"cudnn": ("sdpa cuDNN", lambda: _sdpa("CUDNN_ATTENTION", causal)),
             "flash": ("sdpa FLASH (FA2)", lambda: _sdpa("FLASH_ATTENTION", causal)),
             "flex": ("flex_attention", lambda: _flex(n, causal))}
    # cuDNN first (the yardstick), FLASH, ioaware, then Flex (its compile is the slowest:
    # a case out of time loses Flex's row, not ours)
    rows = ([peers[p] for p in args.peers if p != "flex"] + rows
            + [peers[p] for p in args.peers if p == "flex"])
    cudnn_ms = [None, None]
    for name, build in rows:
        if time.perf_counter() > deadline:
            print(f"  {name:58s} skipped: the case's time budget is spent", flush=True)
            table.append((label, name, None, None, None, None, None, "skipped: budget"))
            continue
        err, ok, ms_fwd, ms_all, note = run_row(build, (q, k, v, dout, sl), want,
                                                max(deadline - time.perf_counter(), 0))
        if name == "sdpa cuDNN":
            cudnn_ms = [ms_fwd, ms_all]
        tf_fwd = fl / ms_fwd / 1e9 if ms_fwd else None
        tf_all = 3.5 * fl / ms_all / 1e9 if ms_all else None
        ratio = [c / m if c and m else None for c, m in zip(cudnn_ms, (ms_fwd, ms_all))]
        table.append((label, name, err, ok, tf_fwd, tf_all, ratio, note))
        print(f"  {name:58s} {_fmt(err, '.1e'):>8} {'ok' if ok else 'FAIL' if ok is False else '-':4}"
              f" fwd {_fmt(tf_fwd, '.0f'):>5} TF/s ({_fmt(ratio[0], '.2f')}x cuDNN)"
              f"  fwd+bwd {_fmt(tf_all, '.0f'):>5} TF/s ({_fmt(ratio[1], '.2f')}x) {note}",
              flush=True)
    del q, k, v, dout
    torch.cuda.empty_cache()


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="*", default=list(range(len(CASES))),
                        help=f"indices into CASES: {CASES}")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for all cases")
    parser.add_argument("--full", action="store_true", help="every config of the tuning space")
    parser.add_argument("--tune", action="store_true", help="add a row tuned as a real call")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "H", "N", "D"),
                        help="one shape, causal and not, instead of CASES")
    parser.add_argument("--device", default="cuda",
                        help="cpu: the kernels under the interpreter, checks only (a smoke "
                             "run of this script; timing needs CUDA)")
    args = parser.parse_args()
    if args.device == "cpu":
        from ioaware.config import config

        config.interpret = True
    elif not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    cases = [CASES[i] for i in args.cases]
    if args.shape:
        cases = [(*args.shape, False), (*args.shape, True)]

    name = torch.cuda.get_device_name() if args.device != "cpu" else "cpu (interpreter)"
    print(f"{name}  torch {torch.__version__}  triton "
          f"{triton.__version__}  bf16; TF/s = TFLOP/s; budget {args.budget:.0f} s", flush=True)
    start = time.perf_counter()
    table: list[tuple] = []
    # the headline cases (N=4096, d=128: every variant) get twice the others' share
    weights = [2 if case[2] == 4096 and case[3] == 128 else 1 for case in cases]
    for i, case in enumerate(cases):
        left = args.budget - (time.perf_counter() - start)
        share = left * weights[i] / sum(weights[i:])
        run_case(case, args, table, time.perf_counter() + share)
    print(f"\n{'case':30s} {'row':58s} {'err':>8} {'fwd':>5} {'x':>5} {'f+b':>5} {'x':>5}")
    for label, name, err, ok, tf_fwd, tf_all, ratio, note in table:
        ratio = ratio or (None, None)
        print(f"{label:30s} {name:58s} {_fmt(err, '.1e'):>8} {_fmt(tf_fwd, '.0f'):>5} "
              f"{_fmt(ratio[0], '.2f'):>5} {_fmt(tf_all, '.0f'):>5} {_fmt(ratio[1], '.2f'):>5}"
              f"{'' if ok is not False else '  FAIL'} {note}")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if any(row[3] is False for row in table) else 0


if __name__ == "__main__":
    sys.exit(main())
