"""ioaware in torch's logging: `TORCH_LOGS=ioaware` and structured trace artifacts.

    TORCH_LOGS=ioaware              each graph's decisions at INFO (rewrites, fallbacks)
    TORCH_LOGS=+ioaware             and every pass's matches and reasons at DEBUG
    TORCH_LOGS=+dynamo,ioaware,graph_breaks,recompiles   composes with torch's own
    TORCH_TRACE=/tmp/trace          `ioaware_decisions` artifacts beside Inductor's, per
                                    graph, for tlparse

Every ioaware logger lives under "ioaware" (the backend's, `ioaware.passes.<name>`,
...), registered with torch as the log "ioaware" so that TORCH_LOGS and
`torch._logging.set_logs(modules={"ioaware": logging.DEBUG})` reach it with torch's
format and handlers. torch reads TORCH_LOGS when it is imported, before ioaware can
register; it takes a name it does not know for a module to log, and "ioaware" is that
module, so the variable works either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("ioaware")

ARTIFACT = "ioaware_decisions"


def register() -> None:
    """Register the "ioaware" log with torch's logging (once, at import)."""
    try:
        from torch._logging import _internal
    except ImportError:  # a torch without the logging registry: plain logging still works
        return
    _internal.register_log("ioaware", "ioaware")


def decisions(graph: int, rewrites: Sequence[Any], fallbacks: Sequence[Any],
              seconds: dict[str, float]) -> dict[str, Any]:
    """One graph's decisions as JSON-ready data: each rewrite (kind, what was inferred,
    modelled HBM bytes before and after, FLOPs, how it runs) and each fallback's reason."""
    def plain(record: Any) -> dict[str, Any]:
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
                if f.name not in ("cost_before", "cost_after")}

    return {"graph": graph, "rewrites": [plain(r) for r in rewrites],
            "fallbacks": [plain(f) for f in fallbacks],
            "pass_seconds": {k: round(v, 4) for k, v in seconds.items()}}


def report_graph(graph: int, rewrites: Sequence[Any], fallbacks: Sequence[Any],
                 seconds: dict[str, float]) -> None:
    """Log one graph's decisions (INFO) and emit them as a structured trace artifact."""
    if log.isEnabledFor(logging.INFO):
        kinds = ", ".join(f"{r.kind} ({_describe(r)})" for r in rewrites) or "none"
        log.info("graph %d: rewrote %d region(s): %s; left %d", graph, len(rewrites), kinds,
                 len(fallbacks))
        for f in fallbacks:
            log.info("graph %d: left %s: %s", graph, f.kind, f.reason)
    try:
        from torch._logging import trace_structured
    except ImportError:
        return
    trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": ARTIFACT, "encoding": "json"},
        payload_fn=lambda: json.dumps(decisions(graph, rewrites, fallbacks, seconds),
                                      default=str, indent=1),
    )


def _describe(rewrite: Any) -> str:
    detail = rewrite.detail or {}
    shown = {k: v for k, v in detail.items() if k in ("structure", "mask", "plan", "spelling")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or rewrite.backend
