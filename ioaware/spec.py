"""Specs: the one interface between passes and codegen.

A pass turns a matched region into a frozen, hashable Spec; codegen renders Triton
source from the Spec alone. A Spec carries everything that changes the generated code
and nothing else, so `spec.key()` is the kernel cache key (together with the versions
and the device, which codegen adds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"dtype={dtype} is not supported; expected one of {sorted(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Exact attention `softmax(scale * Q Kᵀ + mask) V` over the last two axes.

    Shapes the generated kernel accepts (any strides):
      q: [B, Hq, Nq, head_dim]    k: [B, Hkv, Nk, head_dim]    v: [B, Hkv, Nk, head_dim_v]
      out: [B, Hq, Nq, head_dim_v] in `dtype`;  lse: [B, Hq, Nq] float32 (natural log)
    with Hq a multiple of Hkv (GQA: query head h reads key/value head h // (Hq // Hkv)).

    causal: key j is visible to query i iff j <= i (top-left aligned, as
    `torch.ones(Nq, Nk).tril()` and SDPA's `is_causal=True` define it).
    Sequence lengths and batch/head counts are runtime values, not part of the Spec.
    """

    head_dim: int
    head_dim_v: int
    dtype: str  # a key of DTYPES
    causal: bool
    scale: float

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        for name in ("head_dim", "head_dim_v"):
            d = getattr(self, name)
            if not 1 <= d <= 256:
                raise ValueError(f"{name}={d} must be between 1 and 256")
        if not self.scale > 0:
            raise ValueError(f"scale={self.scale} must be positive")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]
