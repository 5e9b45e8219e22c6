"""How the families' ops are registered (codegen/library.py): a kernel op that Inductor
calls through the dispatcher with no Python autograd layer, under a differentiable op
that fake tensors, AOTAutograd and Inductor trace through; today's custom_op where this
torch lacks the route. Both give the outputs and gradients of eager."""

from __future__ import annotations

import itertools

import pytest
import torch
from eager_compare import inductor_op_calls
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode

import ioaware
from ioaware.backend import IoawareBackend
from ioaware.codegen import library, load_families
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import TensorInput

load_families()

_names = itertools.count()


def has_kernel(qualname: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


# ---- the route's choice ----------------------------------------------------------------


def test_the_route_is_the_library_one_where_torch_has_it(monkeypatch):
    assert library.choose_route("auto") == "library" == library.choose_route("library")
    assert library.choose_route("custom_op") == "custom_op"
    monkeypatch.delattr(torch.library, "infer_schema")  # a torch without the route
    assert library.choose_route("auto") == "custom_op"
    assert library.choose_route("library") == "custom_op"
    with pytest.raises(ValueError, match="op_route='fast'"):
        library.choose_route("fast")


def test_the_registered_ops_took_the_chosen_route():
    """The kernel ops Inductor calls carry no Python autograd kernel (torch's C++ fallback
    passes them through); the differentiable ops decompose (CompositeImplicitAutograd)."""
    assert library.ROUTE == "library"
    for name in ("flash_attention", "attention", "selective_scan", "linear_scan",
                 "decode_attention", "paged_decode_attention", "ssd"):
        assert not has_kernel(f"ioaware::{name}_forward", "Autograd"), name
        assert has_kernel(f"ioaware::{name}", "CompositeImplicitAutograd"), name
    for name in ("flash_attention_backward", "attention_backward", "selective_scan_backward",
                 "ssd_backward"):
        assert not has_kernel(f"ioaware::{name}", "Autograd"), name


def toy_op(route: str, monkeypatch):
    """y = scale · x + Σ ws under the given route, in a namespace of its own: a tensor
    list, a trailing default and a gradient per list element, as the attention op has."""
    monkeypatch.setattr(library, "ROUTE", route)
    name = f"ioaware_test::toy{next(_names)}_{route}"

    @library.kernel_op(name + "_forward")
    def forward(x: Tensor, ws: list[Tensor], scale: float = 2.0) -> Tensor:
        return x * scale + sum(ws)

    @forward.register_fake
    def _(x, ws, scale=2.0):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        _, ws, scale = inputs
        ctx.scale, ctx.count = scale, len(ws)

    def backward(ctx, grad):
        # per argument, a list for the list (as custom_op gives; it drops a trailing
        # argument left at its default)
        assert tuple(ctx.needs_input_grad[:2]) == (True, [True, False])
        return (grad * ctx.scale, [grad] * ctx.count, None)[:len(ctx.needs_input_grad)]

    return library.differentiable_op(name, forward, backward, setup_context)


@pytest.mark.parametrize("route", ["library", "custom_op"])
def test_each_route_gives_eagers_outputs_and_gradients(route, monkeypatch):
    op = toy_op(route, monkeypatch)
    qualname = f"{op._opoverload._schema.name}"
    assert has_kernel(qualname, "CompositeImplicitAutograd") == (route == "library")
    x = torch.randn(3, 4, requires_grad=True)
    ws = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)]
    y = op._opoverload(x, ws)  # scale left at its default
    eager = x * 2.0 + sum(ws)  # the same sums, in the same order
    torch.testing.assert_close(y, eager, rtol=0, atol=0)
    gx, gw = torch.autograd.grad((y * y).sum(), (x, ws[0]))
    ex, ew = torch.autograd.grad((eager * eager).sum(), (x, ws[0]))
    torch.testing.assert_close((gx, gw), (ex, ew), rtol=0, atol=0)
    with torch.no_grad():
        assert op._opoverload(x, ws, 3.0).grad_fn is None


