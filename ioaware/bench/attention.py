"""Attention side by side on this GPU: ioaware against SDPA's backends, eager, Inductor, Flex.

Every variant computes softmax(q kᵀ / sqrt(d)) v on the same inputs. Each is first checked
against SDPA's math backend run in fp32 (output and the three gradients), then timed with
`triton.testing.do_bench` (median) for the forward alone and for forward+backward, and its
peak memory above the inputs is recorded. The CLI (`ioaware bench attention`) prints the rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

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

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Baseline families `--vs` may name; ioaware's own variants always run.
BASELINES = ("sdpa", "eager", "compile", "flex")
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
# The row every other row's speed is compared with.
REFERENCE_VARIANT = "sdpa[FLASH_ATTENTION]"


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
    """Sizes of one benchmark: q, k, v are [batch, heads, seqlen, head_dim] in dtype."""

    batch: int = 4
    heads: int = 16
    seqlen: int = 4096
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16
    causal: bool = False

    def __post_init__(self) -> None:
        check_positive(self, ("batch", "heads", "seqlen", "head_dim"))

    @property
    def fwd_flops(self) -> float:
        # Two matmuls of 2·N·N·d each per (batch, head); causal does half of them.
        flops = 4 * self.batch * self.heads * self.seqlen**2 * self.head_dim
        return flops / 2 if self.causal else flops

    @property
    def fwd_bwd_flops(self) -> float:
        # Backward is 2.5x the forward (five matmuls against two), so 3.5x in all.
        return 3.5 * self.fwd_flops


@dataclasses.dataclass
class BenchRow:
    """One variant on one problem. Times in ms, throughput in TFLOP/s, memory in bytes.

    ok: None when the check did not run. speedup_*: REFERENCE_VARIANT's time over this one's
    (above 1 is faster than SDPA's flash backend). note: why a number is missing.
    """

    variant: str
    causal: bool
    rel_err: float | None = None
    ok: bool | None = None
    fwd_ms: float | None = None
    fwd_tflops: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_bwd_tflops: float | None = None
    fwd_peak_bytes: int | None = None
    fwd_bwd_peak_bytes: int | None = None
    speedup_fwd: float | None = None
    speedup_fwd_bwd: float | None = None
    note: str = ""


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool) -> torch.Tensor:
    """Attention the way it is written in model code: scores, mask, fp32 softmax, PV."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def _sdpa_variant(backend_name: str, causal: bool) -> Attention:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # The backward runs the kernel the forward chose, so only the forward needs the pin.
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return attention


def _flex_variant(problem: AttentionProblem) -> Attention:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention)
    block_mask = None
    if problem.causal:
        block_mask = create_block_mask(
            lambda b, h, q_idx, kv_idx: q_idx >= kv_idx,
            None, None, problem.seqlen, problem.seqlen, device="cuda",
        )
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask)


def _ioaware_kernel_variant(causal: bool) -> Attention:
    from ioaware.codegen.attention.op import flash_attention

    return lambda q, k, v: flash_attention(q, k, v, causal=causal)


def _ioaware_compile_variant(causal: bool, choose: bool = False) -> Attention:
    """ioaware.compile of the eager spelling, compiled (at its first call) with the
    implementations it may choose among: the generated kernels alone, so the row
    measures them through the compiler; or, with `choose`, every one
    (`codegen/attention/choice.py`), for the measured choice's row."""
    import ioaware
    from ioaware.codegen.attention.choice import GENERATED, IMPLEMENTATIONS
    from ioaware.config import config

    implementations = IMPLEMENTATIONS if choose else (GENERATED,)
    compiled = ioaware.compile(lambda q, k, v: eager_attention(q, k, v, causal))

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        old = config.implementations
        config.implementations = implementations
        try:
            return compiled(q, k, v)
        finally:
            config.implementations = old
    return attention


