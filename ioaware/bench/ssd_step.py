"""Mamba-2's decode step (L = 1) side by side on this GPU, per token and per layer:
ioaware's in-place step kernel, called directly and reached by `ioaware.compile` of
transformers' `mamba2_selective_state_update` (the spelling every Mamba-2 mixer runs
without mamba_ssm, as its decode path calls it), against that spelling eager and under
torch.compile, and mamba_ssm's `selective_state_update` where it is installed.

Each variant updates its own copy of the same state and is checked against the fp32
torch step (codegen/ssd/reference.py: y and the new state), then timed with
`triton.testing.do_bench` (median of calls back to back: at these sizes a call's time is
mostly its launches). The floor is reading and writing the state once:

    floor = 2·Bt·H·P·N·state_itemsize / copy bandwidth     (x, B, C, dt, y are O(Bt·H·(P + N)))

e.g. Bt = 4, H = 48, P = 64, N = 128, fp32 state: 12.6 MB, 4.2 µs at 3.0 TB/s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ioaware.bench.common import DTYPES, check_dtype, relative_error, require_cuda, short_error
from ioaware.bench.scan import ScanBenchRow

TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-4}
_DEVICE = "cuda"


@dataclasses.dataclass(frozen=True)
class StepProblem:
    """state [Bt, H, P, N] in state_dtype; x [Bt, H, P], dt [Bt, H], B/C [Bt, G, N] in
    dtype; A, D, dt_bias [H] fp32."""

    batch: int = 4
    heads: int = 48
    head_dim: int = 64
    d_state: int = 128
    groups: int = 1
    dtype: torch.dtype = torch.bfloat16
    state_dtype: torch.dtype = torch.float32

    def bytes(self) -> int:
        """The compulsory traffic: the state read and written, x, B, C, dt read, y written."""
        state = self.batch * self.heads * self.head_dim * self.d_state * self.state_dtype.itemsize
        e = self.dtype.itemsize
        small = (2 * self.batch * self.heads * self.head_dim + self.batch * self.heads
                 + 2 * self.batch * self.groups * self.d_state) * e
        return 2 * state + small


def _inputs(problem: StepProblem, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device=_DEVICE).manual_seed(seed)
    b, h, p, n, gr = (problem.batch, problem.heads, problem.head_dim, problem.d_state,
                      problem.groups)

    def rand(*shape, dtype=problem.dtype, scale=1.0):
        return (torch.randn(*shape, generator=g, device=_DEVICE) * scale).to(dtype)

    state = rand(b, h, p, n, dtype=problem.state_dtype)
    x, dt = rand(b, h, p), rand(b, h, scale=0.5)
    A = -torch.linspace(1.0, 16.0, h, device=_DEVICE)
    B, C = rand(b, gr, n, scale=n ** -0.5), rand(b, gr, n, scale=n ** -0.5)
    D = torch.ones(h, device=_DEVICE)
    dt_bias = rand(h, dtype=torch.float32, scale=0.5) - 3.0
    return [state, x, dt, A, B, C, D, dt_bias]


def transformers_step(state, x, dt, A, B, C, D, dt_bias):
    """transformers' step as Mamba2Mixer's decode path calls it (per-head values broadcast
    along head_dim and d_state); updates `state` in place, returns y."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_selective_state_update

    p, n = x.shape[2], B.shape[2]
    return mamba2_selective_state_update(
        state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B, C,
        D[:, None].expand(-1, p), dt_bias=dt_bias[:, None].expand(-1, p), dt_softplus=True)


def _ioaware_op(state, x, dt, A, B, C, D, dt_bias):
    from ioaware.codegen.ssd import step_op

    return step_op.ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus=True)


def _mamba_ssm() -> Callable:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    def run(state, x, dt, A, B, C, D, dt_bias):
        p, n = x.shape[2], B.shape[2]
        return selective_state_update(
            state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B,
            C, D[:, None].expand(-1, p), dt_bias=dt_bias[:, None].expand(-1, p),
            dt_softplus=True)
    return run


def _variants() -> list[tuple[str, Callable[[], Callable]]]:
    import ioaware

    return [
        ("ioaware ssd_step (op)", lambda: _ioaware_op),
        ("ioaware.compile(transformers step)", lambda: ioaware.compile(transformers_step)),
        ("transformers step eager", lambda: transformers_step),
        ("torch.compile(transformers step)", lambda: torch.compile(transformers_step)),
        ("mamba_ssm selective_state_update", _mamba_ssm),
    ]


def _measure(row: ScanBenchRow, fn: Callable, problem: StepProblem, floor_s: float,
             warmup_ms: float, rep_ms: float) -> None:
    from triton.testing import do_bench

    from ioaware.codegen.ssd import reference

    try:
        args = _inputs(problem)
        y_ref, new_ref = reference.ssd_step(*args, dt_softplus=True)
        with torch.no_grad():
            y = fn(*args)
        row.rel_err = relative_error([y, args[0]], [y_ref, new_ref])
        row.ok = row.rel_err <= max(TOLERANCE[problem.dtype], TOLERANCE[problem.state_dtype])

        def step():
            with torch.no_grad():
                fn(*args)  # the state decays and takes new input: values stay bounded

        row.fwd_ms = do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        row.fwd_floor = floor_s / (row.fwd_ms * 1e-3)
    except Exception as error:  # noqa: BLE001 - a failing variant is a row with its reason
        row.note = f"skipped: {short_error(error)}"


def bench_ssd_step(batch: int = 4, heads: int = 48, head_dim: int = 64, d_state: int = 128,
                   groups: int = 1, dtype: str = "bf16", *, warmup_ms: float = 25,
                   rep_ms: float = 100, progress: Callable[[str], None] = lambda m: None
                   ) -> tuple[list[ScanBenchRow], dict]:
    """Check then time every variant of one decode step; the rows (fwd_ms: µs per step
    per layer, in ms) and the floor. Also records whether ioaware.compile rewrote the
    transformers spelling (info["rewritten"])."""
    check_dtype(dtype)
    require_cuda()
    from ioaware import counters
    from ioaware.hardware import get_profile

    problem = StepProblem(batch, heads, head_dim, d_state, groups, DTYPES[dtype])
    floor_s = problem.bytes() / get_profile(None).bandwidth
    before = counters["ssd_decode"]
    rows = []
    for name, make in _variants():
        progress(name)
        row = ScanBenchRow(variant=name, seqlen=1)
        try:
            fn = make()
        except ImportError as error:
            row.note = f"skipped: {short_error(error)}"
        else:
            _measure(row, fn, problem, floor_s, warmup_ms, rep_ms)
        rows.append(row)
    info = {"floor_us": floor_s * 1e6, "bytes": problem.bytes(),
            "rewritten": counters["ssd_decode"] - before}
    return rows, info


__all__ = ["StepProblem", "bench_ssd_step", "transformers_step"]
