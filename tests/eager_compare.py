"""Run a function compiled by ioaware and eagerly on the same inputs and compare
outputs and gradients, NaN and inf patterns included (shared by the reproducers and
the generated programs)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

import ioaware
from ioaware.verify import TOLERANCE, relative_error

# RMS magnitude below which an expected gradient counts as that small (see
# ioaware.verify.relative_error): a gradient that is zero by cancellation (a row that
# sees one key) would otherwise turn rounding noise into a relative error of 1. The
# same values as tests/interp/test_attention_mods.py's FLOOR.
GRAD_FLOOR = {torch.float32: 1e-2, torch.float16: 1.0, torch.bfloat16: 1.0}


def _leaves(args: Sequence) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def run(fn: Callable, args: Sequence, weight_seed: int = 0) -> tuple[list, list]:
    """(outputs, gradients) of fn(*args) and loss Σ out·w (w fixed by weight_seed): the
    loss's gradient is w whatever the outputs hold, NaN rows included."""
    for a in _leaves(args):
        a.grad = None
    out = fn(*args)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    grads = []
    leaves = _leaves(args)
    if leaves:
        gen = torch.Generator().manual_seed(weight_seed)
        loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum()
                   for o in outs if o.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
            grads = [a.grad.clone() if a.grad is not None else None for a in leaves]
    return [o.detach() for o in outs], grads


def _in_float64(fn: Callable, args: Sequence) -> tuple[list, list] | None:
    """fn's outputs and gradients with every floating input in float64 (the yardstick
    of eager's own rounding), or None when the program does not run so."""
    wide = [a.detach().double().requires_grad_(a.requires_grad)
            if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    try:
        return run(fn, wide)
    except Exception:  # noqa: BLE001 - a program tied to its dtype: no yardstick
        return None


def _within(a: torch.Tensor, e: torch.Tensor, e64: torch.Tensor | None, tol: float,
            floor: float) -> float | None:
    """None when `a` is within `tol` of eager's `e`, or, failing that, no farther from
    the float64 result `e64` than twice eager's own distance from it (a result as
    accurate as eager's: ill-conditioned softmaxes round differently in any order);
    else the relative error to eager."""
    err = relative_error(a, e, floor=floor)
    if err <= tol:
        return None
    if e64 is not None:
        own = relative_error(e, e64.to(e.dtype), floor=floor)
        if relative_error(a, e64.to(a.dtype), floor=floor) <= max(tol, 2 * own):
            return None
    return err


def compare(fn: Callable, args: Sequence, dtype: torch.dtype, compiled: Callable | None = None
            ) -> list[str]:
    """What differs between ioaware.compile(fn) and fn on `args` (empty when nothing):
    each output within TOLERANCE[dtype] of eager and each gradient within it (floor
    GRAD_FLOOR), with NaN and ±inf at the same places, or at least as close as eager to
    the float64 result (see `_within`); or the same error raised."""
    compiled = compiled if compiled is not None else ioaware.compile(fn)
    try:
        want = run(fn, args)
    except Exception as e:  # noqa: BLE001 - the program's own error must come back
        try:
            run(compiled, args)
        except type(e):
            return []
        except Exception as got:  # noqa: BLE001
            return [f"eager raised {type(e).__name__}, ioaware {type(got).__name__}: {got}"]
        return [f"eager raised {type(e).__name__}: {e}; ioaware ran"]
    got = run(compiled, args)
    problems = []
    # A gradient element sums up to `terms` products (over the keys, the queries, a
    # scan's steps): its rounding noise grows like √terms, the convention of
    # tests/interp/test_attention_mods.py (FLOOR · √terms), with terms bounded here by
    # the longest axis of any input.
    terms = max((max(a.shape, default=1) for a in args if isinstance(a, torch.Tensor)),
                default=1)
    tol = TOLERANCE[dtype]
    wide = None
    for i, (a, e) in enumerate(zip(got[0], want[0])):
        if a.shape != e.shape or a.dtype != e.dtype:
            problems.append(f"output {i}: {a.shape} {a.dtype}, eager {e.shape} {e.dtype}")
            continue
        if relative_error(a, e) > tol and wide is None:
            wide = _in_float64(fn, args) or ([], [])
        e64 = wide[0][i] if wide and i < len(wide[0]) else None
        if (err := _within(a, e, e64, tol, 0.0)) is not None:
            problems.append(f"output {i}: relative error {err:.3g} > {tol}")
    for i, (a, e) in enumerate(zip(got[1], want[1])):
        if (a is None) != (e is None):
            problems.append(f"gradient {i}: {'none' if a is None else 'one'}, eager "
                            f"{'none' if e is None else 'one'}")
            continue
        if a is None:
            continue
        floor = GRAD_FLOOR[dtype] * terms**0.5
        if relative_error(a, e, floor=floor) > tol and wide is None:
            wide = _in_float64(fn, args) or ([], [])
        e64 = wide[1][i] if wide and i < len(wide[1]) else None
        if (err := _within(a, e, e64, tol, floor)) is not None:
            problems.append(f"gradient {i}: relative error {err:.3g} > {tol}")
    return problems


def inductor_op_calls(step: Callable[[Callable], Sequence[torch.Tensor]], compiled: Callable,
                      eager: Callable, dtype: torch.dtype) -> set[str]:
    """Run `step` (outputs, then gradients, of the function it is given) on `compiled`
    and on `eager`, assert they agree within `dtype`'s tolerance, and return the names of
    the ioaware ops Inductor's generated code calls (`torch.ops.ioaware.<name>.default`)."""
    from torch._inductor.utils import run_and_get_code

    got, codes = run_and_get_code(lambda: step(compiled))
    for a, b in zip(got, step(eager), strict=True):
        assert relative_error(a, b) <= TOLERANCE[dtype]
    return {c for code in codes
            for c in re.findall(r"torch\.ops\.ioaware\.(\w+)\.default", code)}
