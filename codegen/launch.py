"""Launch a @triton.jit kernel through the binary it compiled to, once its key is known.

`kernel[grid](*args, **kw)` (Triton's `JITFunction.run`) binds the arguments, derives
the specialisation of each, builds its cache key, checks that no global the kernel
read has changed, and then calls the compiled binary's launcher. The generated kernels
take ~35 arguments and read ~50 module constants, and a forward + backward makes
5 launches, so that path is a large part of a short call's host time.

`launch(kernel, grid, *args, **kw)` keeps, per kernel, the binary each call signature
compiled to, under a key at least as fine as what Triton specialises on:

    tensor  -> (dtype, data_ptr % 16 == 0)          pointer type and 16-byte alignment
    int     -> (== 1, % 16 == 0, i32, below 2**63)  Triton's constant 1, divisibility, width
    bool, None -> the value;  float -> the type    (floats are not specialised)
    a constexpr parameter given by position -> its value
    kw      -> the constexpr and launch-option values (BLOCK_M, num_warps, ...)

plus the current device (a binary is loaded per device). Two calls with equal keys get
the same binary from Triton, so a hit launches it directly, with no launch metadata and
no hooks (Triton's hook chains are empty then).

That key costs a Python call per argument. A call site passes the same sizes and
strides call after call, so in front of it sits an exact key, built in one
pass: each argument's type, and its value (a tensor: its dtype and 16-byte alignment,
checked every call). Equal exact keys imply equal specialisation keys; a
miss computes the specialisation key, finds or compiles the binary as above and files
it under the exact key too (at most EXACT_ENTRIES per kernel: sizes that change every
call would otherwise grow it without end). A miss, an argument of another type,
the interpreter or a listening profiler (a launch hook set) take `kernel[grid]`
unchanged. The module constants are never reassigned after import (a Spec is a
module), which is what Triton's per-call check of them guards against.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
from triton import knobs
from triton.runtime import JITFunction, driver

from ioaware.config import config

_ATTR = "_ioaware_binaries"
_EXACT = "_ioaware_exact_binaries"
_CONSTEXPRS = "_ioaware_constexpr_positions"
EXACT_ENTRIES = 4096


def _arg_key(x: Any) -> Any:
    """The part of Triton's specialisation `x` can change (see the module doc)."""
    if isinstance(x, torch.Tensor):
        return x.dtype, x.data_ptr() & 15 == 0
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return x == 1, x & 15 == 0, -(1 << 31) <= x < (1 << 31), x < (1 << 63)
    if isinstance(x, float):
        return float
    raise TypeError(type(x).__name__)


# The launches of the call `codegen/plan.py` records, else None: per launch, (binary's
# run, grid, function, metadata, arguments with the keyword tail, device); True for a
# launch through Triton's own path that a later call may not take (a first compile, a
# listening profiler), False for one every call takes (the interpreter, fast_launch off).
_recorded: list | None = None


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect the launches made inside the block (see `_recorded`)."""
    global _recorded
    outer, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = outer


def hooks_set() -> bool:
    """Whether a launch hook is set (a profiler listening to Triton's launches)."""
    return _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook)


# torch's C query of a device's current stream (what Triton's CUDA driver calls too);
# None in a CPU-only build, where Triton's driver answers (tests patch it)
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def current_stream(device: int) -> int:
    """The raw handle of `device`'s current stream: torch's C query directly, without
    the attribute lookups through Triton's lazy driver proxy."""
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device)
    return driver.active.get_current_stream(device)


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kw: Any) -> None:
    """Launch `kernel` (a JITFunction) on `grid` as `kernel[grid](*args, **kw)` would."""
    if not config.fast_launch or not isinstance(kernel, JITFunction):
        # the interpreter's kernels, or an autotuner choosing constexprs
        if _recorded is not None:
            _recorded.append(False)
        kernel[grid](*args, **kw)
        return
    if hooks_set():
        if _recorded is not None:
            _recorded.append(True)
        kernel[grid](*args, **kw)  # a profiler listens: it gets Triton's own path
        return
    device = driver.active.get_current_device()
    exact_key = _exact_key(device, args, kw)
    exact = kernel.__dict__.get(_EXACT)
    if exact is None:
        exact = kernel.__dict__[_EXACT] = {}
    try:
        found = exact.get(exact_key)
    except TypeError:  # an unhashable argument
        found, exact_key = None, None
    if found is None:
        found = _binary(kernel, grid, device, args, kw)
        if found is None:  # launched through Triton's own path
            if _recorded is not None:
                _recorded.append(True)
            return
        if exact_key is not None:
            if len(exact) >= EXACT_ENTRIES:
                exact.clear()
            exact[exact_key] = found
    compiled, tail = found
    stream = current_stream(device)
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
    tail_values = tuple(kw[name] for name in tail)
    if _recorded is not None:
        _recorded.append((compiled.run, grid, compiled.function, compiled.packed_metadata,
                          (*args, *tail_values), device))
    compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None,
                 None, None, *args, *tail_values)


