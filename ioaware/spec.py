"""What every Spec shares: the dtypes, the text enums, the expression grammar.

Specs are the one interface between passes and codegen. A pass turns a matched region
into a frozen, hashable Spec; codegen renders Triton source from the Spec alone. A Spec
carries everything that changes the generated code and nothing else, so `spec.key()` is
the kernel cache key (together with the versions, the device and its profile, which
codegen adds). Each kernel family defines its own Spec beside its kernels
(`codegen/attention/spec.py`, `codegen/scan/spec.py`); this module holds what they and
the passes share: the dtypes a kernel takes, `TextEnum`, and the symbols and extra-tensor
inputs that mask and score expressions are written in.
"""

from __future__ import annotations

import dataclasses
import enum

import sympy
import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

# dtypes an extra kernel input (per-token vector, bias, table) may have
INPUT_DTYPES = {
    **DTYPES,
    "bool": torch.bool,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}

# The symbols mask and score expressions are written in. Index symbols are integers;
# `score` is the scaled logit `scale * q·k` of one (b, h, q_idx, kv_idx) element.
B_IDX, H_IDX, Q_IDX, KV_IDX = sympy.symbols("b h q_idx kv_idx", integer=True)
SCORE = sympy.Symbol("score", real=True)


class TextEnum(str, enum.Enum):
    """An enum whose members are their text: equal to it, hashed, printed and written to
    JSON as it, so a Spec read back from JSON (plain text) equals the one a pass built,
    and `spec.key()` is what it was when these fields were strings."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # a rendered module's docstring prints Spec fields by repr
        return repr(self.value)


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"dtype={dtype} is not supported; expected one of {sorted(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class TensorInput:
    """An extra tensor a generated kernel reads, named in mask / score expressions.

    The kernel reads it through its own strides at runtime (a broadcast view with
    stride 0 costs nothing). `requires_grad` says the backward must produce its
    gradient (a learned bias or relative-position table).
    """

    name: str  # a Python identifier, used as `name[i0, i1, ...]` in expressions
    ndim: int
    dtype: str  # a key of INPUT_DTYPES
    requires_grad: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"TensorInput name={self.name!r} must be a Python identifier")
        if self.dtype not in INPUT_DTYPES:
            raise ValueError(f"TensorInput dtype={self.dtype!r} must be one of "
                             f"{sorted(INPUT_DTYPES)}")
