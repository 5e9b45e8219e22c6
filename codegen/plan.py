"""Launch plans: an op body's work at one call signature, recorded once, replayed per call.

An op body (the attention forward, its backward, the scan's...) does the same thing on
every call with the same signature: it checks its arguments, finds its Spec and kernel
module, picks each kernel's config (a tuning lookup), allocates its outputs and
scratch, builds each launch's arguments (strides, sizes, buckets, constexprs) and
finds each launch's binary by key. All of it follows from the signature

    each tensor argument's (shape, strides, dtype, device index, 16-byte alignment),
    each other argument's value (lists of tensors flattened), the current device and
    whether deterministic algorithms are on

so `planned(body)` records what the body did once per signature and replays it:

    key -> plan -> the allocations (torch.empty / zeros / new_empty ..., as the body
    made them) -> each binary's launcher with its grid and arguments, in order

with no checks, no Spec or module lookups, no config lookups and no per-launch key.
From the second call at a signature, a plan is recorded from an ordinary call of the
body, watched by a TorchFunctionMode and by `launch.recording`, and kept once two calls
in a row recorded the same work (an early call often does what later ones skip: a
block map built and kept, a binary compiled); the fourth call replays. It is kept only when each call's whole effect on tensors was

    allocations by a factory (`ALLOCATORS`), launches of cached binaries, calls
    that return an argument or an allocation unchanged (`lse.contiguous()`), and dtype
    conversions of those (`da.to(torch.bfloat16)`: a new tensor, redone in the replay
    at the same place among the launches)

and every launched tensor is an argument, an allocation, or a tensor made before the
call (a module's kept block map: a constant, the same object in both recordings).
Anything else (a torch op computing a value, a view, an in-place fill, the interpreter)
leaves the body unplanned at that signature: `NEVER`, the body runs as written. A call
that compiled a kernel or timed configs records nothing and counts as a try (at most
`ATTEMPTS`); a call inside a CUDA-graph capture runs the body and is not a try.

Replays skip what a config change would change only where it cannot change: a config is
chosen once per size class and kept; a launch hook set later (a profiler listening), or
`config.fast_launch` off, sends calls back to the body. Replays allocate through torch's
allocator and query the stream per call, so they are CUDA-graph capturable.

Floor: a replay's host time is its key (a few tuple builds), one dict lookup, the
allocations (~2 µs each on CUDA) and one launcher call per kernel (Triton's launcher,
~5 µs): about 15 µs for the attention forward (two allocations, one kernel).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ioaware.config import config

from . import launch, tuning

# False: every body runs as written (scripts/profile_host_path.py's "before" column).
enabled = True

NEVER = "never"  # a signature the body runs unplanned at
PLANNED: list[Callable[..., Any]] = []  # every planned body, for `forget`
ATTEMPTS = 4  # calls at one signature that may try to record before it is NEVER
PLAN_ENTRIES = 1024  # plans kept per body; sizes that change every call would grow it

# Factories whose result a replay makes again by the same call.
ALLOCATORS = frozenset({torch.empty, torch.zeros, torch.empty_like, torch.zeros_like,
                        torch.empty_strided, Tensor.new_empty, Tensor.new_zeros})


# Calls that may return their tensor unchanged (a no-op conversion): any other call that
# returns a tensor of the call might have changed it.
SAME_TENSOR = frozenset({"contiguous", "float", "to", "type_as", "half", "bfloat16",
                         "double", "int", "long", "cuda"})
# Conversions a replay redoes: `x.to(dtype)` and its short forms, on a tensor of the call
# (an argument, an allocation or an earlier conversion), with no other argument.
CONVERSIONS = frozenset({"to", "float", "half", "bfloat16", "double"})
# Calls that read a tensor's values into Python: what the body decides from them would
# be frozen into the plan.
DATA_READS = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__",
                        "__index__", "__complex__", "equal", "allclose", "is_nonzero"})


def _writes(name: str) -> bool:
    """An in-place call by its name: `zero_`, `_foreach_add_`, `__iadd__`, `__setitem__`
    (and, erring toward refusing, every other `__i...__`: `__iter__`, `__int__`)."""
    return ((name.endswith("_") and not name.endswith("__")) or name == "__setitem__"
            or (name.startswith("__i") and name.endswith("__") and name != "__index__"))


class _Refused(Exception):
    """Recording found something a replay cannot redo; `transient` when a later call at
    the same signature may record (a compile, a tuning, a capture)."""

    def __init__(self, why: str, transient: bool = False) -> None:
        super().__init__(why)
        self.transient = transient


def _current_cuda_device() -> int:
    # torch.cuda.current_device less its lazy-init check (a CUDA tensor exists already)
    return torch._C._cuda_getDevice()


def signature(args: tuple) -> tuple:
    """The call's plan key (see the module docstring). Built inline: a Python call per
    tensor would be most of a replay's time."""
    first = args[0]
    key: list[Any] = [_current_cuda_device() if isinstance(first, Tensor) and first.is_cuda
                      else -1, torch.are_deterministic_algorithms_enabled()]
    append = key.append
    for a in args:
        if isinstance(a, Tensor):
            append((a.shape, a.stride(), a.dtype, a.get_device(), a.data_ptr() & 15))
        elif a.__class__ is list or a.__class__ is tuple:
            append(tuple((x.shape, x.stride(), x.dtype, x.get_device(), x.data_ptr() & 15)
                         if isinstance(x, Tensor) else x for x in a))
        else:
            append(a)
    return tuple(key)


