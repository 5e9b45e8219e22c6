"""`mode` and `options` for Inductor, turned into its config exactly as torch.compile does.

torch.compile(model, mode=..., options=...) with the Inductor backend builds a
`torch._TorchCompileInductorWrapper`, whose `config` is the patch dict it hands to
`compile_fx(..., config_patches=...)`: `list_mode_options(mode, dynamic)` first
("reduce-overhead" -> {"triton.cudagraphs": True}, "max-autotune" -> max_autotune,
coordinate descent and cudagraphs), then `options` checked name by name against
`torch._inductor.config` (and by type). ioaware hands the graph it rewrote to Inductor,
so it builds the same wrapper and passes the same patches: a mode or option means
what it means to torch.compile. A named backend (`backend="ioaware"`) receives them
as keyword arguments from torch.compile's `_TorchCompileWrapper`.

On the CPU the rewritten graph runs as plain fx (no Inductor): the patches are checked
the same way and have nothing to act on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch


def inductor_patches(mode: str | None, options: dict[str, Any] | None,
                     dynamic: bool | None = None) -> dict[str, Any]:
    """The Inductor config patches torch.compile derives from `mode` and `options`.

    Raises the RuntimeError torch.compile raises for a bad mode, an unknown option or a
    value of the wrong type, with the argument named first; and torch.compile's own
    error when both are given.
    """
    if mode is not None and options is not None:
        # torch.compile's own words, for any backend.
        raise RuntimeError("Either mode or options can be specified, but both can't be "
                           "specified at the same time.")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"mode must be a string such as 'reduce-overhead'; got "
                        f"{type(mode).__name__}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of Inductor config names to values; got "
                        f"{type(options).__name__}")
    options = dict(options) if options else None
    try:
        wrapper = torch._TorchCompileInductorWrapper(mode, options, dynamic)
    except RuntimeError as e:
        # torch lists every known option after an unknown one (hundreds): keep its first
        # sentence and say where the list is.
        text = str(e).split(", known options are")[0]
        named = f"mode={mode!r}" if mode is not None else "options"
        raise RuntimeError(f"{named}: {text}"
                           + ("; torch._inductor.list_options() lists them"
                              if "known options" in str(e) else "")) from None
    return dict(wrapper.config)


def uses_cudagraphs(patches: dict[str, Any]) -> bool:
    """Whether these patches turn on Inductor's CUDA graphs (cudagraph trees)."""
    if "triton.cudagraphs" in patches:
        return bool(patches["triton.cudagraphs"])
    from torch._inductor import config

    return bool(config.triton.cudagraphs)


def _skip_logger() -> logging.Logger:
    """Where Inductor says why it leaves a graph out of CUDA graphs ("skipping cudagraphs
    due to cpu device (arg3_1)", ...): its `cudagraphs` artifact logger, at WARNING."""
    from torch._inductor import cudagraph_utils

    return getattr(cudagraph_utils, "cudagraphs_log",
                   logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs"))


@contextlib.contextmanager
def cudagraph_skips() -> Iterator[list[str]]:
    """The reasons Inductor gives, while the block runs, for compiling a graph without
    CUDA graphs (the graph then runs as compiled, just not captured). Reasons found
    when the backward compiles (at the first backward) are Inductor's own log's only."""
    reasons: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "cudagraph" in message:
                reasons.append(message)

    logger = _skip_logger()
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
