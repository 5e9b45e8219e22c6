"""The selective scan side by side on this GPU: ioaware's fused kernel against eager
PyTorch and `associative_scan` under torch.compile.

Every variant computes Mamba's selective scan (softplus(delta + delta_bias), D skip,
silu(z) gate, B and C shared by a group of channels) on the same inputs. Each is first
checked against the fp32 reference (codegen/scan/reference.py: y and every gradient),
then timed with `triton.testing.do_bench` (median), forward alone and forward+backward,
and reported as a fraction of its memory floor: the bytes the op must move at least
(every input read once, every output written once) over the device's copy bandwidth.

The eager time loop launches a handful of kernels per step; at a full L it takes
seconds, so it is timed at a shorter L (`eager_len`) and scaled linearly in L (the loop
is exactly linear in L), which the table says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ioaware.bench.common import (
    DTYPES,
    TOLERANCE,
    check_dtype,
    check_positive,
    relative_error,
    require_cuda,
    short_error,
)

ScanFn = Callable[..., torch.Tensor]
_DEVICE = "cuda"  # inputs live here; a CPU smoke test may point it elsewhere


@dataclasses.dataclass(frozen=True)
class ScanProblem:
    """u, delta, z: [batch, channels, seqlen] in dtype; A: [channels, d_state] fp32;
    B, C: [batch, groups, seqlen, d_state] in dtype; D, delta_bias: [channels] fp32."""

    batch: int = 4
    channels: int = 1536
    seqlen: int = 2048
    d_state: int = 16
    groups: int = 1
    dtype: torch.dtype = torch.bfloat16
    gate: bool = True  # z present

    def __post_init__(self) -> None:
        check_positive(self, ("batch", "channels", "seqlen", "d_state", "groups"))
        if self.channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide channels={self.channels}")

    def fwd_bytes(self) -> int:
        """Read u, delta (z), B, C, A, D, delta_bias; write y and h_last (fp32)."""
        e = self.dtype.itemsize
        bdl = self.batch * self.channels * self.seqlen
        bc = 2 * self.batch * self.groups * self.seqlen * self.d_state * e
        small = 4 * self.channels * (self.d_state + 2) + 4 * self.batch * self.channels * self.d_state
        return (3 + self.gate) * bdl * e + bc + small

    def fwd_bwd_bytes(self) -> int:
        """The forward, then read dy and the inputs again, write every gradient once."""
        e = self.dtype.itemsize
        bdl = self.batch * self.channels * self.seqlen
        bc = 2 * self.batch * self.groups * self.seqlen * self.d_state * e
        reads = (3 + self.gate) * bdl * e + bc  # dy, u, delta (z), B, C
        writes = (2 + self.gate) * bdl * e + bc  # du, ddelta (dz), dB, dC
        return self.fwd_bytes() + reads + writes


@dataclasses.dataclass
class ScanBenchRow:
    """One variant. Times in ms; floor_*: the memory floor's time over the measured one
    (1.0 is the floor). seqlen: the L actually timed (times are scaled to the problem's)."""

    variant: str
    seqlen: int
    rel_err: float | None = None
    ok: bool | None = None
    fwd_ms: float | None = None
    fwd_floor: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_bwd_floor: float | None = None
    note: str = ""


def eager_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    """The scan as model code writes it without a kernel: one step per iteration."""
    batch, channels, length = u.shape
    group_of = torch.arange(channels, device=u.device) // (channels // B.shape[1])
    dt = F.softplus(delta.float() + delta_bias[:, None])
    h = u.new_zeros(batch, channels, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(length):
        b_t, c_t = B[:, group_of, t].float(), C[:, group_of, t].float()
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t].float())[..., None] * b_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def _hop_variant() -> ScanFn:
    """associative_scan over the materialised (a, x) pairs, compiled by Inductor."""
    from torch._higher_order_ops.associative_scan import associative_scan

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    def scan(u, delta, A, B, C, D, z, delta_bias):
        channels = u.shape[1]
        cpg = channels // B.shape[1]
        dt = F.softplus(delta.float() + delta_bias[:, None])
        decay = torch.exp(dt[..., None] * A[:, None, :])  # [Bt, Dc, L, N]
        x = (dt * u.float())[..., None] * B.float().repeat_interleave(cpg, 1)
        _, h = associative_scan(combine, (decay, x), dim=2)
        y = (h * C.float().repeat_interleave(cpg, 1)).sum(-1) + D[:, None] * u.float()
        if z is not None:
            y = y * F.silu(z.float())
        return y.to(u.dtype)

    return torch.compile(scan, fullgraph=True)


def _ioaware_variant() -> ScanFn:
    from ioaware.codegen.scan.op import selective_scan

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                              delta_softplus=True)[0]

    return scan