def _flat_tensors(args: tuple) -> list[Tensor]:
    """The call's tensors in order, those inside list arguments included: slots 0...."""
    out: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif a.__class__ is list or a.__class__ is tuple:
            out.extend(x for x in a if isinstance(x, Tensor))
    return out


def _distinct(tensors: list[Tensor]) -> bool:
    """No tensor is passed twice (attention(x, x, x)): a recording maps each launched
    tensor to one argument position, which a repeated object leaves ambiguous. (A
    replay may get one object twice: each position still gets what it was given.)"""
    return len(set(map(id, tensors))) == len(tensors)


class Plan:
    """What one call of a body did: allocations, launches, the returned structure.

    Values are numbered slots: the call's tensor arguments first (flattened, in order),
    then each allocation's result. An allocation is (factory, args, kwargs, fills); a
    launch (run, grid, function, metadata, args, fills, stream device); `fills` lists
    (position, slot) pairs that put this call's tensors into a copy of the arguments."""

    __slots__ = ("allocations", "constants", "conversions", "launches", "result", "scratch",
                 "slots")

    def __init__(self, allocations: list, launches: list, result: Any,
                 constants: list[Tensor], conversions: list | None = None,
                 slots: int = 0) -> None:
        self.allocations, self.launches, self.constants = allocations, launches, constants
        # (launches before it, source slot, dtype, result slot), in call order
        self.conversions = conversions or []
        self.slots = slots  # how many values a replay holds (arguments included)
        self.result = _builder(result)
        # A binary with in-kernel TMA descriptors asks Triton's scratch allocator for
        # memory; the launcher that installed it is skipped, and a replay may run on
        # another thread (autograd's device thread) where it is not set yet.
        self.scratch = any(getattr(entry[0], "global_scratch_size", 1) for entry in launches)

    def same_work(self, other: Plan) -> bool:
        """Whether two recordings did the same: as many allocations, the same binaries
        in the same order, and the very same constant tensors."""
        return (len(self.allocations) == len(other.allocations)
                and [c[:3] for c in self.conversions] == [c[:3] for c in other.conversions]
                and [entry[0] for entry in self.launches] == [entry[0] for entry in other.launches]
                and len(self.constants) == len(other.constants)
                and all(a is b for a, b in zip(self.constants, other.constants)))

    def replay(self, values: list[Tensor]) -> Any:
        """Run the plan on the call's tensors (`_flat_tensors`): the allocations, then
        the launches in order, each dtype conversion after the launches that came before
        it in the recorded call."""
        if self.scratch:
            launch.ensure_scratch_allocator()
        values.extend([None] * (self.slots - len(values)))  # type: ignore[list-item]
        for factory, f_args, f_kwargs, fills, slot in self.allocations:
            if fills:
                f_args = list(f_args)
                for pos, source in fills:
                    f_args[pos] = values[source]
            values[slot] = factory(*f_args, **f_kwargs)
        conversions = iter(self.conversions)
        pending = next(conversions, None)
        stream = None
        for i, (run, g0, g1, g2, function, metadata, l_args, fills, device) in \
                enumerate(self.launches):
            while pending is not None and pending[0] <= i:
                values[pending[3]] = values[pending[1]].to(pending[2])
                pending = next(conversions, None)
            l_args = list(l_args)
            for pos, slot in fills:
                l_args[pos] = values[slot]
            if stream is None:
                stream = launch.current_stream(device)
            run(g0, g1, g2, stream, function, metadata, None, None, None, *l_args)
        while pending is not None:
            values[pending[3]] = values[pending[1]].to(pending[2])
            pending = next(conversions, None)
        return self.result(values)


