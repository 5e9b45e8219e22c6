"""The attention match record: what a matcher found and the rewrite needs, and the small
guards every attention matcher shares.

Layouts: how the kernel reads q, k, v. `ZKD`: the bmm's own 3-D operands [Z, N, D] (k as
Kᵀ [Z, D, N]), unsqueezed to B = 1 and the output squeezed back. `BHND`: the 4-D
[B, H, N, D] tensors the bmm operands were flattened from (or [B·H] split by a view of
the scores), the output flattened back to [B·H, N, D]. `SDPA`: SDPA's own operands and
output.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.spec import MaskSemantics
from ioaware.passes.attention import masks
from ioaware.spec import TextEnum

aten = torch.ops.aten

CAST_OPS = {aten._to_copy.default}
WHERE_OPS = {aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}
MASKED_FILL_OPS = {aten.masked_fill.Scalar, aten.masked_fill.Tensor}
ADD_OPS = {aten.add.Tensor, aten.sub.Tensor}
QK_OPS = {aten.bmm.default, aten.baddbmm.default}
RESHAPE_OPS = {aten.reshape.default, aten.view.default, aten._unsafe_view.default}


class Source(TextEnum):
    """What the region was: softmax-anchored matmuls, or one SDPA call."""

    MATMUL = "matmul"
    SDPA = "sdpa"


class Layout(TextEnum):
    """How the kernel reads q, k, v (see the module docstring)."""

    ZKD = "zkd"
    BHND = "bhnd"
    SDPA = "sdpa"


@dataclasses.dataclass
class Modifications:
    """What the region computes besides softmax(scale·QKᵀ)V, over (b, h, q_idx, kv_idx)."""

    causal: bool = False
    mask: sympy.Basic | None = None  # allowed-keys predicate besides `causal`
    score_mod: sympy.Basic | None = None  # in SCORE = scale·q·k
    semantics: MaskSemantics = MaskSemantics.NEG_INF
    fill: float = float("-inf")
    data: masks.DataInputs = dataclasses.field(default_factory=masks.DataInputs)
    dropout_p: float = 0.0
    # a bias or tanh applied to 16-bit scores: eager rounds the logit to that dtype
    rounded: bool = False
    # an additive mask added in a 16-bit dtype: eager rounds the masked sum to it
    fill_rounded: bool = False

    @property
    def general(self) -> bool:
        """True when only the general `ioaware::attention` op can express this."""
        return (self.mask is not None or self.score_mod is not None or self.dropout_p > 0
                or bool(self.data.nodes) or bool(self.data.sizes))


@dataclasses.dataclass
class AttentionMatch:
    """Everything the rewrite needs; q/k/v are graph nodes or builders of them."""

    q: Any  # fx.Node, or a callable(graph) -> fx.Node that builds it
    k: Any
    v: Any
    layout: Layout
    scale: float
    mask: str  # the structure's name for explain: "none", "causal", "causal & padding", ...
    output: fx.Node  # the node whose value the kernel's output replaces
    region: list[fx.Node]  # nodes of the eager region (for costing and the report)
    source: Source
    dims: dict[str, int]  # hinted B, Hq, Hkv, Nq, Nk, D, Dv
    dtype: torch.dtype
    mods: Modifications = dataclasses.field(default_factory=Modifications)
    # what runs: "generated" (the kernels) or an SDPA backend the attention pass measured
    # faster ("cudnn", "flash", "efficient"; passes/attention/choice.py)
    implementation: str = "generated"
    # FP8 operands read at their source (passes/attention/fp8.py): name -> Dequant, in
    # q, k, v order; or why the region's FP8 dequantization stays as it was
    fp8: dict[str, Any] = dataclasses.field(default_factory=dict)
    fp8_refused: str | None = None


def fake_value(node: fx.Node) -> Any:
    return node.meta.get("val")


def single_user(node: fx.Node) -> bool:
    return len(node.users) == 1


def _scalar_arg(x: Any) -> float | None:
    """A Python number (not a tensor, not symbolic) or None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    return None


def scale_of(node: fx.Node) -> float | None:
    """The factor of a `mul(x, c)` / `div(x, c)` by a Python scalar c, else None."""
    if node.op != "call_function":
        return None
    if node.target in (aten.mul.Tensor, aten.mul.Scalar):
        return _scalar_arg(node.args[1])
    if node.target in (aten.div.Tensor, aten.div.Scalar) and not node.kwargs.get("rounding_mode"):
        c = _scalar_arg(node.args[1])
        return None if not c else 1.0 / c
    return None
