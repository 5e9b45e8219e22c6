"""The dynamo backend: capture → canonicalise → passes (`compile_graph`) → execute.

Registered under the name "ioaware" through the `torch_dynamo_backends` entry point, so
`torch.compile(model, backend="ioaware")` works after `pip install` with no import.

On CUDA the rewritten graph goes to Inductor (the ioaware custom ops stay opaque to
it); on the CPU it runs as plain fx, the custom ops running their Triton kernels under
the interpreter when `config.interpret` is set and a reference path otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from ioaware import capture, cost, logs
from ioaware.explain import Explanation, Fallback, Rewrite
from ioaware.hardware import DeviceProfile
from ioaware.verify import verified

log = logging.getLogger("ioaware")

# Rewrites by kind ("attention", "scan") and fallbacks, across every compile.
counters: collections.Counter = collections.Counter()


def _device_of(example_inputs: Sequence[Any]) -> torch.device:
    """The device a graph runs on: its first CUDA input's, else its first tensor's. A
    graph on the GPU may also take CPU tensors (a step counter, a scalar), and one of
    them may come first: that graph still belongs to Inductor, not to the fx path."""
    first = None
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            if x.device.type == "cuda":
                return x.device
            first = first or x.device
    return first or torch.device("cpu")


@dataclasses.dataclass
class CompiledGraph:
    """What `compile_graph` made of one dynamo graph.

    graph: what runs: the canonical graph with its regions rewritten, or dynamo's graph
        as it was when nothing was rewritten or a stage failed.
    canonical: the canonical graph after the passes (None when capture failed).
    rewrites / fallbacks: what the passes did, and a Fallback("graph", reason) for a
        failed stage; each carries the graph's index.
    seconds: wall-clock seconds per pass name. hints: values of the size symbols.
    priced: what `price` returned for the canonical graph before the passes ran.
    """

    graph: fx.GraphModule
    canonical: fx.GraphModule | None = None
    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    fallbacks: list[Fallback] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    hints: dict = dataclasses.field(default_factory=dict)
    priced: Any = None


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], profile: DeviceProfile,
                  backend_name: str, *, graph: int = 0, count: bool = True,
                  price: Callable[[fx.GraphModule, dict], Any] | None = None) -> CompiledGraph:
    """Capture → canonicalise → passes, never crashing on a graph that runs eagerly.

    profile: the device the passes price against. backend_name: how rewritten kernels
    run ("triton", "triton-interpret" or "reference"). graph: the index records carry.
    count: add the rewrites and fallbacks to `counters` (False for an analysis that is
    not a compile). price: called on the canonical graph before the passes rewrite it
    in place (the report prices the whole graph before and after); its result is
    `priced`. A stage that raises leaves dynamo's graph unchanged, with the reason as a
    Fallback("graph", ...) and a warning.
    """
    from ioaware.codegen import load_families
    from ioaware.passes import pipeline

    load_families()  # the passes and the report price with the families' registered prices
    try:
        canon = capture.canonicalize(gm, example_inputs)
    except Exception as e:  # noqa: BLE001 - never crash on a graph that runs eagerly
        return _unchanged("capture", e, gm, CompiledGraph(gm), graph, count)
    result = CompiledGraph(gm, canonical=canon, hints=cost.size_hints(canon))
    if price is not None:
        result.priced = price(canon, result.hints)
    ctx = pipeline.PassContext(profile=profile, backend_name=backend_name, hints=result.hints)
    try:
        outcome = pipeline.run_pipeline(canon, ctx)
    except Exception as e:  # noqa: BLE001 - a half-rewritten graph is never run
        return _unchanged("rewrite", e, gm, result, graph, count)
    for record in (*outcome.rewrites, *outcome.fallbacks):
        record.graph = graph
    if count:
        for r in outcome.rewrites:
            counters[r.kind] += 1
        counters["fallbacks"] += len(outcome.fallbacks)
    result.rewrites, result.fallbacks = outcome.rewrites, outcome.fallbacks
    result.seconds = outcome.seconds
    result.graph = canon if outcome.rewrites else gm
    return result


def _unchanged(stage: str, error: Exception, gm: fx.GraphModule, result: CompiledGraph,
               graph: int, count: bool) -> CompiledGraph:
    """A stage failed: record why and run dynamo's graph exactly as it was."""
    reason = f"{stage} failed, graph left as it was: {type(error).__name__}: {error}"
    result.graph = gm
    result.fallbacks = [Fallback("graph", reason, graph=graph)]
    if count:
        counters["fallbacks"] += 1
    log.warning("ioaware: %s", reason)
    return result


