"""The measured choice between the generated attention kernels and SDPA's backends
(codegen/attention/choice.py, passes/attention/choice.py), on the CPU.

Real SDPA-against-kernel timings exist only on a GPU (tests/gpu/test_attention_choice_gpu.py);
here the candidates and what their timers return are given, and everything around them
is real: the choice, its cache on disk, the config's restriction, which regions SDPA
computes exactly, and the graph the pass makes of a choice (not run: the SDPA backends'
ops are CUDA-only).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ioaware import capture, hardware
from ioaware.codegen.attention import choice
from ioaware.config import config
from ioaware.passes.attention import ATTENTION
from ioaware.passes.driver import PassContext, run_pass

aten = torch.ops.aten
PROBLEM = choice.Problem(batch=4, heads=16, n_q=4096, n_k=4096, head_dim=128, head_dim_v=128,
                         dtype="bfloat16", causal=True, scale=128 ** -0.5, grad=True)


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "cache_dir", tmp_path)


def timers(times, calls=None):
    """name → a timer returning times[name] (raising when it is an exception)."""
    def make(name):
        def timer():
            if calls is not None:
                calls.append(name)
            if isinstance(times[name], Exception):
                raise times[name]
            return times[name]
        return timer
    return {name: make(name) for name in times}


def test_the_fastest_runs_and_explain_lists_every_time():
    c = choice.choose(PROBLEM, torch.device("cuda:0"),
                      timers({"generated": 1.02, "cudnn": 0.91, "flash": 0.95}))
    assert c.chosen == "cudnn"
    assert c.describe() == "cudnn 0.910 ms, flash 0.950 ms, generated 1.020 ms → cudnn"


def test_a_tie_goes_to_the_generated_kernel_then_cudnn():
    device = torch.device("cuda:0")
    assert choice.choose(PROBLEM, device, timers({"cudnn": 1.0, "generated": 1.0})).chosen \
        == "generated"
    other = dataclasses_replace(PROBLEM, n_q=1024, n_k=1024)  # another size class
    assert choice.choose(other, device, timers({"efficient": 1.0, "cudnn": 1.0})).chosen \
        == "cudnn"


def dataclasses_replace(problem, **changes):
    import dataclasses

    return dataclasses.replace(problem, **changes)


def test_a_candidate_that_fails_is_excluded_with_its_reason():
    c = choice.choose(PROBLEM, torch.device("cuda:0"), timers({
        "generated": 2.0, "cudnn": RuntimeError("No valid execution plans built."),
        "flash": ValueError("differs from the generated kernel by 3.10e-01"),
        "efficient": 1.5}))
    assert c.chosen == "efficient"
    assert c.excluded == {"cudnn": "RuntimeError: No valid execution plans built.",
                          "flash": "ValueError: differs from the generated kernel by 3.10e-01"}
    nothing = choice.choose(dataclasses_replace(PROBLEM, causal=False), torch.device("cuda:0"),
                            timers({"generated": RuntimeError("x"), "cudnn": float("nan")}))
    assert nothing.chosen == "generated" and "no candidate could be timed" in nothing.describe()


def test_a_measurement_is_kept_on_disk_and_a_damaged_one_measured_again(tmp_path):
    device = torch.device("cuda:0")
    calls = []
    first = choice.choose(PROBLEM, device, timers({"generated": 1.0, "cudnn": 0.5}, calls))
    assert first.chosen == "cudnn" and calls == ["generated", "cudnn"]
    # the next compile (or process) reads it: nothing is timed again, same times shown
    calls.clear()
    again = choice.choose(PROBLEM, device, timers({"generated": 9.0, "cudnn": 9.0}, calls))
    assert calls == [] and again == first
    # a size in the same power-of-two class shares the measurement
    near = dataclasses_replace(PROBLEM, n_q=3000, n_k=3000)
    assert choice.choose(near, device, timers({"generated": 9.0, "cudnn": 9.0}, calls)) == first
    [path] = (tmp_path / "choices").iterdir()
    for damaged in ("{", '{"chosen": "flash", "times": {"cudnn": 0.5}, "excluded": {}}', ""):
        path.write_text(damaged)
        rebuilt = choice.choose(PROBLEM, device, timers({"generated": 1.0, "cudnn": 2.0}, calls))
        assert rebuilt.chosen == "generated" and calls[-2:] == ["generated", "cudnn"]
        path.write_text('{"chosen": "cudnn", "times": {"cudnn": 0.5, "generated": 1.0}, '
                        '"excluded": {}}')
        assert choice.choose(PROBLEM, device, timers({"generated": 1.0, "cudnn": 2.0})).chosen \
            == "cudnn"


def test_config_restricts_the_candidates(monkeypatch):
    monkeypatch.setattr(config, "implementations", ("generated",))
    c = choice.choose(PROBLEM, torch.device("cuda:0"))
    assert c.chosen == "generated" and "allows only it" in c.describe()
    monkeypatch.setattr(config, "implementations", ("cudnn", "flash"))
    assert choice.allowed() == ("cudnn", "flash")
    monkeypatch.setattr(config, "implementations", ("generated", "fa3"))
    with pytest.raises(ValueError, match=r"config.implementations=\('generated', 'fa3'\)"):
        choice.allowed()


# ---- the pass: which regions, and the graph it makes of a choice ----------------------

def canonical(fn, *args):
    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend)(*args)
    return box["gm"]


def causal_masked_fill(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = s.shape[-1]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1),
                      float("-inf"))
    return torch.softmax(s, -1) @ v


def qkv(hkv=4, n=32, nk=None, grad=False):
    return (torch.randn(2, 4, n, 16, requires_grad=grad),
            torch.randn(2, hkv, nk or n, 16, requires_grad=grad),
            torch.randn(2, hkv, nk or n, 16, requires_grad=grad))


def on_cuda(monkeypatch, times, seen=None):
    """The pass as on a GPU ("triton"), with these candidates' times."""
    def candidates(problem, device, names):
        if seen is not None:
            seen.append(problem)
        return timers({n: times[n] for n in names if n in times})
    monkeypatch.setattr(choice, "real_candidates", candidates)
    return PassContext(hardware.get_profile("h100"), "triton", {})


