"""Masks and biases for the context-parallel tests, with their eager (float64) attention.

Each case is a global problem: an AttentionSpec over global positions, its input
tensors, a layout kind, and the same attention written directly in torch. Shared by
tests/interp/test_shard_attention.py (one process, shard pairs by hand) and
tests/distributed/ (the ring over gloo).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel import (
    balanced_layout,
    contiguous_layout,
    document_row_work,
    zigzag_layout,
)
from ioaware.spec import TensorInput
from ioaware.verify import relative_error

TOLERANCE = 1e-4  # ‖a − b‖ / ‖b‖, fp32 kernels against float64 eager


@dataclasses.dataclass
class Case:
    name: str
    spec: AttentionSpec
    tensors: dict[str, torch.Tensor]  # global inputs, in spec.inputs order
    visible: Callable  # (b, h, i, j, tensors) -> bool grid (causal included)
    mod: Callable | None  # (s, b, h, i, j, tensors) -> logits
    layout: str  # "zigzag", "contiguous" or "work"
    batch: int
    seq_len: int

    def make_layout(self, world: int):
        if self.layout == "zigzag":
            return zigzag_layout(self.seq_len, world)
        if self.layout == "contiguous":
            return contiguous_layout(self.seq_len, world)
        return balanced_layout(document_row_work(self.tensors["doc"][0]).float(), world)


HQ, HKV, D = 2, 1, 16  # GQA group of 2


def _spec(causal=False, mask=None, score_mod=None, inputs=()) -> AttentionSpec:
    return AttentionSpec(head_dim=D, head_dim_v=D, dtype="float32", causal=causal,
                         scale=1 / math.sqrt(D), mask=mask, score_mod=score_mod,
                         inputs=tuple(inputs))


def cases(seq_len: int) -> list[Case]:
    """Causal, window, document, padding, ALiBi and a learned bias at this length."""
    gen = torch.Generator().manual_seed(seq_len)
    s = seq_len
    def causal(b, h, i, j, t):
        return j <= i

    doc = torch.zeros(1, s, dtype=torch.int64)
    for cut in (s // 5, s // 2 + 1):  # three documents of unequal lengths
        doc[:, cut:] += 1
    pad = torch.ones(2, s, dtype=torch.bool)
    pad[1, s - s // 3:] = False  # the second sequence's last third is padding
    slopes = torch.tensor([0.5, 0.125])
    bias = torch.randn(1, HQ, s, s, generator=gen)
    return [
        Case("causal", _spec(causal=True), {}, causal, None, "zigzag", 1, s),
        Case("window", _spec(causal=True, mask="q_idx - kv_idx < 5"), {},
             lambda b, h, i, j, t: (j <= i) & (i - j < 5), None, "zigzag", 1, s),
        Case("document", _spec(causal=True, mask="Eq(doc[b, q_idx], doc[b, kv_idx])",
                               inputs=[TensorInput("doc", 2, "int64")]), {"doc": doc},
             lambda b, h, i, j, t: (j <= i) & (t["doc"][b, i] == t["doc"][b, j]), None,
             "work", 1, s),
        Case("padding", _spec(mask="Ne(pad[b, kv_idx], 0)",
                              inputs=[TensorInput("pad", 2, "bool")]), {"pad": pad},
             lambda b, h, i, j, t: t["pad"][b, j], None, "contiguous", 2, s),
        Case("alibi", _spec(causal=True, score_mod="score + slopes[h]*(kv_idx - q_idx)",
                            inputs=[TensorInput("slopes", 1, "float32")]),
             {"slopes": slopes}, causal,
             lambda x, b, h, i, j, t: x + t["slopes"][h] * (j - i), "zigzag", 1, s),
        Case("bias", _spec(score_mod="score + bias[0, h, q_idx, kv_idx]",
                           inputs=[TensorInput("bias", 4, "float32", requires_grad=True)]),
             {"bias": bias}, lambda b, h, i, j, t: torch.ones((), dtype=torch.bool),
             lambda x, b, h, i, j, t: x + t["bias"][0, h, i, j], "contiguous", 1, s),
    ]


def problem(case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    """(q, k, v, dout): global fp32 tensors [B, H, S, D]."""
    gen = torch.Generator().manual_seed(seed)
    b, s = case.batch, case.seq_len
    q = torch.randn(b, HQ, s, D, generator=gen)
    k = torch.randn(b, HKV, s, D, generator=gen)
    v = torch.randn(b, HKV, s, D, generator=gen)
    dout = torch.randn(b, HQ, s, D, generator=gen)
    return q, k, v, dout


def eager(case: Case, q, k, v, tensors) -> torch.Tensor:
    """The case's attention in plain torch (float64 in, float64 out), differentiable."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1)
    v = v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) * case.spec.scale
    b = torch.arange(q.shape[0]).view(-1, 1, 1, 1)
    h = torch.arange(q.shape[1]).view(1, -1, 1, 1)
    i = torch.arange(q.shape[2]).view(1, 1, -1, 1)
    j = torch.arange(k.shape[2]).view(1, 1, 1, -1)
    if case.mod is not None:
        s = case.mod(s, b, h, i, j, tensors)
    s = s.masked_fill(~case.visible(b, h, i, j, tensors), float("-inf"))
    return torch.softmax(s, -1) @ v


def eager_grads(case: Case, q, k, v, dout) -> dict[str, torch.Tensor]:
    """out and the gradients of q, k, v (and of each learned input) of sum(out · dout)."""
    leaves = {n: x.double().requires_grad_(True) for n, x in (("q", q), ("k", k), ("v", v))}
    tensors = {}
    for t in case.spec.inputs:
        x = case.tensors[t.name]
        x = x.double() if x.is_floating_point() else x
        tensors[t.name] = x.requires_grad_(True) if t.requires_grad else x
        if t.requires_grad:
            leaves[t.name] = tensors[t.name]
    out = eager(case, leaves["q"], leaves["k"], leaves["v"], tensors)
    (out * dout.double()).sum().backward()
    return {"out": out.detach(), **{n: x.grad for n, x in leaves.items()}}


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    err = relative_error(got.double(), want.double())
    assert err <= TOLERANCE, f"{name}: relative error {err:.2e} > {TOLERANCE}"