class IoawareBackend:
    """A dynamo backend. One instance per `ioaware.compile` call.

    verify: run the eager graph beside the compiled one once per new input signature
        and raise `VerificationError` if the outputs differ beyond the dtype tolerance.
    execute: False for `explain`: analyse and rewrite, but return the eager graph.
    device: the profile the passes price against ("h100", ...); None for the GPU present,
        else `config.default_device` (see `hardware.get_profile`).
    mode, options, dynamic: torch.compile's, turned into Inductor's config patches as
        torch.compile turns them (`inductor_options.inductor_patches`; checked here).
    context_parallel: an `ioaware.parallel.ContextParallel`: the rewritten attention
        regions run as rings over its group (`parallel/context.py`).
    """

    def __init__(self, *, verify: bool = False, execute: bool = True,
                 device: str | None = None, mode: str | None = None,
                 options: dict[str, Any] | None = None, dynamic: bool | None = None,
                 context_parallel: Any = None) -> None:
        from ioaware.inductor_options import inductor_patches

        if context_parallel is not None:
            from ioaware.parallel.context import ContextParallel

            if not isinstance(context_parallel, ContextParallel):
                raise TypeError("context_parallel must be an ioaware.parallel."
                                f"ContextParallel; got {type(context_parallel).__name__}")
            if verify:
                raise ValueError("verify=True compares with eager on this rank's rows, "
                                 "which is not the sharded model's answer; it cannot be "
                                 "combined with context_parallel")
        self.context_parallel = context_parallel
        self.verify = verify
        self.execute = execute
        self.inductor_patches = inductor_patches(mode, options, dynamic)
        if device is not None:
            from ioaware import hardware

            # Fail now, not at the first compile: built-in or saved by `ioaware calibrate`.
            try:
                hardware.get_profile(device)
            except ValueError as e:
                raise ValueError(f"device={device!r}: {e}") from None
        self.device = device
        self.explanation = Explanation()

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        from ioaware import hardware
        from ioaware.codegen.runtime import backend_name

        index = self.explanation.graphs
        self.explanation.graphs += 1
        device = _device_of(example_inputs)
        # The profile named, or that of the device the inputs live on (the one the ops'
        # kernels are rendered for).
        profile = (hardware.get_profile(self.device) if self.device is not None
                   else hardware.device_profile(device))
        result = compile_graph(gm, example_inputs, profile, backend_name(device), graph=index)
        logs.report_graph(index, result.rewrites, result.fallbacks, result.seconds)
        self.explanation.rewrites += result.rewrites
        self.explanation.fallbacks += result.fallbacks
        for name, seconds in result.seconds.items():
            self.explanation.pass_seconds[name] = \
                self.explanation.pass_seconds.get(name, 0.0) + seconds
        if self.context_parallel is not None and self.execute:
            from ioaware.parallel.context import refuse_local_attention

            refuse_local_attention(result.graph, result.fallbacks)
        return self._finish(gm, result.graph, example_inputs, device)

    def _finish(self, eager: fx.GraphModule, gm: fx.GraphModule, example_inputs: Sequence[Any],
                device: torch.device) -> Callable:
        if not self.execute:
            return eager.forward
        if self.context_parallel is not None:
            from ioaware.parallel.context import route_to_ring

            gathered: list[str] = []
            counters["context_parallel"] += route_to_ring(gm, self.context_parallel, gathered)
            for reason in gathered:  # it runs, exactly, but without the ring: say why
                log.warning("ioaware: %s", reason)
                self.explanation.fallbacks.append(Fallback(
                    "context_parallel", reason, graph=self.explanation.graphs - 1))
        if device.type == "cuda":
            compiled = self._inductor(gm, example_inputs)
        else:
            if self.inductor_patches:
                log.info("graph on %s runs as fx: Inductor's mode/options (%s) do not apply",
                         device, ", ".join(self.inductor_patches))
            # Run as fx: the ops' calls go to their host functions (codegen/host.py).
            from ioaware.codegen.host import use_host_path

            use_host_path(gm)
            compiled = gm.forward
        if self.verify:
            return verified(compiled, eager)
        return compiled

    def _inductor(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        """Inductor on the rewritten graph with the mode's and options' config patches
        (the ioaware ops stay opaque to it); the fx graph itself if Inductor fails."""
        from torch._inductor.compile_fx import compile_fx

        from ioaware.inductor_options import cudagraph_skips, uses_cudagraphs

        try:
            if not uses_cudagraphs(self.inductor_patches):
                return compile_fx(gm, list(example_inputs),
                                  config_patches=dict(self.inductor_patches))
            with cudagraph_skips() as skipped:
                compiled = compile_fx(gm, list(example_inputs),
                                      config_patches=dict(self.inductor_patches))
            for reason in skipped:  # it runs, without CUDA graphs: say why
                self.explanation.fallbacks.append(Fallback(
                    "cudagraphs", f"runs without CUDA graphs: {reason}",
                    graph=self.explanation.graphs - 1))
            return compiled
        except Exception as e:  # noqa: BLE001 - the fx graph still runs, just unfused
            log.warning("ioaware: Inductor failed on this graph (%s); running it as fx", e)
            self.explanation.fallbacks.append(Fallback(
                "graph", f"Inductor failed, rest of graph runs unfused: {type(e).__name__}",
                graph=self.explanation.graphs - 1))
            return gm.forward


# What the entry point registers: torch.compile(model, backend="ioaware"). torch.compile
# passes a named backend its mode and options as keywords (`_TorchCompileWrapper`).
def ioaware_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *,
                    mode: str | None = None, options: dict[str, Any] | None = None
                    ) -> Callable:
    return IoawareBackend(mode=mode, options=options)(gm, example_inputs)