def baselines(vs: Iterable[str]) -> set[str]:
    """The baselines `vs` names, as a set; ValueError for a name not in BASELINES."""
    vs = set(vs)
    unknown = vs - set(BASELINES)
    if unknown:
        raise ValueError(f"vs={sorted(unknown)} not understood; expected some of {BASELINES}")
    return vs


def variants(problem: AttentionProblem, vs: Iterable[str] = BASELINES,
             skip_slow: bool = False) -> list[tuple[str, Callable[[], Attention]]]:
    """(name, builder) for every variant to run; builders may raise, which skips the row."""
    vs = baselines(vs)
    causal = problem.causal
    out: list[tuple[str, Callable[[], Attention]]] = [
        ("ioaware kernel", lambda: _ioaware_kernel_variant(causal)),
        ("ioaware.compile(eager)", lambda: _ioaware_compile_variant(causal)),
        # the compiler's measured choice among the kernels and SDPA's backends
        ("ioaware.compile(eager) choice",
         lambda: _ioaware_compile_variant(causal, choose=True)),
    ]
    if "sdpa" in vs:
        for name in SDPA_BACKENDS:
            if not (skip_slow and name == "MATH"):
                out.append((f"sdpa[{name}]", lambda name=name: _sdpa_variant(name, causal)))
    if "eager" in vs and not skip_slow:
        out.append(("eager", lambda: lambda q, k, v: eager_attention(q, k, v, causal)))
    if "compile" in vs:
        out.append((
            "torch.compile(eager)",
            lambda: torch.compile(lambda q, k, v: eager_attention(q, k, v, causal)),
        ))
    if "flex" in vs:
        out.append(("flex_attention", lambda: _flex_variant(problem)))
    return out


