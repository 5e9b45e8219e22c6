"""GPU tier: on CUDA, Inductor's compiled forward and backward call the kernel ops
(codegen/library.py: `ioaware::<op>_forward` and the backward op, no differentiable op
left), in training and in inference, with outputs and gradients of eager.

Skipped without a CUDA GPU (see tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from eager_compare import inductor_op_calls

import ioaware
from ioaware.codegen import library

pytestmark = pytest.mark.gpu

KERNEL_OPS = {"flash_attention_forward", "flash_attention_backward", "attention_forward",
              "attention_backward"}


def causal_attention(q, k, v):
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    n = q.shape[-2]
    keep = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_inductor_calls_the_kernel_ops(train, monkeypatch):
    assert library.ROUTE == "library"
    monkeypatch.setattr(ioaware.config, "implementations", ("generated",))  # not SDPA's
    torch._dynamo.reset()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, generator=gen, device="cuda")
               .to(torch.bfloat16).requires_grad_(train) for _ in range(3))
    dout = torch.randn(2, 4, 256, 64, generator=gen, device="cuda").to(torch.bfloat16)
    fast = ioaware.compile(causal_attention)

    def step(fn):
        with torch.set_grad_enabled(train):
            out = fn(q, k, v)
            return (out, *torch.autograd.grad(out, (q, k, v), dout)) if train else (out,)

    calls = inductor_op_calls(step, fast, causal_attention, torch.bfloat16)
    assert calls <= KERNEL_OPS, calls  # no differentiable op in Inductor's code
    assert any(c.endswith("_forward") for c in calls), calls
    assert any(c.endswith("_backward") for c in calls) == train, calls
