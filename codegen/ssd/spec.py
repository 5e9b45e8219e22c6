"""SSDSpec: what the chunked SSD (Mamba-2) kernels are generated from.

The pass (passes/ssd/) or a direct call of `ioaware.codegen.ssd.op.ssd` builds it from
the operands; the templates render from it alone; `key()` is its part of the cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from ioaware.spec import DTYPES

MAX_HEAD_DIM = 256
MAX_D_STATE = 256
BACKWARDS = ("sequential", "chunked")


@dataclasses.dataclass(frozen=True)
class SSDSpec:
    """Mamba-2's state-space dual (Dao & Gu 2024, §6) as chunked Triton kernels.

    Per batch b and head h, with g = h // (H / G) the group of B and C:

        dt_t  = clamp(softplus?(dt_raw_t + dt_bias[h]), dt_min, dt_max)   scalar
        S_t   = exp(dt_t · A[h]) · S_{t-1} + dt_t · x_t B_tᵀ            [P, N] fp32
        y_t   = S_t C_t + D[h] · x_t                                     [P]

    x: [Bt, L, H, P], dt: [Bt, L, H], A: [H], B, C: [Bt, L, G, N], S_{-1} = h0 or 0.
    The fields are what changes the generated source: dtypes (the tensor-core operand
    type), the padded tile widths of P and N, and which optional parts are fused.
    Sizes Bt, L, H, G and strides are runtime values.
    """

    dtype: str  # x and y; the dtype of the tensor-core operands
    head_dim: int  # P
    d_state: int  # N
    dt_dtype: str = "float32"
    bc_dtype: str = "float32"
    has_D: bool = False
    has_dt_bias: bool = False
    dt_softplus: bool = False
    has_h0: bool = False
    dt_min: float = -math.inf  # dt clamped to [dt_min, dt_max] after softplus
    dt_max: float = math.inf
    bc_atomic: bool = False  # backward: dB, dC summed over a group's heads by atomic adds
    backward: str = "sequential"  # backward: "sequential" or "chunked" (backward.py)

    def __post_init__(self) -> None:
        for name in ("dtype", "dt_dtype", "bc_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of "
                                 f"{sorted(DTYPES)}")
        if not 1 <= self.head_dim <= MAX_HEAD_DIM:
            raise ValueError(f"head_dim={self.head_dim} must be between 1 and {MAX_HEAD_DIM}")
        if not self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min={self.dt_min} must not exceed dt_max={self.dt_max}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward={self.backward!r} must be one of {BACKWARDS}")
        if not 1 <= self.d_state <= MAX_D_STATE:
            raise ValueError(f"d_state={self.d_state} must be between 1 and {MAX_D_STATE}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]