def _inputs(problem: ScanProblem, seqlen: int) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Leaves (u, delta, A, B, C, D, z, delta_bias) needing grad, and dy; fixed seed."""
    g = torch.Generator(device=_DEVICE).manual_seed(0)
    bdl = (problem.batch, problem.channels, seqlen)
    bc = (problem.batch, problem.groups, seqlen, problem.d_state)

    def rand(shape, dtype=problem.dtype, scale=1.0, shift=0.0):
        t = torch.randn(shape, device=_DEVICE, generator=g) * scale + shift
        return t.to(dtype).requires_grad_()

    u, delta = rand(bdl), rand(bdl, scale=0.5, shift=-1.0)
    # Mamba's initialisation: A = -[1, 2, ..., N] per channel.
    A = (-torch.arange(1, problem.d_state + 1, device=_DEVICE, dtype=torch.float32)
         .repeat(problem.channels, 1)).requires_grad_()
    B, C = rand(bc), rand(bc)
    D = rand((problem.channels,), torch.float32)
    z = rand(bdl) if problem.gate else None
    delta_bias = rand((problem.channels,), torch.float32, scale=0.1)
    dy = torch.randn(bdl, device=_DEVICE, generator=g).to(problem.dtype)
    return [u, delta, A, B, C, D, z, delta_bias], dy


def _run(fn: ScanFn, leaves, dy, backward: bool = True) -> list[torch.Tensor]:
    """[y] or [y, every gradient]."""
    present = [t for t in leaves if t is not None]
    for t in present:
        t.grad = None
    if not backward:
        with torch.no_grad():
            return [fn(*leaves)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach(), *(t.grad for t in present)]


def _reference(leaves, dy) -> list[torch.Tensor]:
    from ioaware.codegen.scan import reference as scan_reference

    u, delta, A, B, C, D, z, delta_bias = (None if t is None else t.detach() for t in leaves)
    y, _ = scan_reference.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, None)
    grads = scan_reference.selective_scan_backward(dy, None, u, delta, A, B, C, D, z,
                                                   delta_bias, True, None)
    return [y.float(), *(g for g in grads[:8] if g is not None)]


def _time_row(row: ScanBenchRow, fn: ScanFn, leaves, dy, scale: float, problem: ScanProblem,
              bandwidth: float, warmup_ms: float, rep_ms: float, backward: bool) -> None:
    from triton.testing import do_bench

    present = [t for t in leaves if t is not None]

    def forward() -> None:
        with torch.no_grad():
            fn(*leaves)

    def forward_backward() -> None:
        fn(*leaves).backward(dy)

    row.fwd_ms = scale * do_bench(forward, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    row.fwd_floor = problem.fwd_bytes() / bandwidth / (row.fwd_ms * 1e-3)
    if backward:
        row.fwd_bwd_ms = scale * do_bench(forward_backward, warmup=warmup_ms, rep=rep_ms,
                                          grad_to_none=present, return_mode="median")
        row.fwd_bwd_floor = problem.fwd_bwd_bytes() / bandwidth / (row.fwd_bwd_ms * 1e-3)


def bench_scan(batch: int = 4, channels: int = 1536, seqlen: int = 2048, d_state: int = 16,
               groups: int = 1, dtype: str = "bf16", gate: bool = True, *,
               eager_len: int = 128, skip_slow: bool = False, warmup_ms: float = 25,
               rep_ms: float = 100, compile_timeout_s: float = 240,
               progress: Callable[[str], None] = lambda message: None) -> list[ScanBenchRow]:
    """Check then time every variant; a variant that fails gets a note instead.

    Each row is reported through `progress` as it finishes. The torch.compile baseline
    runs in a child process given compile_timeout_s seconds for compile, check and timing.
    """
    check_dtype(dtype)
    if eager_len < 1:
        raise ValueError(f"eager_len={eager_len} must be a positive integer")
    if not compile_timeout_s > 0:
        raise ValueError(f"compile_timeout_s={compile_timeout_s} must be positive (seconds)")
    require_cuda()
    from ioaware.hardware import get_profile

    problem = ScanProblem(batch, channels, seqlen, d_state, groups, DTYPES[dtype], gate)
    bandwidth = get_profile(None).bandwidth
    short = min(seqlen, eager_len)
    variants: list[tuple[str, Callable[[], ScanFn], int]] = [
        ("ioaware selective_scan", _ioaware_variant, seqlen),
        ("torch.compile(associative_scan)", _hop_variant, seqlen),
    ]
    if not skip_slow:
        variants.append(("eager time loop", lambda: eager_selective_scan, short))

    rows: list[ScanBenchRow] = []
    checked: dict[int, tuple] = {}
    for name, build, length in variants:
        progress(name)
        if build is _hop_variant:
            # Inductor's lowering of associative_scan can take minutes at a long L (or not
            # finish): it runs in a child process that is stopped at compile_timeout_s.
            row = _measure_isolated(name, problem, length, compile_timeout_s,
                                    warmup_ms, rep_ms, bandwidth)
        else:
            row = ScanBenchRow(variant=name, seqlen=length)
            if length not in checked:
                checked[length] = _checked_inputs(problem, length)
            _measure(row, build, problem, checked[length], warmup_ms, rep_ms, bandwidth)
        rows.append(row)
        progress(f"  {_row_line(row)}")
    return rows


def _checked_inputs(problem: ScanProblem, length: int) -> tuple:
    leaves, dy = _inputs(problem, length)
    return leaves, dy, _reference(leaves, dy)


def _measure(row: ScanBenchRow, build: Callable[[], ScanFn], problem: ScanProblem,
             checked: tuple, warmup_ms: float, rep_ms: float, bandwidth: float) -> None:
    """Check, then time, one variant into `row`; a failure becomes its note."""
    seqlen, length = problem.seqlen, row.seqlen
    if length != seqlen:
        row.note = f"timed at L={length}, scaled by {seqlen / length:g}"
    try:
        leaves, dy, want = checked
        fn = build()
        # The checks warm up too: compilation and autotuning happen here, not in timing.
        row.rel_err = relative_error(_run(fn, leaves, dy, backward=False), want[:1])
        backward = True
        try:
            row.rel_err = max(row.rel_err, relative_error(_run(fn, leaves, dy), want))
        except Exception as error:  # noqa: BLE001 - time the forward alone, say why
            backward = False
            row.note = "; ".join(filter(None, [row.note, f"no backward: {short_error(error)}"]))
        row.ok = row.rel_err <= TOLERANCE[problem.dtype]
        _time_row(row, fn, leaves, dy, seqlen / length, problem, bandwidth, warmup_ms,
                  rep_ms, backward)
    except Exception as error:  # noqa: BLE001 - any failure skips the row, saying why
        row.note = "; ".join(filter(None, [row.note, f"skipped: {short_error(error)}"]))
        torch.cuda.empty_cache()


def _isolated_child(conn, name: str, problem: ScanProblem, length: int, warmup_ms: float,
                    rep_ms: float, bandwidth: float) -> None:
    """Child process body: the same check and timing as in-process; the row goes back."""
    row = ScanBenchRow(variant=name, seqlen=length)
    _measure(row, _hop_variant, problem, _checked_inputs(problem, length), warmup_ms, rep_ms,
             bandwidth)
    conn.send(row)
    conn.close()


def _measure_isolated(name: str, problem: ScanProblem, length: int, timeout_s: float,
                      warmup_ms: float, rep_ms: float, bandwidth: float) -> ScanBenchRow:
    """`_measure` in a spawned process, stopped after timeout_s (a compile that does not
    finish is a result to report, not a reason for the whole bench to hang)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_isolated_child, daemon=True,
                            args=(send, name, problem, length, warmup_ms, rep_ms, bandwidth))
    child.start()
    send.close()
    row = None
    if receive.poll(timeout_s):
        try:
            row = receive.recv()
        except EOFError:  # the child died without a row (a crash in the compiler)
            row = None
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    if row is None:
        row = ScanBenchRow(variant=name, seqlen=length)
        row.note = (f"skipped: no result within {timeout_s:g} s (compile, check and timing "
                    f"in a child process; exit code {child.exitcode})")
    return row


