"""The public surface: compile (function, decorator, module), the backend by name,
explain, counters, verify, and errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from spellings import make

import ioaware
from ioaware.codegen.attention import reference


def qkv(n=16, d=16):
    return [torch.randn(2, 2, n, d, requires_grad=True) for _ in range(3)]


def test_compile_function_and_counters():
    before = ioaware.counters["attention"]
    fn = make("matmul_masked_fill", True, 0.25)
    q, k, v = qkv()
    torch.testing.assert_close(ioaware.compile(fn)(q, k, v), fn(q, k, v))
    assert ioaware.counters["attention"] == before + 1


def test_decorator_forms():
    @ioaware.compile
    def plain(q, k, v):
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    @ioaware.compile(verify=True)
    def checked(q, k, v):
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    q, k, v = qkv()
    torch.testing.assert_close(plain(q, k, v), checked(q, k, v))


def test_compile_module():
    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.proj(x).view(2, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    m = Attn()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(ioaware.compile(m)(x), m(x))
    assert len(ioaware.explain(m, x).rewrites) == 1


def test_backend_registered_by_name_without_import():
    code = (
        "import sys, torch\n"
        "f = lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1) @ v\n"
        "q = torch.randn(1, 2, 8, 16)\n"
        "torch.testing.assert_close(torch.compile(f, backend='ioaware')(q, q, q), f(q, q, q))\n"
        "assert 'ioaware' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_ops_exist_after_import_ioaware():
    """`import ioaware` registers every family's ops, so a user (or a graph that names
    them) can call torch.ops.ioaware.* directly: the scan family too, which nothing else
    imports first here (the GPU tier once failed with "'_OpNamespace' 'ioaware' object
    has no attribute 'linear_scan'")."""
    code = (
        "import torch, ioaware\n"
        "a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)\n"
        "h = torch.ops.ioaware.linear_scan(a, b, None, False)\n"
        "want, state = torch.zeros(2, 3), []\n"
        "for t in range(5):\n"
        "    state.append(want := a[:, t] * want + b[:, t])\n"
        "torch.testing.assert_close(h, torch.stack(state, 1))\n"
        "u = torch.randn(1, 4, 6)\n"
        "A, B = -torch.rand(4, 2), torch.randn(1, 1, 6, 2)\n"
        "y, _ = torch.ops.ioaware.selective_scan(u, u.abs(), A, B, B, None, None, None,"
        " False, None)\n"
        "assert y.shape == u.shape and y.isfinite().all()\n"
        "for name in ('attention', 'flash_attention', 'decode_attention', 'ssd'):\n"
        "    getattr(torch.ops.ioaware, name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_explain_reports_rewrites_and_fallbacks():
    def two_regions(q, k, v):
        a = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        p = (q @ k.transpose(-2, -1)).softmax(-2)  # wrong axis: not attention
        return a, p @ v

    e = ioaware.explain(two_regions, *qkv())
    assert [r.kind for r in e.rewrites] == ["attention"]
    assert e.rewrites[0].hbm_bytes_after < e.rewrites[0].hbm_bytes_before
    assert len(e.fallbacks) == 1 and "key (last) axis" in e.fallbacks[0].reason
    text = str(e)
    assert "attention" in text and "key (last) axis" in text


def test_verify_catches_a_wrong_kernel(monkeypatch):
    # A deliberately wrong reference path stands in for a kernel bug.
    right = reference.attention_forward

    def wrong(q, k, v, scale, causal):
        out, lse = right(q, k, v, scale, causal)
        return out * 1.5, lse

    monkeypatch.setattr(reference, "attention_forward", wrong)
    monkeypatch.setattr(ioaware.config, "interpret", False)  # take the reference path
    fn = make("matmul_masked_fill", False, 0.25)
    with pytest.raises(ioaware.VerificationError, match="relative error"):
        ioaware.compile(fn, verify=True)(*qkv())


def test_function_that_raises_eagerly_raises_the_same_error():
    def bad(q, k, v):
        return (q @ k).softmax(-1) @ v  # [.., 16, 16] @ [.., 8, 16]: inner sizes differ

    q = torch.randn(1, 1, 16, 16)
    k = torch.randn(1, 1, 8, 16)
    with pytest.raises(RuntimeError) as eager:
        bad(q, k, k)
    with pytest.raises(RuntimeError) as compiled:
        ioaware.compile(bad)(q, k, k)
    assert str(compiled.value) == str(eager.value)



@torch.library.custom_op("ioaware_test::fake_kernel_raises", mutates_args=())
def fake_kernel_raises(x: torch.Tensor) -> torch.Tensor:
    """Runs eagerly; its fake kernel raises, as an op's did on the GPU machine (a
    transformers Mamba, torch 2.11: "TorchRuntimeError: RuntimeError when making fake
    tensor call" while dynamo traced, before any graph reached ioaware)."""
    return x * 2


@fake_kernel_raises.register_fake
def _(x):
    raise RuntimeError("planted: this op's fake kernel fails")


fake_kernel_raises.register_autograd(lambda ctx, g: 2 * g)


class UntraceableBlock(torch.nn.Module):
    """An attention region, then a call dynamo cannot trace (it runs eagerly)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, q, k, v):
        out = make("matmul_masked_fill", True, 0.25)(q, k, v)
        return fake_kernel_raises(self.proj(out))


def test_module_dynamo_cannot_trace_runs_eagerly_and_says_why():
    torch.manual_seed(0)
    model = UntraceableBlock()
    q, k, v = qkv()
    expected = model(q, k, v)
    grads = torch.autograd.grad(expected.square().sum(), [q, k, v, *model.parameters()])
    fast = ioaware.compile(model)
    out = fast(q, k, v)  # before the fix: TorchRuntimeError out of torch.compile
    torch.testing.assert_close(out, expected)
    got = torch.autograd.grad(out.square().sum(), [q, k, v, *model.parameters()])
    for g, e in zip(got, grads):
        torch.testing.assert_close(g, e)
    (fallback,) = [f for f in ioaware.explain(model, q, k, v).fallbacks if f.kind == "graph"]
    assert fallback.reason.startswith("dynamo could not trace this call"), fallback
    assert "planted: this op's fake kernel fails" in fallback.reason, fallback


def test_function_dynamo_cannot_trace_runs_eagerly_and_says_why():
    def fn(x):
        return fake_kernel_raises(x.sin())

    fast = ioaware.compile(fn)
    x = torch.randn(8)
    torch.testing.assert_close(fast(x), fn(x))
    (fallback,) = fast._ioaware_backend.explanation.fallbacks
    assert "planted: this op's fake kernel fails" in fallback.reason, fallback
    # the same signature again: eager at once, not traced (and failed) once more
    from torch._dynamo.utils import counters

    frames = counters["frames"]["total"]
    torch.testing.assert_close(fast(x), fn(x))
    assert counters["frames"]["total"] == frames
    assert len(fast._ioaware_backend.explanation.fallbacks) == 1
    # a new signature is traced again
    fast(torch.randn(9))
    assert counters["frames"]["total"] > frames


def test_the_untraceable_reason_reaches_the_ops_own_error():
    """Dynamo's explanation prints the op's fake arguments over several lines (the Mamba
    failure on the GPU machine was cut there); the reason adds the error that caused it."""
    from ioaware.api import untraceable_reason

    try:
        try:
            raise RuntimeError("planted: the real error\n(a second line)")
        except RuntimeError as cause:
            raise torch._dynamo.exc.TorchRuntimeError(
                "RuntimeError when making fake tensor call\nExplanation: Dynamo failed to "
                "run FX node with fake tensors: call_method unsqueeze(*(FakeTensor(...,\n"
                "  size=(2, 16)),), **{}): got RuntimeError()\nHint: ...") from cause
    except torch._dynamo.exc.TorchRuntimeError as error:
        reason = untraceable_reason(error)
    assert reason.startswith("dynamo could not trace this call, which runs eagerly: "
                             "TorchRuntimeError: RuntimeError when making fake tensor call")
    assert "caused by RuntimeError: planted: the real error (a second line)" in reason
    assert "\n" not in reason and "Hint" not in reason


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="fn must be a function or nn.Module"):
        ioaware.compile(3)
    with pytest.raises(TypeError, match="fn must be a function or nn.Module"):
        ioaware.explain("model")


@pytest.mark.parametrize("stage", ["capture", "rewrite"])
def test_a_failing_stage_leaves_the_graph_running_unchanged(monkeypatch, stage):
    # Stand-ins for a bug in ioaware itself: the user's code must still run, and say why.
    from ioaware import capture
    from ioaware.passes import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    if stage == "capture":
        monkeypatch.setattr(capture, "canonicalize", broken)
    else:
        monkeypatch.setattr(pipeline, "run_pipeline", broken)
    fn = make("matmul_masked_fill", True, 0.25)
    fast = ioaware.compile(fn)
    q, k, v = qkv()
    assert torch.equal(fast(q, k, v), fn(q, k, v))
    (fallback,) = fast._ioaware_backend.explanation.fallbacks
    assert fallback.kind == "graph" and f"{stage} failed" in fallback.reason
    assert "planted failure" in fallback.reason


def test_explain_on_prices_against_the_named_device():
    from ioaware.api import explain_on

    fn = make("matmul_masked_fill", True, 0.25)
    q, k, v = qkv()
    assert len(explain_on("a100", fn, q, k, v).rewrites) == 1
    with pytest.raises(ValueError, match="device='no-such-gpu'.*h100"):
        explain_on("no-such-gpu", fn, q, k, v)


def test_explain_shows_the_seconds_each_pass_took():
    fn = make("matmul_masked_fill", True, 0.25)
    q, k, v = qkv()
    expl = ioaware.explain(fn, q, k, v)
    assert set(expl.pass_seconds) == {"attention", "decode", "ssd_decode", "ssd", "scan"}
    assert all(s >= 0 for s in expl.pass_seconds.values())
    assert "passes: " in str(expl) and "attention " in str(expl).split("passes: ")[1]


def test_explain_calls_a_decorated_method_bound_and_sees_through_compile():
    """A bound method whose function is decorated with functools.wraps (as transformers'
    forwards are) is called as the method; `ioaware.compile(f)` is explained as `f`."""
    import functools

    def logged(f):
        @functools.wraps(f)
        def wrapper(self, *args):
            return f(self, *args)
        return wrapper

    class Layer(torch.nn.Module):
        @logged
        def forward(self, q, k, v):
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    q, k, v = qkv()
    layer = Layer()
    assert [r.kind for r in ioaware.explain(layer.forward, q, k, v).rewrites] == ["attention"]
    fn = make("matmul_masked_fill", True, 0.25)
    assert len(ioaware.explain(ioaware.compile(fn), q, k, v).rewrites) == 1
