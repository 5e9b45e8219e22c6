"""Shapes and values under stress (issue 14): a model whose sequence length changes 20
times, with automatic dynamic shapes and with dynamic=True (no wrong result, a bounded
number of recompiles); inf and NaN inputs propagate as in eager; fp16 logits near the
dtype's limit (a scale of 1e4) do not overflow where eager does not."""

from __future__ import annotations

import pytest
import torch
from eager_compare import compare

import ioaware

INF = float("-inf")
# 20 lengths, 1 and non-powers of two among them, not in order
LENGTHS = [7, 1, 16, 3, 33, 12, 2, 40, 5, 9, 24, 17, 31, 4, 13, 8, 27, 6, 19, 11]
# dynamo's graphs for the 20 lengths: automatic dynamic compiles the first length
# static, the second as dynamic; length 1 is specialised (a broadcastable size) and so
# is 2 under some torch versions; the backward graphs are not counted (they follow).
MAX_GRAPHS = 4


class Block(torch.nn.Module):
    """Projections, causal attention with a padding mask, an output projection."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        s = s.masked_fill(~(causal & keep[:, None, None, :]), INF)
        o = torch.softmax(s, -1) @ v
        return self.out(o.transpose(1, 2).reshape(b, n, dim))


@pytest.mark.parametrize("dynamic", [None, True], ids=["automatic", "dynamic"])
def test_sequence_length_changes_twenty_times(interpret, dynamic):
    torch.manual_seed(0)
    model = Block()
    backend_calls = []
    torch._dynamo.reset()

    def counting(gm, example_inputs):
        backend_calls.append(len(example_inputs))
        return backend(gm, example_inputs)

    from ioaware.backend import IoawareBackend

    backend = IoawareBackend()
    compiled = torch.compile(model, backend=counting, dynamic=dynamic)
    wrong = []
    for i, n in enumerate(LENGTHS):
        # gradients for every fifth length: the interpreter's backward is the slow part
        x = torch.randn(2, n, 16, requires_grad=i % 5 == 0)
        keep = torch.ones(2, n, dtype=torch.bool)
        keep[1, : n // 3] = False  # left padding: rows of no visible key when n >= 3
        problems = compare(model, (x, keep), torch.float32, compiled)
        if problems:
            wrong.append((n, problems))
    assert not wrong
    assert backend.explanation.rewrites, backend.explanation
    print(f"[{dynamic=}] {len(backend_calls)} graphs for {len(LENGTHS)} lengths")
    assert len(backend_calls) <= MAX_GRAPHS, backend_calls


def _attention(q, k, v):
    s = q @ k.transpose(-2, -1) * 0.25
    causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    return torch.softmax(s.masked_fill(~causal, INF), -1) @ v


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _biased(q, k, v, bias):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25 + bias, -1) @ v


@pytest.mark.parametrize("where", ["q", "k", "v", "bias"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
def test_inf_and_nan_inputs_propagate_as_eager(interpret, where, value):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen) for _ in range(3))
    bias = torch.randn(1, 2, 8, 8, generator=gen)
    tensors = {"q": q, "k": k, "v": v, "bias": bias}
    tensors[where][0, 1, 3, 5] = value
    # Outputs only: eager's gradients for a NaN or inf input carry the NaN of 0·NaN
    # products that depend on the spelling (a masked_fill's zeroed gradient times a NaN
    # query gives one NaN element per key); the kernels spread it per row and kv head
    # instead. Reported in docs/reliability.md as a known difference.
    for fn, args in ((_attention, (q, k, v)), (_sdpa, (q, k, v)), (_biased, (q, k, v, bias))):
        if where == "bias" and fn is not _biased:
            continue
        torch._dynamo.reset()
        assert compare(fn, args, torch.float32) == [], fn.__name__


def _scaled(scale):
    def fn(q, k, v):
        s = (q @ k.transpose(-2, -1)) * scale
        return torch.softmax(s.float(), -1).to(v.dtype) @ v
    return fn


@pytest.mark.parametrize("scale", [1e4, 2e4])
def test_fp16_logits_near_the_limit(interpret, scale):
    gen = torch.Generator().manual_seed(0)
    # |q·k| up to ~3: 3e4 and 6e4 stay below fp16's 65504 in eager
    q, k = ((torch.rand(1, 2, 8, 16, generator=gen) * 0.4).half().requires_grad_()
            for _ in range(2))
    v = torch.randn(1, 2, 8, 16, generator=gen).half().requires_grad_()
    fn = _scaled(scale)
    with torch.no_grad():
        assert torch.isfinite(q @ k.transpose(-2, -1) * scale).all()  # eager does not overflow
    expl = ioaware.explain(fn, q, k, v)
    assert expl.rewrites, expl
    torch._dynamo.reset()
    assert compare(fn, (q, k, v), torch.float16) == []