def _exact_key(device: int, args: tuple, kw: dict[str, Any]) -> tuple:
    """The call's exact key (see the module doc): equal keys, equal `_launch_key`s.

    The arguments' types say where the tensors are; per tuple of types, two C-level
    getters split a call's arguments into its tensors and the rest, so the only Python
    loop is over the few tensors (dtype and alignment)."""
    types = tuple(map(type, args))
    split = _SPLITS.get(types)
    if split is None:
        split = _SPLITS[types] = _splitter(types)
    tensors, others = split
    return (device, types, others(args),
            tuple([(t.dtype, t.data_ptr() & 15 == 0) for t in tensors(args)]),
            tuple(kw.items()))


# tuple of argument types -> (getter of the tensors, getter of the other arguments)
_SPLITS: dict[tuple[type, ...], tuple[Any, Any]] = {}


def _splitter(types: tuple[type, ...]) -> tuple[Any, Any]:
    def getter(positions: list[int]) -> Any:
        if len(positions) == 1:
            (i,) = positions
            return lambda args: (args[i],)
        return operator.itemgetter(*positions) if positions else (lambda args: ())

    tensor = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
    other = [i for i, t in enumerate(types) if not issubclass(t, torch.Tensor)]
    return getter(tensor), getter(other)


def _binary(kernel: Any, grid: tuple[int, ...], device: int, args: tuple,
            kw: dict[str, Any]) -> tuple[Any, tuple[str, ...]] | None:
    """(binary, keyword tail) for this call's specialisation key, or None after
    launching the call through `kernel[grid]` (a first call compiles there; an argument
    kind the key does not cover always goes there)."""
    try:
        key = _launch_key(kernel, args, kw)
    except TypeError:
        kernel[grid](*args, **kw)
        return None
    binaries = kernel.__dict__.setdefault(_ATTR, {})
    found = binaries.get((device, key))
    if found is not None:
        return found
    compiled = kernel[grid](*args, **kw)
    compiled = compiled.result() if hasattr(compiled, "result") else compiled
    tail = _constexpr_tail(kernel, len(args), kw)
    if tail is not None and hasattr(compiled, "packed_metadata"):
        binaries[(device, key)] = (compiled, tail)
    return None


def _launch_key(kernel: Any, args: tuple, kw: dict[str, Any]) -> tuple:
    """What decides the binary: each argument's `_arg_key`, the values of the constexpr
    parameters given by position (each value is its own binary: CPG = 2 and 4 compile
    apart though both are even), and the keywords."""
    positions = kernel.__dict__.get(_CONSTEXPRS)
    if positions is None:
        positions = kernel.__dict__[_CONSTEXPRS] = tuple(
            i for i, p in enumerate(kernel.params) if p.is_constexpr)
    return (tuple(map(_arg_key, args)), tuple(args[i] for i in positions if i < len(args)),
            tuple(kw.items()))


def _hooked(hook: Any) -> bool:
    """Whether a launch hook is set: Triton 3.6+ keeps them in a HookChain, empty when
    nothing listens; older versions used None."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _constexpr_tail(kernel: Any, n_args: int, kw: dict[str, Any]) -> tuple[str, ...] | None:
    """Names of the parameters after the positional ones, in signature order, when `kw`
    gives each of them (the binary's launcher takes every parameter, constexprs
    included, in order); None when it does not (a default would be needed)."""
    names = tuple(kernel.arg_names)[n_args:]
    return None if any(name not in kw for name in names) else names


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global scratch for a kernel (in-kernel TMA descriptors), on the current device."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_scratch_allocator() -> None:
    """Install a torch allocator as Triton's scratch allocator unless one is set: a
    kernel that builds tensor descriptors in-kernel asks it for 128 bytes per
    descriptor at launch. Triton keeps it in a ContextVar, so this runs per launch
    (a lookup) and covers threads that start with the default (autograd's)."""
    from triton.runtime import _allocation

    if _allocation._allocator.get() is _allocation._NULL_ALLOCATOR:
        _allocation.set_allocator(_scratch)


def tma_addressable(*tensors: torch.Tensor) -> bool:
    """Whether an in-kernel TMA descriptor can address each [B, H, N, d] tensor as one
    [N, d] matrix per (b, h): unit stride on d, a 16-byte aligned base and every other
    stride a multiple of 16 bytes (the tensor-map rules)."""
    for t in tensors:
        size = t.element_size()
        if t.stride(3) != 1 or t.data_ptr() % 16 or any(
                (t.stride(i) * size) % 16 for i in range(3)):
            return False
    return True
