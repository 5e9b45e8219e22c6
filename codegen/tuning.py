"""Choosing a kernel's launch config by timing, once per size class, for every family.

A rendered module launches each kernel with a config (tile sizes, warps) chosen here and
then through its cached binary (`codegen/launch.py`), never through `triton.autotune`:
the autotuner binds every argument and runs its own key and hooks on each call (tens of
µs of host time), and it picks the tile after the launcher's own work, so a launcher that
sizes scratch (the scan backward's chunk states) or builds something for the tile
(attention's block map) cannot use it.

    tuned_config(chosen, name, configs, default, key, trial, reset)

returns `chosen[key]` when the size class `key` was tuned before (a dict lookup), else
times `trial(config)` for each candidate with `triton.testing.do_bench` (median), keeps
the fastest and returns it. Nothing is timed inside a CUDA-graph capture (timing syncs
the device): the call returns what was chosen before, else `default`, and records
nothing, so a warm-up run outside the capture does the tuning, as cudagraph trees do.
A tuning that runs past a second says so on stderr, a line per config tried.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

# Seconds of tuning after which progress is shown.
PROGRESS_AFTER_S = 1.0


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def tuned_config(chosen: dict, name: str, configs: Sequence[Any], default: Any,
                 key: Hashable, trial: Callable[[Any], Any],
                 reset: Callable[[], Any] | None = None) -> Any:
    """The config to launch with for size class `key` (see the module docstring).

    configs: the candidates, empty for no tuning (the interpreter, a size below the
    family's threshold). trial(config): one launch with it. reset(): clears what the
    trials accumulated (atomic adds), called once after them, before the real launch.
    """
    if not configs:
        return default
    config = chosen.get(key)
    if config is not None:
        return config
    if capturing():
        return default
    from triton.testing import do_bench

    start = time.perf_counter()
    progress = _Progress(name, key, len(configs))
    best_ms = float("inf")
    for i, candidate in enumerate(configs):
        try:
            ms = do_bench(lambda c=candidate: trial(c), warmup=5, rep=20, return_mode="median")
        except Exception:  # noqa: BLE001 - out of shared memory or registers on this device
            ms = float("inf")
        if ms < best_ms:
            config, best_ms = candidate, ms
        progress.update(i + 1, time.perf_counter() - start, config, best_ms)
    progress.done()
    # Nothing ran: the default's own launch reports why.
    config = chosen[key] = config if config is not None else default
    if reset is not None:
        reset()
    return config


class _Progress:
    """A line on stderr once tuning has run past PROGRESS_AFTER_S: rewritten in place on
    a terminal, one line at the end otherwise (logs stay short)."""

    def __init__(self, name: str, key: Hashable, total: int) -> None:
        self.name, self.key, self.total = name, key, total
        self.shown = False
        self.line = ""

    def update(self, done: int, seconds: float, best: Any, best_ms: float) -> None:
        if seconds < PROGRESS_AFTER_S:
            return
        self.line = (f"ioaware: autotuning {self.name} {self.key}: {done}/{self.total} "
                     f"configs, {seconds:.1f} s, best {best} at {best_ms:.3f} ms")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + self.line)
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
        elif self.line:
            sys.stderr.write(self.line + "\n")
