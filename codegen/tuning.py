"""Choosing a kernel's launch config by timing, once per size class, for every family.

A rendered module launches each kernel with a config (tile sizes, warps) chosen here and
then through its cached binary (`codegen/launch.py`), never through `triton.autotune`:
the autotuner binds every argument and runs its own key and hooks on each call (tens of
µs of host time), and it picks the tile after the launcher's own work, so a launcher that
sizes scratch (the scan backward's chunk states) or builds something for the tile
(attention's block map) cannot use it.

    tuned_config(chosen, name, configs, default, key, trial, reset, store)

returns `chosen[key]` when the size class `key` was tuned before (a dict lookup), else
the config stored on disk for it by an earlier process, else times `trial(config)` for
each candidate with `triton.testing.do_bench` (median), keeps the fastest, stores it and
returns it. Nothing is timed inside a CUDA-graph capture (timing syncs the device): the
call returns what was chosen before (in memory or on disk), else `default`, and records
nothing, so a warm-up run outside the capture does the tuning, as cudagraph trees do.
A tuning that runs past a second says so on stderr, a line per config tried.

On disk: `config.cache_dir/tuning/<store>.json`, one file per kernel module, where
`store` is the module's name. That name carries the module's cache key (kind, Spec key,
ioaware / torch / triton versions, template digest, device name and capability, device
profile: `codegen/cache.py`), so a chosen config is reused exactly where the binary it
was timed with is; inside the file each size class `key` maps to its config. A file that
does not parse, or an entry that is not one of today's candidates, is ignored and
rewritten after the next tuning (as the kernel cache rebuilds a damaged entry). Writes
are atomic; two processes tuning one module at once may each keep only their own
entries, which costs the other a re-tuning, never a wrong config.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from ioaware.config import config as ioaware_config

from .cache import write_atomic

log = logging.getLogger("ioaware.tuning")

# Seconds of tuning after which progress is shown.
PROGRESS_AFTER_S = 1.0

# How many tunings (timings of candidates) this process has run: a launch plan
# (`codegen/plan.py`) is not recorded from a call that timed configs.
timings = 0


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def bench_ms(fn: Callable[[], Any]) -> float:
    """Median milliseconds of `fn` on the device (`triton.testing.do_bench`)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20, return_mode="median")


def tuned_config(chosen: dict, name: str, configs: Sequence[Any], default: Any,
                 key: Hashable, trial: Callable[[Any], Any],
                 reset: Callable[[], Any] | None = None, store: str | None = None) -> Any:
    """The config to launch with for size class `key` (see the module docstring).

    configs: the candidates, empty for no tuning (the interpreter, a size below the
    family's threshold). trial(config): one launch with it. reset(): clears what the
    trials accumulated (atomic adds), called once after them, before the real launch.
    store: the kernel module's name, under which the choice persists on disk (None:
    in memory only).
    """
    if not configs:
        return default
    config = chosen.get(key)
    if config is not None:
        return config
    if store is not None:
        config = stored_config(store, key, configs)
        if config is not None:
            chosen[key] = config
            return config
    if capturing():
        return default

    global timings
    timings += 1
    start = time.perf_counter()
    progress = _Progress(name, key, len(configs))
    best_ms = float("inf")
    for i, candidate in enumerate(configs):
        try:
            ms = bench_ms(lambda c=candidate: trial(c))
        except Exception:  # noqa: BLE001 - out of shared memory or registers on this device
            ms = float("inf")
        if ms < best_ms:
            config, best_ms = candidate, ms
        progress.update(i + 1, time.perf_counter() - start, config, best_ms)
    progress.done()
    if config is None:  # nothing ran: the default's own launch reports why; not stored
        config = chosen[key] = default
    else:
        chosen[key] = config
        if store is not None:
            save_config(store, key, config)
    if reset is not None:
        reset()
    return config


# ---- the chosen configs on disk ---------------------------------------------------------

# store -> {repr(size class): config as a list}, as read from (and written to) its file
_stored: dict[str, dict[str, list]] = {}
_store_lock = threading.Lock()


def tuning_path(store: str) -> Path:
    """The file holding the configs chosen for kernel module `store`."""
    return Path(ioaware_config.cache_dir) / "tuning" / f"{store}.json"


def _entry_key(key: Hashable) -> str:
    # repr of a tuple of str / int / torch.device: stable across processes
    return repr(key)


def _read(store: str) -> dict[str, list]:
    """The entries of `store`'s file; {} when it is absent or does not parse as one."""
    entries = _stored.get(store)
    if entries is not None:
        return entries
    path = tuning_path(store)
    entries = {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("module") == store and isinstance(data.get("configs"), dict):
            entries = {k: v for k, v in data["configs"].items() if isinstance(v, list)}
        else:
            raise ValueError("not this module's tuning file")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as e:  # damaged: rebuilt on the next save
        log.warning("ioaware: tuning cache %s is damaged (%s); its configs are tuned again",
                    path.name, e)
    _stored[store] = entries
    return entries


def stored_config(store: str, key: Hashable, configs: Sequence[Any]) -> Any | None:
    """The config stored for size class `key` of module `store`, if it is one of
    `configs` (today's candidates), else None."""
    with _store_lock:
        value = _read(store).get(_entry_key(key))
    if value is None:
        return None
    for candidate in configs:
        if list(candidate) == value:
            return candidate
    return None


def save_config(store: str, key: Hashable, config: Any) -> None:
    """Record `config` for size class `key` of module `store`, in memory and on disk (a
    directory that cannot be written keeps it in memory, with a debug line)."""
    with _store_lock:
        entries = _read(store)
        entries[_entry_key(key)] = list(config)
        text = json.dumps({"module": store, "configs": entries}, indent=1, sort_keys=True)
        try:
            write_atomic(tuning_path(store), text)
        except OSError as e:
            log.debug("ioaware: tuning cache not written (%s)", e)


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
