"""AttentionSpec: what the attention kernels are generated from.

A pass builds it from a matched region (passes/attention/rewrite.py); the templates
render from it alone; `key()` is its part of the kernel cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import sympy
import torch

from ioaware.spec import (
    B_IDX,
    DTYPES,
    H_IDX,
    KV_IDX,
    Q_IDX,
    SCORE,
    TensorInput,
    TextEnum,
)


class MaskSemantics(TextEnum):
    """How masked elements behave, which decides what a row with no visible key gives.

    NEG_INF: the masked logit is set to -inf (masked_fill(-inf), where(m, s, -inf)): such
        a row is NaN, as eager softmax gives; its v gradient is NaN, but the gradient of
        the masked scores is 0 (the fill's backward zeroes it), so q and k get none
        from it, as in eager.
    NEG_INF_ADD: -inf is added to the masked logit (scores + where(m, 0, -inf)): the row
        is NaN and, as in eager, the NaN reaches the q, k and v gradients (dQ's row,
        the dK and dV of every kv head the row reads).
    SAFE: as SDPA's bool attn_mask: such a row outputs 0 and passes no gradient.
    FILL: the masked logit is replaced by `mask_fill` (masked_fill(finfo.min)).
    ADD: `mask_fill` is added to the masked logit (scores + where(m, 0, min)); its
        gradient still reaches the score, as in eager.
    """

    NEG_INF = "neg_inf"
    NEG_INF_ADD = "neg_inf_add"
    SAFE = "safe"
    FILL = "fill"
    ADD = "add"


MASK_SEMANTICS = tuple(s.value for s in MaskSemantics)

# AttentionSpec.fp8: which operands arrive in float8_e4m3fn ("" for none).
FP8_OPERANDS = ("", "q", "k", "v", "qk", "qv", "kv", "qkv")
FP8_DTYPE = torch.float8_e4m3fn


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

    FP8 (issue 15, item 4). `fp8` names the operands that arrive as float8_e4m3fn
    tensors with a per-tensor fp32 scale ("qkv", "kv", ...; "" for none), so that the
    operand attention reads is x = x8 · s_x. Then `dtype` is the output's (and any
    16-bit operand's) dtype, and the logit is scale · (s_q s_k) · q8_i·k8_j, and
    out = P (V8 · s_v). The scales follow the Spec's `inputs` in the op's inputs list,
    one one-element fp32 tensor per letter of `fp8`, in its order. Forward only.
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
    # a bias or tanh ran in the 16-bit `dtype` in eager: the logit is rounded to it
    # (s + finfo.min in fp16 moves in steps of 32, or to -inf), which decides what a
    # row with no visible key gives; round_fill: the same for an additive mask's sum
    # (an `add` mask added in 16 bits, not through an fp32 tensor of fills)
    round_logits: bool = False
    round_fill: bool = False
    fp8: str = ""  # the float8_e4m3fn operands among "qkv", in that order (see above)

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
        if self.fp8 not in FP8_OPERANDS:
            raise ValueError(f"fp8={self.fp8!r} must name operands among 'qkv' in order, "
                             f"one of {FP8_OPERANDS}")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"inputs names must be distinct; got {names}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def operand_dtype(self, name: str) -> torch.dtype:
        """The dtype the kernel reads operand `name` ("q", "k" or "v") in."""
        return FP8_DTYPE if name in self.fp8 else DTYPES[self.dtype]

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
        """Every field as JSON; `from_json` inverts it (the custom op's spec argument).
        `fp8` is written only when set, so the keys of every 16-bit Spec (kernel caches,
        tuning records) are what they were before the field existed."""
        fields = dataclasses.asdict(self)
        if not self.fp8:
            del fields["fp8"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttentionSpec:
        fields = json.loads(text)
        fields["inputs"] = tuple(TensorInput(**t) for t in fields.get("inputs", ()))
        return cls(**fields)

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]
