"""ScanSpec: what the scan kernels are generated from.

A pass builds it from a matched recurrence (passes/scan/plan.py); the templates render
from it alone; `key()` is its part of the kernel cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ioaware.spec import DTYPES, TextEnum


class ScanKind(TextEnum):
    """Which scan op a ScanSpec renders: `ioaware::selective_scan` or `ioaware::linear_scan`."""

    SELECTIVE = "selective"
    LINEAR = "linear"


SCAN_KINDS = tuple(k.value for k in ScanKind)


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """A first-order diagonal linear recurrence computed by one fused scan kernel.

    kind "selective" (Mamba's selective scan, `ioaware::selective_scan`), per batch b and
    channel d with dt_t = softplus?(delta_t + delta_bias[d]):

        h_t[n] = exp(dt_t · A[d, n]) · h_{t-1}[n] + dt_t · B_t[g, n] · u_t
        y_t    = Σ_n C_t[g, n] · h_t[n] + D[d] · u_t,   then y_t ·= silu(z_t)

    u, delta, z: [Bt, Dc, L]; A: [Dc, N]; B, C: [Bt, G, L, N], g = d // (Dc / G).

    kind "linear" (`ioaware::linear_scan`): h_t = a_t · h_{t-1} + b_t along L of
    a, b: [R, L, F] (from the end when `reverse`).

    State arithmetic is fp32 in both. Sizes (Bt, Dc, G, L, R, F) and strides are runtime
    values; the fields are what changes the generated source: which optional inputs the
    kernel reads, the state width, the direction and the dtypes.
    """

    kind: ScanKind
    dtype: str  # u (selective) or the output h (linear); a key of DTYPES
    d_state: int = 1  # N; 1 for kind "linear"
    delta_dtype: str = "float32"  # selective only
    bc_dtype: str = "float32"  # B and C; selective only
    has_D: bool = False
    has_z: bool = False
    has_delta_bias: bool = False
    delta_softplus: bool = False
    has_h0: bool = False
    reverse: bool = False  # linear only

    def __post_init__(self) -> None:
        if self.kind not in SCAN_KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {SCAN_KINDS}")
        object.__setattr__(self, "kind", ScanKind(self.kind))
        for name in ("dtype", "delta_dtype", "bc_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of "
                                 f"{sorted(DTYPES)}")
        if not 1 <= self.d_state <= 256:
            raise ValueError(f"d_state={self.d_state} must be between 1 and 256")
        if self.kind == "linear" and self.d_state != 1:
            raise ValueError(f"d_state={self.d_state} must be 1 for kind 'linear'")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]
