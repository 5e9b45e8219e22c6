"""torch.compile's mode and options, through ioaware.compile and backend="ioaware"."""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.backend import IoawareBackend
from ioaware.inductor_options import cudagraph_skips, inductor_patches


def attn(q, k, v):
    return (q @ k.transpose(-2, -1) * 0.25).softmax(-1) @ v


def qkv():
    return [torch.randn(1, 2, 8, 16) for _ in range(3)]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune",
                                  "max-autotune-no-cudagraphs"])
def test_modes_give_torch_compiles_patches(mode):
    # The patches torch.compile's Inductor wrapper builds for the same arguments.
    expected = torch._TorchCompileInductorWrapper(mode, None, None).config
    assert IoawareBackend(mode=mode).inductor_patches == expected
    if mode != "default":
        assert expected  # a real mode patches something


def test_reduce_overhead_turns_on_cudagraphs():
    assert inductor_patches("reduce-overhead", None) == {"triton.cudagraphs": True}
    assert inductor_patches(None, {"triton.cudagraphs": True}) == {"triton.cudagraphs": True}
    assert inductor_patches(None, {"max-autotune": True}) == {"max_autotune": True}


@pytest.mark.parametrize("mode, options, match", [
    ("fast", None, r"mode='fast': Unrecognized mode=fast"),
    (None, {"no_such_option": 1}, r"options: Unexpected optimization option no_such_option"),
    (None, {"max_autotune": "yes"}, r"options: Unexpected type of attr max_autotune"),
    ("reduce-overhead", {"max_autotune": True}, "Either mode or options"),
])
def test_bad_mode_or_option_names_the_argument(mode, options, match):
    with pytest.raises(RuntimeError, match=match):
        ioaware.compile(attn, mode=mode, options=options)
    with pytest.raises(RuntimeError, match=match):
        ioaware.compile(mode=mode, options=options)  # the decorator form fails at once


def test_options_reach_inductors_config():
    # A post-grad pass given as an option runs inside Inductor only if the option reached
    # its config; it stops the compile (fast), and the backend runs the graph as fx.
    seen = []

    def stop(graph):
        seen.append(graph)
        raise RuntimeError("stop here")

    backend = IoawareBackend(options={"post_grad_custom_pre_pass": stop})
    gm = torch.fx.symbolic_trace(lambda q, k, v: (attn(q, k, v),))  # dynamo returns tuples
    args = qkv()
    compiled = backend._inductor(gm, args)
    assert len(seen) == 1
    assert "Inductor failed" in backend.explanation.fallbacks[-1].reason
    torch.testing.assert_close(compiled(*args)[0], attn(*args))


@pytest.mark.parametrize("kwargs", [{"mode": "reduce-overhead"},
                                    {"options": {"triton.cudagraphs": True}}])
def test_backend_by_name_takes_mode_and_options(kwargs):
    torch._dynamo.reset()
    q, k, v = qkv()
    out = torch.compile(attn, backend="ioaware", **kwargs)(q, k, v)
    torch.testing.assert_close(out, attn(q, k, v))


def test_ioaware_compile_with_mode_runs():
    q, k, v = qkv()
    torch.testing.assert_close(ioaware.compile(attn, mode="reduce-overhead")(q, k, v),
                               attn(q, k, v))


def test_cudagraph_skip_reasons_are_collected():
    # Inductor's own reporting function, as it calls it when a graph cannot be captured.
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    with cudagraph_skips() as reasons:
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to cpu device (arg3_1)")
    log_cudagraph_skip_and_bump_counter("after the block: not collected")
    assert reasons == ["skipping cudagraphs due to cpu device (arg3_1)"]


def test_backend_records_why_a_graph_runs_without_cudagraphs():
    """What Inductor reports while it compiles a graph under CUDA graphs becomes a
    `cudagraphs` fallback of that graph. On a CPU graph Inductor never reports a skip
    (it only counts one), so a post-grad pass inside the real compile reports one
    through Inductor's own function, as Inductor does for a CUDA graph with a CPU node
    when graph partitioning is off (tests/gpu/test_cudagraphs_gpu.py runs that case)."""
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    def report(graph):
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to cpu device (arg3_1)")

    backend = IoawareBackend(options={"triton.cudagraphs": True,
                                      "post_grad_custom_pre_pass": report})
    backend.explanation.graphs = 1  # the graph being compiled is graph 0
    gm = torch.fx.symbolic_trace(lambda q, k, v: (attn(q, k, v),))
    args = qkv()
    compiled = backend._inductor(gm, args)
    said = [f for f in backend.explanation.fallbacks if f.kind == "cudagraphs"]
    assert len(said) == 1 and said[0].graph == 0, backend.explanation.fallbacks
    assert said[0].reason == ("runs without CUDA graphs: skipping cudagraphs due to cpu "
                              "device (arg3_1)")
    torch.testing.assert_close(compiled(*args)[0], attn(*args))


def test_a_graph_with_any_cuda_input_is_a_cuda_graph():
    """generate()'s step takes CPU scalars beside its CUDA tensors; whichever comes
    first, the graph goes to Inductor (the fx path would run it unfused)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ioaware.backend import _device_of

    with FakeTensorMode():
        on_gpu = torch.empty(2, device="cuda")
    step = torch.tensor(3)
    assert _device_of([7, step, on_gpu]).type == "cuda"
    assert _device_of([step, 1.0]) == torch.device("cpu")
    assert _device_of([]) == torch.device("cpu")
