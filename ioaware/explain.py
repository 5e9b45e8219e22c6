"""What the compiler did and why: rewrites, fallbacks, and the bytes each one moves.

`ioaware.explain(fn_or_module, *args, **kwargs)` compiles once (without running the
rewritten graph) and returns an `Explanation`; `str()` of it is a table.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Rewrite:
    """One region replaced by a generated kernel.

    kind: "attention" or "scan".  detail: what was inferred, e.g. {"mask": "causal"}, and
        "tiles": the tile the kernel is priced at (tiles.attention_tile / scan_tile on the
        pass's profile, e.g. {"block_m": 128, "block_n": 128, "num_warps": 8,
        "num_stages": 2}); cost_after and hbm_bytes_after are for that tile.
    hbm_bytes_before / after: modelled HBM traffic of the region unfused / fused (bytes).
    flops: modelled FLOPs of the generated kernel (a fused multiply-add counts 2).
    flops_before: modelled FLOPs of the eager region (a causal eager region also
        computes the masked half of QKᵀ and PV, so this is larger than `flops`).
    backend: how the kernel runs here: "triton" (GPU), "triton-interpret" or "reference".
    cost_before / cost_after: the symbolic `cost.Cost` of the region and of its kernel,
        which the numbers above evaluate (the report prints their formulas and splits).
    """

    kind: str
    detail: dict[str, Any]
    hbm_bytes_before: int
    hbm_bytes_after: int
    flops: int
    backend: str
    flops_before: int | None = None
    graph: int = 0  # index of the captured graph (dynamo may split a function into several)
    cost_before: Any = dataclasses.field(default=None, repr=False, compare=False)
    cost_after: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class Fallback:
    """A candidate region left as it was, with the reason (which node, what was expected)."""

    kind: str
    reason: str
    graph: int = 0


@dataclasses.dataclass
class Explanation:
    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    fallbacks: list[Fallback] = dataclasses.field(default_factory=list)
    graphs: int = 0  # how many graphs dynamo captured
    # wall-clock seconds each pass took (matching, pricing, rewriting), summed over graphs
    pass_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def hbm_bytes_before(self) -> int:
        return sum(r.hbm_bytes_before for r in self.rewrites)

    @property
    def hbm_bytes_after(self) -> int:
        return sum(r.hbm_bytes_after for r in self.rewrites)

    def __str__(self) -> str:
        from ioaware.tables import render_explanation

        return render_explanation(self)