def _inputs(problem: AttentionProblem) -> tuple[torch.Tensor, ...]:
    """q, k, v (leaves that need grad) and the output gradient, from a fixed seed."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (problem.batch, problem.heads, problem.seqlen, problem.head_dim)

    def randn() -> torch.Tensor:
        return torch.randn(shape, device="cuda", dtype=problem.dtype, generator=generator)

    q, k, v = (randn().requires_grad_() for _ in range(3))
    return q, k, v, randn()


def _forward_backward(attention: Attention, q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor, dout: torch.Tensor,
                      *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv, then the gradient of each of `leaves`: tensors the variant reads
    besides q, k, v, such as a learned bias table)."""
    for t in (q, k, v, *leaves):
        t.grad = None
    out = attention(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad, *(t.grad for t in leaves)


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory one call of fn allocates above what was live before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_problem(problem: AttentionProblem, vs: Iterable[str] = BASELINES, *,
                  skip_slow: bool = False, warmup_ms: float = 25, rep_ms: float = 100,
                  progress: Callable[[str], None] = lambda message: None) -> list[BenchRow]:
    """Check then time every variant on one problem; a variant that fails gets a note."""
    require_cuda()
    q, k, v, dout = _inputs(problem)
    # The reference: SDPA's math backend on fp32 copies of the same inputs.
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    want = _forward_backward(_sdpa_variant("MATH", problem.causal), q32, k32, v32, dout.float())
    del q32, k32, v32
    tolerance = TOLERANCE[problem.dtype]

    rows: list[BenchRow] = []
    for name, build in variants(problem, vs, skip_slow):
        progress(f"{name} (causal={problem.causal})")
        row = BenchRow(variant=name, causal=problem.causal)
        rows.append(row)
        attention = _check(row, build, (q, k, v, dout), want, tolerance, progress)
        if attention is not None:
            _time(row, attention, problem, (q, k, v, dout), warmup_ms, rep_ms, progress)
    _attach_speedups(rows)
    return rows


def _check(row: BenchRow, build: Callable[[], Attention], tensors: tuple[torch.Tensor, ...],
           want: tuple[torch.Tensor, ...], tolerance: float,
           progress: Callable[[str], None],
           leaves: tuple[torch.Tensor, ...] = ()) -> Attention | None:
    """Build the variant and fill the row's check against `want` (out, dq, dk, dv and the
    gradients of `leaves`); None when it fails (the failure becomes the row's note). The
    check also warms up: compilation and autotuning happen here, not in timing."""
    try:
        attention = build()
        row.rel_err = relative_error(_forward_backward(attention, *tensors, *leaves), want)
        row.ok = row.rel_err <= tolerance
    except Exception as error:  # noqa: BLE001 - any failure skips the row, saying why
        row.note = f"skipped: {short_error(error)}"
        progress(f"  {row.note}")
        torch.cuda.empty_cache()
        return None
    return attention


def _time(row: BenchRow, attention: Attention, problem: AttentionProblem,
          tensors: tuple[torch.Tensor, ...], warmup_ms: float, rep_ms: float,
          progress: Callable[[str], None], leaves: tuple[torch.Tensor, ...] = ()) -> None:
    """Fill the row's times, throughputs and peak memory; a failure becomes its note.
    leaves: tensors besides q, k, v whose gradients the backward computes (reset to None
    between repetitions, as q's, k's and v's are)."""
    from triton.testing import do_bench

    q, k, v, dout = tensors

    def forward() -> None:
        with torch.no_grad():
            attention(q, k, v)

    def forward_backward() -> None:
        attention(q, k, v).backward(dout)

    try:
        row.fwd_peak_bytes = _peak_bytes(forward)
        row.fwd_ms = do_bench(forward, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        for t in (q, k, v, *leaves):
            t.grad = None  # so every variant's peak includes allocating the gradients
        row.fwd_bwd_peak_bytes = _peak_bytes(forward_backward)
        row.fwd_bwd_ms = do_bench(forward_backward, warmup=warmup_ms, rep=rep_ms,
                                  grad_to_none=[q, k, v, *leaves], return_mode="median")
    except Exception as error:  # noqa: BLE001 - e.g. out of memory at this size
        row.note = f"timing failed: {short_error(error)}"
        progress(f"  {row.note}")
        torch.cuda.empty_cache()
    if row.fwd_ms:
        row.fwd_tflops = problem.fwd_flops / (row.fwd_ms * 1e-3) / 1e12
    if row.fwd_bwd_ms:
        row.fwd_bwd_tflops = problem.fwd_bwd_flops / (row.fwd_bwd_ms * 1e-3) / 1e12


def _attach_speedups(rows: list[BenchRow], reference_variant: str = REFERENCE_VARIANT) -> None:
    """speedup_*: the reference row's time over each row's (above 1: faster)."""
    reference = next((r for r in rows if r.variant == reference_variant), None)
    if reference is None:
        return
    for row in rows:
        if reference.fwd_ms and row.fwd_ms:
            row.speedup_fwd = reference.fwd_ms / row.fwd_ms
        if reference.fwd_bwd_ms and row.fwd_bwd_ms:
            row.speedup_fwd_bwd = reference.fwd_bwd_ms / row.fwd_bwd_ms


def bench_attention(batch: int = 4, heads: int = 16, seqlen: int = 4096, head_dim: int = 128,
                    dtype: str = "bf16", causal: Iterable[bool] = (False, True),
                    vs: Iterable[str] = BASELINES, *, skip_slow: bool = False,
                    warmup_ms: float = 25, rep_ms: float = 100,
                    progress: Callable[[str], None] = lambda message: None) -> list[BenchRow]:
    """Rows for every variant, for each causal setting asked for, in one process."""
    check_dtype(dtype)
    require_cuda()
    rows: list[BenchRow] = []
    for is_causal in causal:
        problem = AttentionProblem(batch, heads, seqlen, head_dim, DTYPES[dtype], is_causal)
        rows += bench_problem(problem, vs, skip_slow=skip_slow, warmup_ms=warmup_ms,
                              rep_ms=rep_ms, progress=progress)
    return rows
