"""The user-facing entry points: `ioaware.compile` and `ioaware.explain`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ioaware.backend import IoawareBackend, counters, log
from ioaware.explain import Explanation, Fallback
from ioaware.inductor_options import inductor_patches

F = TypeVar("F", bound=Callable[..., Any])


def compile(
    fn: F | None = None,
    *,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    verify: bool = False,
    context_parallel: Any = None,
) -> F | Callable[[F], F]:
    """Compile a function or nn.Module with ioaware; usable as `@ioaware.compile` too.

    Attention regions written in plain PyTorch become generated FlashAttention kernels;
    everything else runs as before (Inductor on CUDA, plain fx on the CPU).

    mode, options: as torch.compile's, passed to Inductor the way torch.compile passes
        them ("reduce-overhead" runs the graph under CUDA graphs, "max-autotune" tunes
        Inductor's kernels; options are `torch._inductor.config` names). Checked now: a
        bad one raises torch.compile's RuntimeError, the argument named.
    dynamic, fullgraph: passed to `torch.compile`.
    verify: run eager beside the compiled code once per new input shape and raise
        `ioaware.VerificationError` if any output differs beyond the dtype's tolerance.
    context_parallel: an `ioaware.parallel.ContextParallel(group, balance)`: the model
        runs on this rank's rows of the sequence (`cp.shard(...)`) and every attention
        region ioaware rewrites becomes ring attention over the group; implies
        fullgraph=True, since code left to eager would attend locally
        (docs/context-parallel.md). Without it, calls made inside PyTorch's
        `context_parallel(mesh, buffers=...)` run the rewritten attention as ioaware's
        ring over that mesh (`parallel/torch_cp.py`).
    """
    if fn is None:
        inductor_patches(mode, options, dynamic)  # a bad mode fails here, not when applied
        return lambda f: compile(f, mode=mode, options=options, dynamic=dynamic,
                                 fullgraph=fullgraph, verify=verify,
                                 context_parallel=context_parallel)
    if not callable(fn):
        raise TypeError(f"ioaware.compile: fn must be a function or nn.Module, got {type(fn)}")
    backend = IoawareBackend(verify=verify, mode=mode, options=options, dynamic=dynamic,
                             context_parallel=context_parallel)
    if context_parallel is not None:
        # Code dynamo leaves to eager (a graph break) would attend to this rank's rows
        # only: under context parallel the whole forward must be one graph.
        fullgraph = True
    compiled = torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
    call = compiled
    if context_parallel is None:
        # Inside torch's context_parallel(mesh, buffers=...) the rewritten attention must
        # run as a ring over its mesh: a second compilation, made on first use there.
        from ioaware.parallel.torch_cp import Dispatch

        def make_ring(cp: Any) -> Callable:
            ring = torch.compile(fn, backend=IoawareBackend(
                mode=mode, options=options, dynamic=dynamic, context_parallel=cp),
                dynamic=dynamic, fullgraph=True)
            return ring.forward if isinstance(fn, torch.nn.Module) else ring

        if isinstance(fn, torch.nn.Module):
            compiled.forward = Dispatch(compiled.forward, make_ring)
        else:
            call = Dispatch(compiled, make_ring)
    # Under context parallel, eager would be this rank's rows alone: no eager fallback.
    if isinstance(fn, torch.nn.Module):
        if context_parallel is None:
            compiled.forward = eager_when_untraceable(compiled.forward, fn, backend)
        return compiled
    run = functools.wraps(fn)(eager_when_untraceable(call, fn, backend) if context_parallel is None
                              else functools.partial(call))
    run._ioaware_backend = backend  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def eager_when_untraceable(call: Callable[..., Any], eager: Callable[..., Any],
                           backend: IoawareBackend) -> Callable[..., Any]:
    """`call` (a torch.compile'd callable), or `eager` for a call that dynamo fails to
    trace with fake tensors (`TorchRuntimeError`: an op's fake or meta kernel raised, a
    shape or dtype torch's tracing sees differently from eager). That happens before
    ioaware's backend sees a graph, so the backend cannot fall back itself: the call runs
    eagerly, as it would without compiling (a function that fails eagerly raises its own
    error), and `backend.explanation` gets a Fallback("graph", ...) with dynamo's reason.
    Graphs dynamo compiled before the frame it failed on (after a graph break) have run by
    then, and the eager call runs their code again.

    Dynamo keeps no record of a failed trace, so it would trace again, and fail again,
    on every call: a call whose signature (`_call_signature`: its tensors' shapes,
    dtypes, devices and requires_grad, grad mode) failed once runs eagerly at once, with
    one Fallback and one warning per signature."""
    untraceable: set[tuple] = set()

    def run(*args: Any, **kwargs: Any) -> Any:
        key = _call_signature(args, kwargs)
        if key in untraceable:
            return eager(*args, **kwargs)
        try:
            return call(*args, **kwargs)
        except torch._dynamo.exc.TorchRuntimeError as e:
            reason = untraceable_reason(e)
            backend.explanation.fallbacks.append(
                Fallback("graph", reason, graph=backend.explanation.graphs))
            counters["fallbacks"] += 1
            log.warning("ioaware: %s", reason)
            untraceable.add(key)
            return eager(*args, **kwargs)

    return run


def _call_signature(args: tuple, kwargs: dict) -> tuple:
    """What a trace's success depends on, cheaply: each tensor argument's shape, dtype,
    device and requires_grad, any other argument's type, and the grad mode."""
    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return (tuple(x.shape), x.dtype, x.device, x.requires_grad)
        return type(x)

    return (torch.is_grad_enabled(), tuple(map(one, args)),
            tuple((k, one(v)) for k, v in kwargs.items()))


# How the reason of a call dynamo could not trace begins (bench rows look for it).
UNTRACEABLE = "dynamo could not trace this call, which runs eagerly"


def untraceable_reason(error: BaseException) -> str:
    """What explain says of a call dynamo could not trace, on one line: dynamo's first
    line, its explanation, and the error that caused it (the op's own: dynamo's
    explanation prints the op's fake arguments, whose repr spans lines, so its first
    line alone does not reach the error), without the hints and the user stack."""
    def lines_of(e: BaseException) -> list[str]:
        return [line.strip() for line in str(e).splitlines() if line.strip()]

    lines = lines_of(error)
    said = [lines[0]] if lines else []
    said += [line for line in lines[1:] if line.startswith("Explanation:")][:1]
    cause = error.__cause__ or error.__context__
    if cause is not None and lines_of(cause):
        said.append(f"caused by {type(cause).__name__}: {' '.join(lines_of(cause)[:3])}")
    return f"{UNTRACEABLE}: {type(error).__name__}: {' '.join(said)}"[:2000]


@contextlib.contextmanager
def _fresh_dynamo_budget():
    """Each explain is a new backend, hence a recompile; keep it off the user's budget."""
    cfg = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(cfg, n)]
    with cfg.patch({n: max(getattr(cfg, n), 10_000) for n in names}):
        yield


def explain(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Explanation:
    """Say what `ioaware.compile(fn)` would rewrite for these inputs, and why not the rest.

    Runs `fn` once eagerly under dynamo to capture its graphs; nothing is rewritten in
    `fn` itself. Returns an Explanation (`.rewrites`, `.fallbacks`; `str()` is a table).
    The passes price against the GPU present, else `ioaware.config.default_device`.
    """
    return explain_on(None, fn, *args, **kwargs)


def explain_on(device: str | None, fn: Callable[..., Any], *args: Any, **kwargs: Any
               ) -> Explanation:
    """`explain`, with the passes pricing against the profile named `device` ("h100", ...)."""
    if not callable(fn):
        raise TypeError(f"ioaware.explain: fn must be a function or nn.Module, got {type(fn)}")
    target = fn._orig_mod if isinstance(fn, torch._dynamo.eval_frame.OptimizedModule) else fn
    if hasattr(target, "_ioaware_backend"):  # ioaware.compile(f)'s wrapper: explain f
        target = target.__wrapped__
    backend = IoawareBackend(execute=False, device=device)
    with _fresh_dynamo_budget():
        compiled = torch.compile(target, backend=backend)
        eager_when_untraceable(compiled, target, backend)(*args, **kwargs)
    return backend.explanation
