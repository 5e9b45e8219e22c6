"""Mamba-2's SSD side by side on this GPU: ioaware's chunked kernels against transformers'
`mamba2_chunk_scan` (the PyTorch `torch_forward` spelling every Mamba-2 mixer runs without
mamba_ssm), eager and under torch.compile, against mamba_ssm's fused kernels where that
package is installed, and against the plain recurrent loop.

ioaware's backward runs three times: sequential over chunks with dB, dC summed over a
group's heads from per-head partials (the default), the same by atomic adds in the
kernel (config.ssd_bc_atomic), and split parallel over chunks with per-head partials
(config.ssd_backward = "chunked").

Every variant computes the same map (dt = softplus(dt + dt_bias), D skip, B and C shared
by a group of heads, chunks of `torch_chunk` for transformers' spelling as its configs
use, the chunk the cost model picks for ioaware). Each is checked against the fp32 torch
reference (codegen/ssd/reference.py: y and the gradients of x, dt, A, B, C, D, dt_bias),
then timed with `triton.testing.do_bench` (median), forward and forward+backward, and
reported as a fraction of the floor:

    floor = max(tensor-core FLOPs / peak bf16 rate, compulsory bytes / copy bandwidth)

with ioaware's kernels' tensor FLOPs (codegen/ssd/tiles.ssd_step_flops at its chunk) and
the bytes every input read and every output written once. torch.compile runs in a child
process stopped after compile_timeout_s (its compile of the chunked einsum chain can be
slow); the plain loop is timed at a short L and scaled linearly (it is linear in L).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ioaware.bench.common import (
    DTYPES,
    TOLERANCE,
    check_dtype,
    check_positive,
    relative_error,
    require_cuda,
    short_error,
)
from ioaware.bench.scan import ScanBenchRow, _row_line, render_scan_bench

_DEVICE = "cuda"


@dataclasses.dataclass(frozen=True)
class SSDProblem:
    """x [B, L, H, P], dt [B, L, H], B/C [B, L, G, N] in dtype; A, D, dt_bias [H] fp32."""

    batch: int = 4
    heads: int = 64
    head_dim: int = 64
    d_state: int = 128
    groups: int = 1
    seqlen: int = 4096
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        check_positive(self, ("batch", "heads", "head_dim", "d_state", "groups", "seqlen"))
        if self.heads % self.groups:
            raise ValueError(f"groups={self.groups} must divide heads={self.heads}")

    def bytes(self, backward: bool) -> int:
        """Forward: read x, dt, B, C, write y. Forward+backward: that, then read dy, x,
        dt, B, C again and write dx, ddt, dB, dC."""
        e = self.dtype.itemsize
        x = self.batch * self.seqlen * self.heads * self.head_dim * e
        bc = 2 * self.batch * self.seqlen * self.groups * self.d_state * e
        dt = self.batch * self.seqlen * self.heads * e
        fwd = 2 * x + bc + dt
        return fwd if not backward else fwd + (2 * x + bc + dt) + (x + bc + dt)

    def tensor_flops(self, chunk: int, backward: bool) -> int:
        from ioaware.codegen.ssd.tiles import choose_block_p, ssd_step_flops

        block_p = choose_block_p(self.head_dim)
        per_step = ssd_step_flops(chunk, self.head_dim, self.d_state, block_p, False)
        if backward:
            per_step += ssd_step_flops(chunk, self.head_dim, self.d_state, block_p, True)
        return self.batch * self.heads * self.seqlen * per_step


def _inputs(problem: SSDProblem, seqlen: int, seed: int = 0):
    g = torch.Generator(device=_DEVICE).manual_seed(seed)
    b, h, p, n, gr = problem.batch, problem.heads, problem.head_dim, problem.d_state, problem.groups

    def rand(*shape, dtype=problem.dtype, scale=1.0):
        return (torch.randn(*shape, generator=g, device=_DEVICE) * scale).to(dtype)

    x = rand(b, seqlen, h, p)
    dt = rand(b, seqlen, h, scale=0.5)
    A = -torch.linspace(1.0, 16.0, h, device=_DEVICE)  # as Mamba-2's init: -(1 .. H)
    B, C = rand(b, seqlen, gr, n, scale=n ** -0.5), rand(b, seqlen, gr, n, scale=n ** -0.5)
    D = torch.ones(h, device=_DEVICE)
    dt_bias = rand(h, dtype=torch.float32, scale=0.5) - 3.0  # softplus ≈ 0.05: long memory
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
    dy = rand(b, seqlen, h, p)
    return leaves, dy


def _ioaware() -> Callable:
    from ioaware.codegen.ssd import op

    def run(x, dt, A, B, C, D, dt_bias):
        return op.ssd(x, dt, A, B, C, D, dt_bias, dt_softplus=True)[0]
    return run


def _torch_forward(chunk: int, compiled: bool) -> Callable:
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    def run(x, dt, A, B, C, D, dt_bias):
        return mamba2_chunk_scan(x, dt, A, B, C, chunk_size=chunk, D=D, dt_bias=dt_bias,
                                 dt_softplus=True)
    return torch.compile(run) if compiled else run


def _mamba_ssm(chunk: int) -> Callable:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def run(x, dt, A, B, C, D, dt_bias):
        return mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias,
                                         dt_softplus=True)
    return run


def _plain_loop() -> Callable:
    from ioaware.codegen.ssd import reference

    def run(x, dt, A, B, C, D, dt_bias):
        return reference.ssd_recurrent(x, dt, A, B, C, D, dt_bias, True)[0]
    return run


def _reference(leaves, dy) -> list[torch.Tensor]:
    from ioaware.codegen.ssd import reference

    ref = [t.detach().float().requires_grad_() for t in leaves]
    y, _ = reference.ssd_chunked(*ref, dt_softplus=True, chunk=64)
    return [y.detach(), *torch.autograd.grad(y, ref, dy.float())]


def _run(fn, leaves, dy, backward=True):
    for t in leaves:
        t.grad = None
    y = fn(*leaves)
    if not backward:
        return [y.detach()]
    y.backward(dy.to(y.dtype))
    return [y.detach(), *(t.grad for t in leaves)]


def _measure(row: ScanBenchRow, fn: Callable, problem: SSDProblem, checked, floors,
             warmup_ms: float, rep_ms: float) -> None:
    from triton.testing import do_bench

    scale = problem.seqlen / row.seqlen
    if scale != 1:
        row.note = f"timed at L={row.seqlen}, scaled by {scale:g}"
    try:
        leaves, dy, want = checked
        row.rel_err = relative_error(_run(fn, leaves, dy), want)
        row.ok = row.rel_err <= TOLERANCE[problem.dtype]

        def forward():
            with torch.no_grad():
                fn(*leaves)

        def forward_backward():
            y = fn(*leaves)
            y.backward(dy.to(y.dtype))

        row.fwd_ms = scale * do_bench(forward, warmup=warmup_ms, rep=rep_ms,
                                      return_mode="median")
        row.fwd_bwd_ms = scale * do_bench(forward_backward, warmup=warmup_ms, rep=rep_ms,
                                          grad_to_none=leaves, return_mode="median")
        row.fwd_floor = floors[0] / (row.fwd_ms * 1e-3)
        row.fwd_bwd_floor = floors[1] / (row.fwd_bwd_ms * 1e-3)
    except Exception as error:  # noqa: BLE001 - a failing variant is a row with its reason
        row.note = "; ".join(filter(None, [row.note, f"skipped: {short_error(error)}"]))
        torch.cuda.empty_cache()


def _child(conn, problem, seqlen, torch_chunk, floors, warmup_ms, rep_ms) -> None:
    row = ScanBenchRow(variant="torch.compile(torch_forward)", seqlen=seqlen)
    leaves, dy = _inputs(problem, seqlen)
    _measure(row, _torch_forward(torch_chunk, True), problem,
             (leaves, dy, _reference(leaves, dy)), floors, warmup_ms, rep_ms)
    conn.send(row)
    conn.close()


def _compiled_isolated(problem, torch_chunk, floors, timeout_s, warmup_ms, rep_ms):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, daemon=True, args=(
        send, problem, problem.seqlen, torch_chunk, floors, warmup_ms, rep_ms))
    child.start()
    send.close()
    row = None
    if receive.poll(timeout_s):
        try:
            row = receive.recv()
        except EOFError:
            row = None
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    if row is None:
        row = ScanBenchRow(variant="torch.compile(torch_forward)", seqlen=problem.seqlen)
        row.note = (f"skipped: no result within {timeout_s:g} s (compile, check and timing "
                    f"in a child process; exit code {child.exitcode})")
    return row


def bench_ssd(batch: int = 4, heads: int = 64, head_dim: int = 64, d_state: int = 128,
              groups: int = 1, seqlen: int = 4096, dtype: str = "bf16", *,
              torch_chunk: int = 256, loop_len: int = 128, skip_slow: bool = False,
              compile_timeout_s: float = 150, warmup_ms: float = 25, rep_ms: float = 100,
              progress: Callable[[str], None] = lambda message: None
              ) -> tuple[list[ScanBenchRow], dict]:
    """Check then time every variant; returns the rows and what the floors were made of
    (chunk, tensor FLOPs, bytes, the floors in µs)."""
    check_dtype(dtype)
    require_cuda()
    from ioaware.codegen.ssd.tiles import choose_chunk
    from ioaware.hardware import get_profile

    problem = SSDProblem(batch, heads, head_dim, d_state, groups, seqlen, DTYPES[dtype])
    profile = get_profile(None)
    chunk = choose_chunk(profile, head_dim, d_state, problem.dtype.itemsize, heads // groups)
    peak, bandwidth = profile.peak_flops_for(problem.dtype), profile.bandwidth
    floors = tuple(max(problem.tensor_flops(chunk, bwd) / peak, problem.bytes(bwd) / bandwidth)
                   for bwd in (False, True))
    info = {"chunk": chunk, "peak_flops": peak, "bandwidth": bandwidth,
            "floor_fwd_us": floors[0] * 1e6, "floor_fwd_bwd_us": floors[1] * 1e6,
            "tensor_flops_fwd": problem.tensor_flops(chunk, False),
            "bytes_fwd": problem.bytes(False)}
    leaves, dy = _inputs(problem, seqlen)
    checked = (leaves, dy, _reference(leaves, dy))
    rows = []
    from ioaware.config import config

    for name, fn, atomic, split in (
            ("ioaware ssd", _ioaware(), False, "sequential"),
            ("ioaware ssd, dB/dC by atomic adds", _ioaware(), True, "sequential"),
            ("ioaware ssd, chunked backward", _ioaware(), False, "chunked"),
            (f"torch_forward eager (chunk {torch_chunk})", _torch_forward(torch_chunk, False),
             False, "sequential")):
        progress(name)
        row = ScanBenchRow(variant=name, seqlen=seqlen)
        saved = config.ssd_bc_atomic, config.ssd_backward  # read by the backward
        config.ssd_bc_atomic, config.ssd_backward = atomic, split
        try:
            _measure(row, fn, problem, checked, floors, warmup_ms, rep_ms)
        finally:
            config.ssd_bc_atomic, config.ssd_backward = saved
        rows.append(row)
        progress(f"  {_row_line(row)}")
    progress(f"mamba_ssm (chunk {torch_chunk})")
    row = ScanBenchRow(variant=f"mamba_ssm mamba_chunk_scan_combined (chunk {torch_chunk})",
                       seqlen=seqlen)
    try:
        fn = _mamba_ssm(torch_chunk)
    except ImportError as error:
        row.note = f"skipped: {short_error(error)}"
    else:
        _measure(row, fn, problem, checked, floors, warmup_ms, rep_ms)
    rows.append(row)
    progress(f"  {_row_line(row)}")
    del checked, leaves, dy
    torch.cuda.empty_cache()
    if compile_timeout_s > 0:  # 0: no torch.compile row
        progress("torch.compile(torch_forward)")
        rows.append(_compiled_isolated(problem, torch_chunk, floors, compile_timeout_s,
                                       warmup_ms, rep_ms))
        progress(f"  {_row_line(rows[-1])}")
    if not skip_slow:
        short = min(seqlen, loop_len)
        progress("plain recurrent loop")
        leaves, dy = _inputs(problem, short)
        row = ScanBenchRow(variant="plain recurrent loop", seqlen=short)
        _measure(row, _plain_loop(), problem, (leaves, dy, _reference(leaves, dy)), floors,
                 warmup_ms, rep_ms)
        rows.append(row)
        progress(f"  {_row_line(row)}")
    return rows, info


def render_ssd_bench(rows: list[ScanBenchRow], info: dict, title: str) -> str:
    floor = (f"floor (chunk {info['chunk']}): fwd {info['floor_fwd_us']:.0f} µs, fwd+bwd "
             f"{info['floor_fwd_bwd_us']:.0f} µs = max(tensor FLOPs / "
             f"{info['peak_flops'] / 1e12:.0f} TFLOP/s, bytes / "
             f"{info['bandwidth'] / 1e12:.2f} TB/s)")
    return render_scan_bench(rows, title) + floor + "\n"


__all__ = ["SSDProblem", "bench_ssd", "render_ssd_bench"]
