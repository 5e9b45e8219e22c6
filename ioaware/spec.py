"""Specs: the one interface between passes and codegen.

A pass turns a matched region into a frozen, hashable Spec; codegen renders Triton
source from the Spec alone. A Spec carries everything that changes the generated code
and nothing else, so `spec.key()` is the kernel cache key (together with the versions
and the device, which codegen adds).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json

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


class MaskSemantics(TextEnum):
    """How masked elements behave, which decides what a row with no visible key gives.

    NEG_INF: the masked logit is -inf (masked_fill(-inf), tril of -inf): such a row is
        NaN, as eager softmax gives.
    SAFE: as SDPA's bool attn_mask: such a row outputs 0 and passes no gradient.
    FILL: the masked logit is replaced by `mask_fill` (masked_fill(finfo.min)).
    ADD: `mask_fill` is added to the masked logit (scores + where(m, 0, min)); its
        gradient still reaches the score, as in eager.
    """

    NEG_INF = "neg_inf"
    SAFE = "safe"
    FILL = "fill"
    ADD = "add"


MASK_SEMANTICS = tuple(s.value for s in MaskSemantics)


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

    General form (issue 3). With s = scale · q_i·k_j, the logit of element
    (b, h, q_idx, kv_idx) is

        logit = score_mod(s)            if mask holds (and, if causal, kv_idx <= q_idx)
                masked per `mask_semantics` / `mask_fill` otherwise

    then P = softmax over kv_idx of the logits, dropout with probability `dropout_p`
    (kept entries scaled by 1/(1-p), as F.dropout), out = P V.

    mask, score_mod: sympy expressions as text (`str(expr)`, parsed back by
    `mask_expr()` / `score_mod_expr()`), over the integer symbols b, h, q_idx, kv_idx,
    the real symbol `score` (score_mod only), and loads `name[i0, ...]` of `inputs`
    whose indices are expressions in the same symbols. Functions allowed: the
    relationals, And/Or/Not, Piecewise, Min/Max, Abs, floor, Mod, exp, log, tanh.
    None means "no mask" / "identity". The extra tensors are passed to the op in the
    order of `inputs`.
    """

    head_dim: int
    head_dim_v: int
    dtype: str  # a key of DTYPES
    causal: bool
    scale: float
    mask: str | None = None
    score_mod: str | None = None
    inputs: tuple[TensorInput, ...] = ()
    mask_semantics: MaskSemantics = MaskSemantics.NEG_INF
    mask_fill: float = float("-inf")
    dropout_p: float = 0.0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        for name in ("head_dim", "head_dim_v"):
            d = getattr(self, name)
            if not 1 <= d <= 256:
                raise ValueError(f"{name}={d} must be between 1 and 256")
        if not self.scale > 0:
            raise ValueError(f"scale={self.scale} must be positive")
        if self.mask_semantics not in MASK_SEMANTICS:
            raise ValueError(f"mask_semantics={self.mask_semantics!r} must be one of "
                             f"{MASK_SEMANTICS}")
        # text read back from JSON becomes the member (equal to it either way)
        object.__setattr__(self, "mask_semantics", MaskSemantics(self.mask_semantics))
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"dropout_p={self.dropout_p} must be in [0, 1)")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"inputs names must be distinct; got {names}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def _namespace(self) -> dict:
        ns = {"b": B_IDX, "h": H_IDX, "q_idx": Q_IDX, "kv_idx": KV_IDX, "score": SCORE}
        ns.update({t.name: sympy.IndexedBase(t.name) for t in self.inputs})
        return ns

    def mask_expr(self) -> sympy.Basic | None:
        """`mask` parsed back to sympy (None when there is no mask)."""
        return None if self.mask is None else sympy.sympify(self.mask, locals=self._namespace())

    def score_mod_expr(self) -> sympy.Basic | None:
        """`score_mod` parsed back to sympy (None when the logit is the score itself)."""
        if self.score_mod is None:
            return None
        return sympy.sympify(self.score_mod, locals=self._namespace())

    def to_json(self) -> str:
        """Every field as JSON; `from_json` inverts it (the custom op's spec argument)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttentionSpec:
        fields = json.loads(text)
        fields["inputs"] = tuple(TensorInput(**t) for t in fields.get("inputs", ()))
        return cls(**fields)

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]


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
