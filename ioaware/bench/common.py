"""What every benchmark on this GPU shares: the --dtype names, the refusal without a GPU,
and how a check and a failure are reported (relative error, one-line error)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Relative (Frobenius) error allowed against the fp32 reference, per input dtype: the
# rounding of the output and of each gradient to the dtype, with room for long sums
# (attention's rows, a scan's L). The decode and SSD-step benches keep tighter fp32 ones.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-3}


class BenchUnavailable(RuntimeError):
    """The benchmark cannot run here (no CUDA device)."""


def check_dtype(dtype: str) -> None:
    """ValueError unless `dtype` is one of the names in DTYPES."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} not understood; expected one of {sorted(DTYPES)}")


def check_positive(problem: object, names: Iterable[str]) -> None:
    """ValueError naming the first of `names` whose value on `problem` is below 1."""
    for name in names:
        if getattr(problem, name) < 1:
            raise ValueError(f"{name}={getattr(problem, name)} must be a positive integer")


def require_cuda() -> None:
    """BenchUnavailable unless a CUDA device is present: every variant times on one."""
    if not torch.cuda.is_available():
        raise BenchUnavailable("ioaware bench needs a CUDA GPU; torch.cuda.is_available() is False")


def relative_error(got: Iterable[torch.Tensor], want: Iterable[torch.Tensor]) -> float:
    """Largest ‖got − want‖ / ‖want‖ over the tensors (the output, then each gradient),
    in fp32."""
    return max(((g.float() - w.float()).norm() / w.float().norm().clamp_min(1e-30)).item()
               for g, w in zip(got, want))


def short_error(error: BaseException) -> str:
    """`Type: first line of the message` (at most 160 characters), for a row's note."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:160]}"
