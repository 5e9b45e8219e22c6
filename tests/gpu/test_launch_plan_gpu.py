"""GPU tier: launch plans (codegen/plan.py) give eager's answers, call after call.

Each op runs forward and backward several times at one signature on fresh random inputs:
the first call runs the body, the next two record, the rest replay. Every call's outputs and gradients are
checked against eager fp32 math (tolerances by dtype), through the op (what Inductor
calls) and through the host function (what a graph run as fx calls), and the plans are
checked to exist (the replays ran)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ioaware.codegen import plan
from ioaware.codegen.attention import host as attention_host
from ioaware.codegen.attention import op as attention_op
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.host import undecorated
from ioaware.codegen.scan import host as scan_host
from ioaware.codegen.scan import op as scan_op
from ioaware.codegen.scan import reference as scan_reference
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.gpu

DTYPE = torch.bfloat16
CALLS = 6  # a first call, two recordings, then replays


def rand(*shape, dtype=DTYPE, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device="cuda") * scale + shift).to(dtype).requires_grad_()


def check(fn, reference, make):
    """CALLS calls of fn on fresh inputs, outputs and gradients against reference's."""
    for _ in range(CALLS):
        inputs = make()
        out = fn(*inputs)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, inputs, dout)
        ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
        ref = reference(*ref_inputs)
        ref_grads = torch.autograd.grad(ref, ref_inputs, dout.float())
        for got, want in zip((out, *grads), (ref, *ref_grads)):
            assert relative_error(got, want) < TOLERANCE[DTYPE]


def window_mask(n, window):
    i = torch.arange(n, device="cuda")
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)


def gqa(q, k, v, mask=None, causal=False):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          scale=0.125)


@pytest.mark.parametrize("path", ["op", "host function"])
def test_plain_attention_replays_match_eager(path):
    plan.forget()
    call = (torch.ops.ioaware.flash_attention if path == "op"
            else attention_host.flash_attention_host)
    check(lambda q, k, v: call(q, k, v, 0.125, True)[0],
          lambda q, k, v: gqa(q, k, v, causal=True),
          lambda: (rand(2, 4, 200, 64), rand(2, 2, 200, 64), rand(2, 2, 200, 64)))
    for body in (attention_op.flash_attention_op, attention_op.flash_attention_backward_op):
        assert any(isinstance(p, plan.Plan) for p in undecorated(body).plans.values())


@pytest.mark.parametrize("path", ["op", "host function"])
def test_window_attention_replays_match_eager(path):
    plan.forget()
    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                         scale=0.125, mask="q_idx - kv_idx < 48").to_json()
    call = torch.ops.ioaware.attention if path == "op" else attention_host.attention_host
    check(lambda q, k, v: call(q, k, v, [], spec)[0],
          lambda q, k, v: gqa(q, k, v, mask=window_mask(q.shape[2], 48)),
          lambda: (rand(1, 2, 160, 64), rand(1, 2, 160, 64), rand(1, 2, 160, 64)))
    for body in (attention_op.attention_op, attention_op.attention_backward_op):
        assert any(isinstance(p, plan.Plan) for p in undecorated(body).plans.values())


@pytest.mark.parametrize("path", ["op", "host function"])
def test_selective_scan_replays_match_eager(path):
    plan.forget()
    call = (torch.ops.ioaware.selective_scan if path == "op"
            else scan_host.selective_scan_host)
    bt, dc, length, n = 2, 64, 96, 16

    def make():
        return (rand(bt, dc, length), rand(bt, dc, length, scale=0.1),
                rand(dc, n, dtype=torch.float32, scale=0.1, shift=-1.0),
                rand(bt, 1, length, n), rand(bt, 1, length, n),
                rand(dc, dtype=torch.float32), rand(bt, dc, length))

    def reference(u, delta, A, B, C, D, z):
        return scan_reference.selective_scan(u, delta, A, B, C, D, z, None, True, None)[0]

    check(lambda u, delta, A, B, C, D, z: call(u, delta, A, B, C, D, z, None, True,
                                               None)[0], reference, make)
    assert any(isinstance(p, plan.Plan)
               for p in undecorated(scan_op.selective_scan_op).plans.values())


def test_decode_replays_match_eager():
    """The dense decode op as a StaticCache's decode step calls it (one query row, a
    cache longer than its filled part, the bool mask of the filled part), forward only:
    fresh inputs each call, replays from the fourth, split and merge kernels."""
    from ioaware.codegen.decode import op as decode_op
    from ioaware.spec import TensorInput

    plan.forget()
    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=False,
                         scale=0.125, mask="Ne(in0[0, 0, 0, kv_idx], 0)",
                         mask_semantics="safe", inputs=(TensorInput("in0", 4, "bool"),))
    mask = torch.arange(4096, device="cuda").view(1, 1, 1, -1) < 3000
    with torch.no_grad():
        for _ in range(CALLS):
            q, k, v = rand(1, 8, 1, 64), rand(1, 2, 4096, 64), rand(1, 2, 4096, 64)
            out, _ = torch.ops.ioaware.decode_attention(q, k, v, [mask], spec.to_json())
            want = gqa(q.float(), k.float(), v.float(), mask=mask)
            assert relative_error(out, want) < TOLERANCE[DTYPE]
    assert any(isinstance(p, plan.Plan)
               for p in undecorated(decode_op.decode_attention_op).plans.values())