def test_a_kernel_ops_backward_is_not_differentiated_twice():
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    out, _ = torch.ops.ioaware.flash_attention(q, k, v, 0.25, True)
    (dq,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(dq.sum(), q)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(dq.sum(), q, allow_unused=True)


# ---- fake tensors, AOTAutograd, Inductor ---------------------------------------------


def bias_spec() -> AttentionSpec:
    return AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                         scale=0.25, score_mod="score + in0[q_idx, kv_idx]",
                         inputs=(TensorInput("in0", 2, "float32", requires_grad=True),))


def test_fake_tensors_trace_forward_and_backward():
    """Under FakeTensorMode (what dynamo and AOTAutograd trace with) the differentiable op
    runs its Function over the kernel ops' fakes, gradients of list inputs included."""
    spec = bias_spec().to_json()
    with FakeTensorMode():
        q, k, v = (torch.empty(2, 2, 8, 16, requires_grad=True) for _ in range(3))
        bias = torch.empty(8, 8, requires_grad=True)
        out, lse = torch.ops.ioaware.attention(q, k, v, [bias], spec)
        assert out.shape == (2, 2, 8, 16) and lse.shape == (2, 2, 8)
        grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
        assert [tuple(g.shape) for g in grads] == [(2, 2, 8, 16)] * 3 + [(8, 8)]


def test_aot_traces_the_kernel_ops():
    """make_fx of forward + backward (AOTAutograd's joint) holds the kernel ops only."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def joint(q, k, v):
        out, _ = torch.ops.ioaware.flash_attention(q, k, v, 0.25, True)
        return torch.autograd.grad(out.sum(), (q, k, v))

    args = [torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3)]
    gm = make_fx(joint, tracing_mode="fake")(*args)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"ioaware.flash_attention_forward.default",
            "ioaware.flash_attention_backward.default"} <= targets
    assert "ioaware.flash_attention.default" not in targets


def test_ioaware_compile_through_inductor_equals_eager(monkeypatch):
    """ioaware.compile on a tiny attention block, Inductor taking the rewritten graph as
    on CUDA (here its CPU code; the kernels under the interpreter when IOAWARE_INTERPRET
    is set): Inductor's code calls the kernel ops, forward and backward, and outputs and
    gradients equal eager's."""
    monkeypatch.setattr(IoawareBackend, "_finish",
                        lambda self, eager, gm, inputs, device: self._inductor(gm, inputs))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48, bias=False)

        def forward(self, x):
            q, k, v = self.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
            s = (q @ k.transpose(-2, -1)) * 0.3
            return (s.softmax(-1) @ v).sum(1)

    torch.manual_seed(0)
    block = Block()
    x = torch.randn(2, 8, 16, requires_grad=True)
    compiled = ioaware.compile(block)

    def step(model):
        out = model(x)
        return (out, *torch.autograd.grad(out.square().sum(), (x, block.qkv.weight)))

    calls = inductor_op_calls(step, compiled, block, torch.float32)
    assert calls == {"flash_attention_forward", "flash_attention_backward"}, calls


def test_a_mutating_kernel_op_bumps_the_version_of_what_it_writes():
    """ioaware::ssd_step writes its state in place with neither a Python autograd nor a
    Python ADInplaceOrView kernel; its own kernel bumps the state's version, so autograd
    still refuses a backward through a tensor the step overwrote."""
    assert not has_kernel("ioaware::ssd_step", "Autograd")
    assert not has_kernel("ioaware::ssd_step", "ADInplaceOrView")
    leaf = torch.randn(1, 2, 4, 8, requires_grad=True)
    state = leaf * 1.0  # saved by the product below
    loss = (state * state).sum()
    x, dt, A = torch.randn(1, 2, 4), torch.rand(1, 2), -torch.rand(2)
    B, C = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    version = state._version
    with torch.no_grad():
        torch.ops.ioaware.ssd_step(state, x, dt, A, B, C, None, None, False,
                                   float("-inf"), float("inf"))
    assert state._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