def _builder(template: tuple) -> Callable[[list], Any]:
    """A function of the slots' values that returns what the body returned."""
    kind, content = template
    if kind == "slot":
        return operator.itemgetter(content)
    if kind == "const":
        return lambda values: content
    if kind == "tuple" and len(content) > 1 and all(k == "slot" for k, _ in content):
        return operator.itemgetter(*(slot for _, slot in content))  # a tuple already
    parts = [_builder(t) for t in content]
    if kind == "tuple":
        return lambda values: tuple([part(values) for part in parts])
    return lambda values: [part(values) for part in parts]


def _conversion_dtype(name: str, args: tuple, kwargs: dict) -> torch.dtype | None:
    """The dtype of a pure dtype conversion (`x.to(dtype)`, `x.to(dtype=...)`,
    `x.float()`...), or None for any other form (a device, `copy=`, `memory_format=`)."""
    if name != "to":
        if len(args) == 1 and not kwargs:
            return {"float": torch.float32, "half": torch.float16,
                    "bfloat16": torch.bfloat16, "double": torch.float64}[name]
        return None
    if len(args) == 2 and not kwargs and isinstance(args[1], torch.dtype):
        return args[1]
    if len(args) == 1 and set(kwargs) == {"dtype"} and isinstance(kwargs["dtype"], torch.dtype):
        return kwargs["dtype"]
    return None


class _Recorder(TorchFunctionMode):
    """Watches a body's torch calls: allocations become slots; anything that makes or
    changes tensor data otherwise refuses the plan."""

    def __init__(self, args: tuple) -> None:
        super().__init__()
        self.slots: dict[int, int] = {}
        self.keep: list[Tensor] = []  # holds every slotted tensor: ids stay unique
        for t in _flat_tensors(args):
            self._slot(t)
        self.allocations: list = []
        self.conversions: list = []
        self.converted: set[int] = set()  # slots that conversions made
        self.launches: list = []  # launch.recording()'s list: how many ran so far
        self.refused: _Refused | None = None

    def _slot(self, t: Tensor) -> int:
        slot = self.slots.get(id(t))
        if slot is None:
            slot = self.slots[id(t)] = len(self.keep)
            self.keep.append(t)
        return slot

    def _refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = _Refused(why)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in ALLOCATORS:
            if any(isinstance(v, Tensor) for v in kwargs.values()):
                self._refuse(f"{name} with a tensor keyword")
                return result
            fills = []
            for pos, a in enumerate(args):
                if isinstance(a, Tensor):
                    if id(a) not in self.slots:
                        self._refuse(f"{name} of a tensor the call did not get or make")
                        return result
                    if self.slots[id(a)] in self.converted:  # replays allocate first
                        self._refuse(f"{name} of a converted tensor")
                        return result
                    fills.append((pos, self.slots[id(a)]))
            self.allocations.append((func, tuple(args), dict(kwargs), tuple(fills),
                                     self._slot(result)))
            return result
        if name in CONVERSIONS and isinstance(result, Tensor) and id(result) not in self.slots:
            dtype = _conversion_dtype(name, args, kwargs)
            source = args[0] if args else None
            if dtype is not None and isinstance(source, Tensor) and id(source) in self.slots \
                    and result.device == source.device:
                slot = self._slot(result)
                self.converted.add(slot)
                self.conversions.append((len(self.launches), self.slots[id(source)], dtype,
                                         slot))
                return result
        if _writes(name) or kwargs.get("out") is not None:
            self._refuse(f"{name} writes a tensor")
        elif name in DATA_READS:
            self._refuse(f"{name} reads a tensor's values")
        results = result if isinstance(result, (tuple, list)) else (result,)
        for r in results:
            if not isinstance(r, Tensor):
                continue
            if id(r) not in self.slots:
                self._refuse(f"{name} made a tensor")
            elif name not in SAME_TENSOR:
                self._refuse(f"{name} returned a tensor of the call")
        return result

    def plan(self, launches: list, result: Any) -> Plan:
        recorded = []
        constants = []
        for entry in launches:
            if not isinstance(entry, tuple):  # True: a first compile; False: interpreter
                raise _Refused("a launch through Triton's own path", transient=entry)
            run, grid, function, metadata, l_args, device = entry
            fills = []
            for pos, a in enumerate(l_args):
                if isinstance(a, Tensor):
                    slot = self.slots.get(id(a))
                    if slot is None:  # made before the call, if the next call agrees
                        constants.append(a)
                    else:
                        fills.append((pos, slot))
            g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
            recorded.append((run, g0, g1, g2, function, metadata, tuple(l_args),
                             tuple(fills), device))
        return Plan(self.allocations, recorded, self._template(result), constants,
                    self.conversions, len(self.keep))

    def _template(self, value: Any) -> tuple:
        if isinstance(value, Tensor):
            slot = self.slots.get(id(value))
            if slot is None:
                raise _Refused("returns a tensor it did not get or allocate")
            return ("slot", slot)
        if isinstance(value, (tuple, list)):
            kind = "tuple" if isinstance(value, tuple) else "list"
            return (kind, [self._template(v) for v in value])
        if value is None or isinstance(value, (bool, int, float, str)):
            return ("const", value)
        raise _Refused(f"returns a {type(value).__name__}")