def test_a_faster_sdpa_backend_replaces_the_kernel_call(monkeypatch):
    seen = []
    ctx = on_cuda(monkeypatch, {"generated": 1.0, "cudnn": 0.8, "flash": 0.9}, seen)
    gm = canonical(causal_masked_fill, *qkv(grad=True))
    out = run_pass(ATTENTION, gm, ctx)
    [rewrite] = out.rewrites
    assert rewrite.detail["implementation"] == \
        "cudnn 0.800 ms, flash 0.900 ms, generated 1.000 ms → cudnn"
    assert rewrite.backend == "sdpa-cudnn"  # explain's backend column
    [call] = [n for n in gm.graph.nodes
              if n.target is aten._scaled_dot_product_cudnn_attention.default]
    # q, k, v, attn_bias=None, compute_log_sumexp, dropout_p, is_causal, return_debug_mask
    assert call.args[3:] == (None, True, 0.0, True, False)
    assert call.kwargs["scale"] == pytest.approx(16 ** -0.5)
    assert torch.ops.ioaware.flash_attention.default not in [n.target for n in gm.graph.nodes]
    assert seen[0].causal and seen[0].grad and (seen[0].n_q, seen[0].head_dim) == (32, 16)


def test_the_kernel_stays_where_it_is_fastest(monkeypatch):
    ctx = on_cuda(monkeypatch, {"generated": 0.7, "cudnn": 0.8})
    gm = canonical(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), *qkv())
    [rewrite] = run_pass(ATTENTION, gm, ctx).rewrites
    assert rewrite.detail["implementation"].endswith("→ generated")
    assert rewrite.backend == "triton"
    assert torch.ops.ioaware.flash_attention.default in [n.target for n in gm.graph.nodes]


def _padding(q, k, v):
    keep = (torch.arange(k.shape[2]) < 20)[None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


@pytest.mark.parametrize(("fn", "args", "reason"), [
    (_padding, qkv(), "a mask"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), qkv(hkv=2),
     "GQA"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
     qkv(n=16, nk=32), "causal with Nq=16 != Nk=32"),
])
def test_regions_sdpa_does_not_compute_exactly_keep_the_kernel(monkeypatch, fn, args, reason):
    seen = []
    ctx = on_cuda(monkeypatch, {"generated": 1.0, "cudnn": 0.1}, seen)
    gm = canonical(fn, *args)
    [rewrite] = run_pass(ATTENTION, gm, ctx).rewrites
    text = rewrite.detail["implementation"]
    assert text.startswith("generated (SDPA is not exact here: ") and reason in text, text
    assert seen == []  # nothing measured


