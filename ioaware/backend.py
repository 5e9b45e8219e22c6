"""The dynamo backend: capture → canonicalise → passes → execute.

Registered under the name "ioaware" through the `torch_dynamo_backends` entry point, so
`torch.compile(model, backend="ioaware")` works after `pip install` with no import.

On CUDA the rewritten graph goes to Inductor (the ioaware custom ops stay opaque to
it); on the CPU it runs as plain fx, the custom ops running their Triton kernels under
the interpreter when `config.interpret` is set and a reference path otherwise.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from ioaware import capture, cost
from ioaware.explain import Explanation, Fallback
from ioaware.verify import verified

log = logging.getLogger("ioaware")

# Rewrites by kind ("attention", "scan") and fallbacks, across every compile.
counters: collections.Counter = collections.Counter()


def _device_of(example_inputs: Sequence[Any]) -> torch.device:
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


class IoawareBackend:
    """A dynamo backend. One instance per `ioaware.compile` call.

    verify: run the eager graph beside the compiled one once per new input signature
        and raise `VerificationError` if the outputs differ beyond the dtype tolerance.
    execute: False for `explain`: analyse and rewrite, but return the eager graph.
    device: the profile the passes price against ("h100", ...); None for the GPU present,
        else `config.default_device` (see `hardware.get_profile`).
    """

    def __init__(self, *, verify: bool = False, execute: bool = True,
                 device: str | None = None) -> None:
        self.verify = verify
        self.execute = execute
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
        from ioaware.passes.pipeline import PassContext, run_pipeline

        index = self.explanation.graphs
        self.explanation.graphs += 1
        device = _device_of(example_inputs)
        try:
            canon = capture.canonicalize(gm, example_inputs)
        except Exception as e:  # noqa: BLE001 - never crash on a graph that runs eagerly
            return self._unchanged("capture", e, index, gm, example_inputs, device)

        from ioaware.codegen import load_families
        from ioaware.codegen.runtime import backend_name

        load_families()  # the passes price with the families' registered prices
        # The profile named, or that of the device the inputs live on (the one the ops'
        # kernels are rendered for).
        profile = (hardware.get_profile(self.device) if self.device is not None
                   else hardware.device_profile(device))
        ctx = PassContext(profile=profile, backend_name=backend_name(device),
                          hints=cost.size_hints(canon))
        try:
            rewrites, fallbacks = run_pipeline(canon, ctx)
        except Exception as e:  # noqa: BLE001 - a half-rewritten graph is never run
            return self._unchanged("rewrite", e, index, gm, example_inputs, device)
        for r in rewrites:
            r.graph = index
            counters[r.kind] += 1
        for f in fallbacks:
            f.graph = index
        counters["fallbacks"] += len(fallbacks)
        self.explanation.rewrites += rewrites
        self.explanation.fallbacks += fallbacks
        return self._finish(gm, canon if rewrites else gm, example_inputs, device)

    def _unchanged(self, stage: str, error: Exception, index: int, gm: fx.GraphModule,
                   example_inputs: Sequence[Any], device: torch.device) -> Callable:
        """A stage failed: record why and run dynamo's graph exactly as it was."""
        reason = f"{stage} failed, graph left as it was: {type(error).__name__}: {error}"
        self.explanation.fallbacks.append(Fallback("graph", reason, graph=index))
        counters["fallbacks"] += 1
        log.warning("ioaware: %s", reason)
        return self._finish(gm, gm, example_inputs, device)

    def _finish(self, eager: fx.GraphModule, gm: fx.GraphModule, example_inputs: Sequence[Any],
                device: torch.device) -> Callable:
        if not self.execute:
            return eager.forward
        if device.type == "cuda":
            from torch._inductor.compile_fx import compile_fx

            try:
                compiled = compile_fx(gm, list(example_inputs))
            except Exception as e:  # noqa: BLE001 - the fx graph still runs, just unfused
                log.warning("ioaware: Inductor failed on this graph (%s); running it as fx", e)
                self.explanation.fallbacks.append(Fallback(
                    "graph", f"Inductor failed, rest of graph runs unfused: {type(e).__name__}",
                    graph=self.explanation.graphs - 1))
                compiled = gm.forward
        else:
            compiled = gm.forward
        if self.verify:
            return verified(compiled, eager)
        return compiled


# The instance the entry point registers: torch.compile(model, backend="ioaware").
def ioaware_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
    return IoawareBackend()(gm, example_inputs)