def _record(body: Callable[..., Any], args: tuple) -> tuple[Any, Plan | _Refused]:
    """Call the body once, watched; (its result, the plan or why there is none)."""
    if not _distinct(_flat_tensors(args)):
        return body(*args), _Refused("a tensor passed twice", transient=True)
    timings = tuning.timings
    recorder = _Recorder(args)
    with launch.recording() as launches, recorder:
        recorder.launches = launches
        result = body(*args)
    if recorder.refused is not None:
        return result, recorder.refused
    if tuning.timings != timings:
        return result, _Refused("configs were timed", transient=True)
    try:
        return result, recorder.plan(launches, result)
    except _Refused as why:
        return result, why


class _Pending:
    """A signature not planned yet: how many calls tried, and the last plan recorded."""

    __slots__ = ("candidate", "tries")

    def __init__(self, tries: int, candidate: Plan | None) -> None:
        self.tries, self.candidate = tries, candidate


def planned(body: Callable[..., Any]) -> Callable[..., Any]:
    """`body` (an op's function, before torch.library.custom_op) behind a plan per call
    signature (see the module docstring). The plans are kept on the wrapper (`.plans`).

    The first call at a signature only runs the body (sizes that change every call,
    a decode's growing cache read through this op, never pay for recording); the next
    ones record, and a plan is kept once two in a row recorded the same
    (`Plan.same_work`): an early call often does work later calls skip (a block map
    built and kept, a binary compiled), and a tensor made per call that the watch did
    not see made would be a different constant the second time."""
    plans: dict[tuple, Plan | _Pending | str] = {}

    @functools.wraps(body)
    def run(*args: Any) -> Any:
        if not (enabled and config.fast_launch):
            return body(*args)
        try:
            key = signature(args)
            plan = plans.get(key)
        except (TypeError, RuntimeError):  # unhashable; a tensor with no storage (torch.func)
            return body(*args)
        if plan.__class__ is Plan:
            if launch.hooks_set():  # a profiler listens to Triton's launches
                return body(*args)
            return plan.replay(_flat_tensors(args))
        if plan == NEVER or tuning.capturing():  # a capture may not record: not a try
            return body(*args)
        if plan is None:  # a first sighting: a size seen once is never recorded
            if len(plans) >= PLAN_ENTRIES:
                plans.clear()
            plans[key] = _Pending(0, None)
            return body(*args)
        pending = plan
        result, plan = _record(body, args)
        if len(plans) >= PLAN_ENTRIES:
            plans.clear()
        if isinstance(plan, Plan) and pending.candidate is not None and \
                pending.candidate.same_work(plan):
            plans[key] = plan
        elif pending.tries + 1 >= ATTEMPTS or not (isinstance(plan, Plan) or plan.transient):
            plans[key] = NEVER
        else:
            plans[key] = _Pending(pending.tries + 1, plan if isinstance(plan, Plan) else None)
        return result

    run.plans = plans
    PLANNED.append(run)
    return run


def forget() -> None:
    """Drop every plan (they are recorded again): for tests and measurements that
    change what a launch does."""
    for run in PLANNED:
        run.plans.clear()