def test_off_cuda_nothing_is_measured_and_explain_says_so():
    gm = canonical(causal_masked_fill, *qkv())
    ctx = PassContext(hardware.get_profile("h100"), "triton-interpret", {})
    [rewrite] = run_pass(ATTENTION, gm, ctx).rewrites
    assert rewrite.detail["implementation"] == (
        "generated (not measured: SDPA backends are timed on CUDA, the kernels run as "
        "triton-interpret here)")


# ---- what the generated kernels cannot run: the next implementation, or eager ----------

def plain(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * 0.05, -1) @ v


def wide(d, dtype=torch.float32):
    return tuple(torch.randn(1, 2, 8, d, dtype=dtype) for _ in range(3))


def test_a_head_dim_above_256_runs_as_an_sdpa_backend_that_can(monkeypatch):
    ctx = on_cuda(monkeypatch, {"generated": 0.1, "cudnn": RuntimeError("head dim 320"),
                                "flash": RuntimeError("head dim 320"), "efficient": 2.0})
    gm = canonical(plain, *wide(320))
    out = run_pass(ATTENTION, gm, ctx)
    [rewrite] = out.rewrites
    text = rewrite.detail["implementation"]
    assert text.startswith("efficient 2.000 ms → efficient; not candidates: generated: "
                           "head_dim=320 must be between 1 and 256; cudnn: "), text
    [call] = [n for n in gm.graph.nodes
              if n.target is aten._scaled_dot_product_efficient_attention.default]
    assert call.args[3:] == (None, True, 0.0, False) and call.kwargs["scale"] == 0.05


def test_a_head_dim_above_256_with_no_backend_stays_eager(monkeypatch):
    ctx = on_cuda(monkeypatch, {"cudnn": RuntimeError("no plan"), "flash": RuntimeError("d"),
                                "efficient": RuntimeError("d")})
    gm = canonical(plain, *wide(512))
    out = run_pass(ATTENTION, gm, ctx)
    assert not out.rewrites and aten._softmax.default in [n.target for n in gm.graph.nodes]
    [fallback] = out.fallbacks
    assert "the generated kernels cannot run it (head_dim=512 must be between 1 and 256)" \
        in fallback.reason and "no candidate could be timed" in fallback.reason
    assert "cudnn: RuntimeError: no plan" in fallback.reason and "left to eager" in fallback.reason


def test_shared_memory_no_tile_fits_leaves_the_region_to_eager():
    import dataclasses

    small = dataclasses.replace(hardware.get_profile("h100"), name="tiny", sram_per_block=8192)
    gm = canonical(plain, *wide(256))
    out = run_pass(ATTENTION, gm, PassContext(small, "triton-interpret", {}))
    assert not out.rewrites
    reason = out.fallbacks[0].reason
    assert "no forward tile fits" in reason and "on tiny at head_dim=256" in reason, reason


def test_config_without_sdpa_keeps_a_wide_region_eager(monkeypatch):
    ctx = on_cuda(monkeypatch, {"efficient": 1.0})
    monkeypatch.setattr(config, "implementations", ("generated",))
    out = run_pass(ATTENTION, canonical(plain, *wide(320)), ctx)
    assert not out.rewrites
    assert "config.implementations allows no SDPA backend" in out.fallbacks[0].reason


def test_the_real_candidates_run_forward_and_backward(monkeypatch, interpret):
    """real_candidates on the CPU: the generated kernel (interpreted) runs forward and
    backward under the timer; SDPA's CUDA backends cannot run here and say why. The
    device timer is replaced by one call (do_bench needs CUDA)."""
    calls = []

    def once(fn):
        calls.append(fn())
        return 1.0
    monkeypatch.setattr(choice, "bench_ms", once)
    problem = dataclasses_replace(PROBLEM, batch=1, heads=2, n_q=16, n_k=16, head_dim=16,
                                  head_dim_v=16, dtype="float32", scale=0.25)
    timers_ = choice.real_candidates(problem, torch.device("cpu"), choice.IMPLEMENTATIONS)
    assert list(timers_) == list(choice.IMPLEMENTATIONS)
    assert timers_["generated"]() == 1.0 and len(calls) == 1
    for name in choice.SDPA_BACKENDS:
        with pytest.raises((RuntimeError, NotImplementedError)):
            timers_[name]()
    c = choice.choose(problem, torch.device("cpu"), timers_)
    assert c.chosen == "generated" and set(c.excluded) == set(choice.SDPA_BACKENDS)


def test_the_reference_head_is_attention_of_head_0():
    q, k, v = (torch.randn(2, 3, 8, 4, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.3)[0, 0]
        got = choice._reference_head(q, k, v, causal, 0.3)
        assert torch.allclose(got.double(), want, atol=1e-6)
