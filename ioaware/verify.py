"""`verify=True`: run eager beside the compiled graph once per new input signature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

# ‖compiled − eager‖ / ‖eager‖ allowed per output dtype. The generated kernels
# accumulate in fp32 where eager rounds the N×N scores to the input dtype, so the two
# differ by a few units of the input dtype's precision, never more.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


class VerificationError(AssertionError):
    """The compiled graph disagreed with eager execution."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """‖actual − expected‖ / (‖expected‖ + floor·√n) over the finite elements.

    With floor = 0 this is the plain relative error in the Frobenius norm. A positive
    floor (an RMS magnitude per element below which `expected` counts as that small)
    keeps an expected value that is exactly zero by cancellation (the gradient w.r.t. q
    when a row sees one key) from turning rounding noise into a relative error of 1. NaN and ±inf must sit at
    the same places in both tensors; anything else there is an infinite error.
    """
    a, e = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(e)
    same_nonfinite = torch.equal(finite, torch.isfinite(a)) and torch.equal(
        torch.isnan(a), torch.isnan(e)) and torch.equal(a[torch.isinf(e)], e[torch.isinf(e)])
    if not same_nonfinite:
        return float("inf")
    diff = (a[finite] - e[finite]).norm()
    return float(diff / (e[finite].norm() + floor * float(finite.sum()) ** 0.5 + 1e-300))


def check_close(actual: Any, expected: Any, what: str = "output") -> None:
    """Raise VerificationError if any tensor leaf of `actual` differs from `expected`."""
    flat_a, flat_e = pytree.tree_leaves(actual), pytree.tree_leaves(expected)
    if len(flat_a) != len(flat_e):
        raise VerificationError(f"{what}: {len(flat_a)} outputs, eager gives {len(flat_e)}")
    for i, (a, e) in enumerate(zip(flat_a, flat_e)):
        if not isinstance(e, torch.Tensor):
            continue
        if a.shape != e.shape or a.dtype != e.dtype:
            raise VerificationError(f"{what} {i}: {a.dtype}{list(a.shape)} vs eager "
                                    f"{e.dtype}{list(e.shape)}")
        if not e.is_floating_point():
            if not torch.equal(a, e):
                raise VerificationError(f"{what} {i}: integer/bool values differ from eager")
            continue
        tol = TOLERANCE.get(e.dtype, 1e-4)
        err = relative_error(a, e)
        if not err <= tol:
            raise VerificationError(f"{what} {i} {e.dtype}{list(e.shape)}: relative error "
                                    f"{err:.3g} exceeds {tol:g}")


def _signature(args: Any) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else a
                 for a in args)


def verified(compiled: Callable, eager: Callable) -> Callable:
    """Wrap `compiled` so each new input signature is checked against `eager` once."""
    seen: set = set()

    def run(*args: Any) -> Any:
        out = compiled(*args)
        sig = _signature(args)
        if sig not in seen:
            with torch.no_grad():
                ref = eager(*args)
            check_close(out, ref)
            seen.add(sig)
        return out

    return run