def _check_text(row: ScanBenchRow) -> str:
    """The check column: the relative error and whether it is within TOLERANCE."""
    return "-" if row.ok is None else f"{row.rel_err:.1e} {'ok' if row.ok else 'FAIL'}"


def _row_line(row: ScanBenchRow) -> str:
    """One finished row as a line, printed before the table (which needs every row)."""
    def us(ms: float | None, floor: float | None) -> str:
        return "-" if ms is None else f"{ms * 1e3:.1f} µs ({100 * (floor or 0):.0f}% of floor)"

    line = (f"{row.variant}: check {_check_text(row)}, fwd {us(row.fwd_ms, row.fwd_floor)}, "
            f"fwd+bwd {us(row.fwd_bwd_ms, row.fwd_bwd_floor)}")
    return f"{line}; {row.note}" if row.note else line


def render_scan_bench(rows: list[ScanBenchRow], title: str) -> str:
    """The rows as a table (rich), with the notes below it."""
    from rich import box
    from rich.table import Table

    from ioaware.tables import render

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("variant", "L timed", "check", "fwd µs", "fwd % of floor", "fwd+bwd µs",
                   "fwd+bwd % of floor"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for r in rows:
        table.add_row(
            r.variant, str(r.seqlen), _check_text(r),
            cell(None if r.fwd_ms is None else r.fwd_ms * 1e3, ".1f"),
            cell(None if r.fwd_floor is None else 100 * r.fwd_floor, ".0f"),
            cell(None if r.fwd_bwd_ms is None else r.fwd_bwd_ms * 1e3, ".1f"),
            cell(None if r.fwd_bwd_floor is None else 100 * r.fwd_bwd_floor, ".0f"),
        )
    notes = [f"{r.variant}: {r.note}" for r in rows if r.note]
    return render([table, *notes], width=140)
