"""One GPU session for the selective scan: check and time each tile config, then the bench.

    PYTHONUNBUFFERED=1 python3 scripts/scan_perf.py [--fwd CFG ...] [--bwd CFG ...]
        [--skip-bench] [--compile-timeout S]        (CFG: BLOCK_D,BLOCK_L,warps,prefetch)

Issue 4's shape: Bt=4, Dc=1536, L=2048, N=16, G=1, bf16 u/delta/z/B/C, fp32 A, D,
delta_bias, softplus, silu(z) gate. For every config the forward (and backward) runs
through the generated module's launcher with that config forced (no autotuning), is
checked against scan_reference in fp32 on fresh random inputs (poisoned outputs first),
and timed with triton.testing.do_bench (median). Floors: bytes each pass must move (see
ioaware/bench/scan.py) over the copy bandwidth measured here, and the MUFU floor of one
exp2 per state element, Bt·Dc·L·N / (16 per clock per SM · SMs · clock).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import triton
from triton.testing import do_bench

from ioaware.bench.scan import TOLERANCE, ScanProblem
from ioaware.codegen.cache import device_tag, load_kernel_module
from ioaware.codegen.scan import backward as scan_bwd
from ioaware.codegen.scan import forward as scan_fwd
from ioaware.codegen.scan import reference as scan_reference
from ioaware.codegen.scan.spec import ScanSpec

PROBLEM = ScanProblem()  # the shape
SPEC = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, delta_dtype="bfloat16",
                bc_dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                delta_softplus=True)
# (BLOCK_D, BLOCK_L, num_warps, PREFETCH): the first run's best tiles (docs/kernels.md)
# with L2 prefetch 0, 2, 4, 8 chunks ahead.
FWD_SWEEP = [(bd, bl, w, pf) for bd, bl, w in [(8, 16, 1), (16, 16, 1), (4, 16, 1), (8, 32, 2),
                                              (16, 8, 1), (8, 8, 1), (4, 32, 1)]
             for pf in (0, 2, 4, 8)]
BWD_SWEEP = [(bd, 8, w, pf) for bd, w in [(4, 1), (8, 1), (2, 1)] for pf in (0, 4, 8)]


def log(message: str) -> None:
    print(message, flush=True)


def inputs(seed: int):
    p = PROBLEM
    g = torch.Generator(device="cuda").manual_seed(seed)
    bdl, bc = (p.batch, p.channels, p.seqlen), (p.batch, p.groups, p.seqlen, p.d_state)

    def rand(shape, dtype=torch.bfloat16, scale=1.0, shift=0.0):
        return (torch.randn(shape, device="cuda", generator=g) * scale + shift).to(dtype)

    u, delta, z = rand(bdl), rand(bdl, scale=0.5, shift=-1.0), rand(bdl)
    # Mamba's A = -exp(A_log) with A_log = log(1..N), perturbed: no structure to exploit.
    A = -(torch.arange(1, p.d_state + 1, device="cuda").float().repeat(p.channels, 1)
          * torch.exp(0.3 * torch.randn(p.channels, p.d_state, device="cuda", generator=g)))
    B, C = rand(bc), rand(bc)
    D = rand((p.channels,), torch.float32)
    delta_bias = rand((p.channels,), torch.float32, scale=0.1)
    dy = rand(bdl)
    return u, delta, A, B, C, D, z, delta_bias, dy


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


def copy_bandwidth() -> float:
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * x.numel() * 4 / (ms * 1e-3)


def sm_clock_hz() -> float:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6
    except Exception:  # noqa: BLE001 - H100 SXM's boost clock
        return 1.98e9


def sweep_forward(configs, bandwidth: float) -> list[tuple]:
    module = load_kernel_module("scan_fwd", SPEC, device_tag(torch.device("cuda")))
    module._selective_scan_fwd_tuned = None  # every call takes DEFAULT_CONFIG
    u, delta, A, B, C, D, z, delta_bias, _ = inputs(1)
    y_ref, h_ref = scan_reference.selective_scan(u, delta, A, B, C, D, z, delta_bias, True,
                                                 None)
    y = torch.empty_like(u)
    h_last = torch.empty(u.shape[0], u.shape[1], 16, device="cuda")
    results = []
    for config in configs:
        module.DEFAULT_CONFIG, module.PREFETCH = config[:3], config[3]
        start = time.time()
        try:
            y.fill_(float("nan"))
            h_last.fill_(float("nan"))
            module.forward(u, delta, A, B, C, D, z, delta_bias, None, y, h_last)
            torch.cuda.synchronize()
            err = max(rel(y, y_ref), rel(h_last, h_ref))
            compile_s = time.time() - start
            ms = do_bench(lambda: module.forward(u, delta, A, B, C, D, z, delta_bias, None,
                                                 y, h_last),
                          warmup=10, rep=50, return_mode="median")
        except Exception as error:  # noqa: BLE001 - report and go on
            log(f"fwd {config}: failed: {type(error).__name__}: {str(error)[:200]}")
            continue
        ok = err <= TOLERANCE[torch.bfloat16]
        floor = PROBLEM.fwd_bytes() / bandwidth / (ms * 1e-3)
        results.append((config, ms, err, ok))
        log(f"fwd {config}: {ms * 1e3:7.1f} us  {100 * floor:4.0f}% of floor  err {err:.1e} "
            f"{'ok' if ok else 'FAIL'}  (compile {compile_s:.1f} s)")
    return results


def sweep_backward(configs, bandwidth: float) -> list[tuple]:
    module = load_kernel_module("scan_bwd", SPEC, device_tag(torch.device("cuda")))
    module._selective_scan_bwd_tuned = None
    u, delta, A, B, C, D, z, delta_bias, dy = inputs(2)
    leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
    y_ref, _ = scan_reference.selective_scan(*leaves[:7], leaves[7], True, None)
    want = torch.autograd.grad(y_ref, leaves, dy.float())
    dtypes = [t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)] + [torch.float32]
    results = []
    for config in configs:
        module.DEFAULT_CONFIG, module.PREFETCH = config[:3], config[3]
        start = time.time()

        def run():
            return module.backward(dy, None, u, delta, A, B, C, D, z, delta_bias, None, dtypes)

        try:
            got = run()
            torch.cuda.synchronize()
            order = (0, 1, 2, 3, 4, 5, 6, 7)
            err = max(rel(got[i], want[i]) for i in order)
            compile_s = time.time() - start
            ms = do_bench(run, warmup=10, rep=50, return_mode="median")
        except Exception as error:  # noqa: BLE001
            log(f"bwd {config}: failed: {type(error).__name__}: {str(error)[:200]}")
            continue
        ok = err <= TOLERANCE[torch.bfloat16]
        bwd_bytes = PROBLEM.fwd_bwd_bytes() - PROBLEM.fwd_bytes()
        floor = bwd_bytes / bandwidth / (ms * 1e-3)
        results.append((config, ms, err, ok))
        log(f"bwd {config}: {ms * 1e3:7.1f} us  {100 * floor:4.0f}% of floor  err {err:.1e} "
            f"{'ok' if ok else 'FAIL'}  (compile {compile_s:.1f} s)")
    return results


def op_overhead() -> None:
    """The forward through ioaware::selective_scan (checks, dispatch, autotuner, launch)
    timed as-is and as a CUDA graph replay: the difference is host time per call."""
    from ioaware.codegen.scan import op as scan_ops

    u, delta, A, B, C, D, z, delta_bias, _ = inputs(3)

    def forward():
        return scan_ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, True)

    forward()  # compile and autotune outside the timing and the capture
    torch.cuda.synchronize()
    as_is = do_bench(forward, warmup=25, rep=100, return_mode="median")
    start = time.perf_counter()
    for _ in range(200):
        forward()
    host = (time.perf_counter() - start) / 200  # enqueue rate, GPU still running
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    replay = do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    log(f"op: {as_is * 1e3:.1f} us per call as-is, {replay * 1e3:.1f} us as a CUDA graph "
        f"replay; host loop {host * 1e6:.1f} us per call")


def parse_config(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"config {text!r}: expected BLOCK_D,BLOCK_L,warps,prefetch")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fwd", type=parse_config, nargs="*")
    parser.add_argument("--bwd", type=parse_config, nargs="*")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--compiled-len", type=int, default=0,
                        help="also time torch.compile(associative_scan) alone at this L")
    parser.add_argument("--compile-timeout", type=float, default=150)
    options = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    log(f"{time.strftime('%Y-%m-%d %H:%M')} {props.name}, {props.multi_processor_count} SMs; "
        f"torch {torch.__version__}, triton {triton.__version__}, python "
        f"{platform.python_version()}")
    bandwidth = copy_bandwidth()
    clock = sm_clock_hz()
    p = PROBLEM
    elements = p.batch * p.channels * p.seqlen * p.d_state
    mufu_s = elements / (16 * props.multi_processor_count * clock)
    log(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; fwd memory floor "
        f"{p.fwd_bytes() / bandwidth * 1e6:.1f} us, fwd+bwd "
        f"{p.fwd_bwd_bytes() / bandwidth * 1e6:.1f} us; MUFU floor (one exp2 per state "
        f"element at {clock / 1e9:.2f} GHz) {mufu_s * 1e6:.1f} us per pass")

    tuned = [(*c, scan_fwd.PREFETCH_CHUNKS) for c in scan_fwd.tile_configs(SPEC)]
    fwd = sweep_forward(options.fwd if options.fwd is not None else
                        list(dict.fromkeys(FWD_SWEEP + tuned)), bandwidth)
    tuned = [(*c, scan_fwd.PREFETCH_CHUNKS) for c in scan_bwd.backward_configs(SPEC)]
    bwd = sweep_backward(options.bwd if options.bwd is not None else
                         list(dict.fromkeys(BWD_SWEEP + tuned)), bandwidth)

    log("\nbest (ok only):")
    for name, results in (("fwd", fwd), ("bwd", bwd)):
        good = sorted((r for r in results if r[3]), key=lambda r: r[1])[:5]
        log(f"  {name}: " + ", ".join(f"{c} {ms * 1e3:.1f} us" for c, ms, _, _ in good))

    op_overhead()
    if options.compiled_len:
        from ioaware.bench.scan import _measure_isolated, _row_line

        short = ScanProblem(seqlen=options.compiled_len)
        start = time.time()
        row = _measure_isolated(f"torch.compile(associative_scan) at L={short.seqlen}", short,
                                short.seqlen, options.compile_timeout, 25, 100, bandwidth)
        log(f"[compiled] {_row_line(row)} ({time.time() - start:.0f} s)")
    if not options.skip_bench:
        from ioaware.bench.scan import bench_scan, render_scan_bench

        rows = bench_scan(compile_timeout_s=options.compile_timeout,
                          progress=lambda m: log(f"[bench] {m}"))
        title = (f"selective scan on {props.name}: B=4 D=1536 L=2048 N=16 bf16, silu(z) "
                 f"gate; torch {torch.__version__}, triton {triton.__version__}")
        print(render_scan_bench(rows, title), flush=True)
    return 0 if all(r[3] for r in fwd + bwd) else 1


if __name__ == "__main__":
    sys.exit(main())
