"""The SSD decode pass on captured graphs: transformers' L = 1 state update
(`mamba2_selective_state_update`) becomes one in-place `ioaware::ssd_step`; the rewritten
graph (torch reference path) returns eager's y and leaves eager's state behind; what
the fused step cannot take stays eager with its reason."""

from __future__ import annotations

import re

import pytest
import torch
from test_scan_pass import canonical

import ioaware
from ioaware import backend, hardware
from ioaware.codegen.ssd.price import ssd_step_cost
from ioaware.passes.driver import PassContext
from ioaware.passes.pipeline import run_pipeline
from ioaware.verify import relative_error

mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
STEP_OP = torch.ops.ioaware.ssd_step.default

Bt, H, P, G, N = 2, 4, 3, 2, 5


def operands(seed: int = 3, batch: int = Bt, heads: int = H, groups: int = G):
    g = torch.Generator().manual_seed(seed)
    b, h = batch, heads
    return (torch.randn(b, h, P, N, generator=g), torch.randn(b, h, P, generator=g),
            torch.randn(b, h, generator=g), -torch.rand(h, generator=g) - 0.1,
            torch.randn(b, groups, N, generator=g), torch.randn(b, groups, N, generator=g),
            torch.randn(h, generator=g), torch.randn(h, generator=g))


def update(state, x, dt, A, B, C, D, dt_bias):
    """transformers' step as its decode path calls it: per-head values broadcast."""
    return mamba2.mamba2_selective_state_update(
        state, x, dt[..., None].expand(-1, -1, P), A[:, None, None].expand(-1, P, N), B, C,
        D[:, None].expand(-1, P), dt_bias=dt_bias[:, None].expand(-1, P), dt_softplus=True)


def in_place(state, *rest):
    """The state updated in the tensor itself (transformers before 5.2x)."""
    return update(state, *rest)


def cloned(state, *rest):
    """transformers 5.25: a clone updated, then copied back into the cache's state."""
    nxt = state.clone()
    y = update(nxt, *rest)
    state.copy_(nxt)
    return y


def rewrite(fn, args):
    """(the rewritten graph, the outcome, run: the graph on fresh copies of args ->
    (y, the state after))."""
    traced = [a.clone() for a in args]
    gm = canonical(fn, *traced)
    # dynamo orders the graph's inputs by first use: which of fn's arguments each is
    index = [next(i for i, t in enumerate(traced) if t is e) for e in gm.inputs]
    out = run_pipeline(gm, PassContext(hardware.get_profile("h100"), "reference", {}))
    gm.recompile()

    def run():
        fresh = [a.clone() for a in args]
        y = gm(*(fresh[i] for i in index))
        return (y[0] if isinstance(y, (tuple, list)) else y), fresh[0]

    return gm, out, run


@pytest.mark.parametrize("fn", [in_place, cloned], ids=["in_place", "cloned"])
def test_step_becomes_one_in_place_op_as_eager(fn):
    args = operands()
    gm, out, run = rewrite(fn, args)
    steps = [r for r in out.rewrites if r.kind == "ssd_decode"]
    assert len(steps) == 1 and not out.fallbacks, out
    assert steps[0].detail["fused"] == ["dt_bias", "softplus", "D"]
    targets = [n.target for n in gm.graph.nodes]
    assert targets.count(STEP_OP) == 1
    # eager's copies and clone are gone: the op writes the input state itself
    assert torch.ops.aten.copy_.default not in targets
    assert torch.ops.aten.clone.default not in targets or fn is in_place
    state = args[0].clone()
    want_y = fn(state, *args[1:])
    got_y, got_state = run()
    assert relative_error(got_y, want_y) <= 1e-5
    assert relative_error(got_state, state) <= 1e-5
    # the state is read and written once; eager moved it many times
    assert steps[0].hbm_bytes_after < steps[0].hbm_bytes_before / 3


def test_bf16_state_and_inputs():
    """A bf16 cache state and bf16 x, B, C (a bf16 model's cache): the update is cast to
    the state's dtype before its copy, y computed from it in C's dtype; the op takes both
    casts and gives eager's values within bf16 tolerance."""
    args = [a.to(torch.bfloat16) if i in (0, 1, 4, 5) else a
            for i, a in enumerate(operands(5))]
    _, out, run = rewrite(cloned, args)
    assert [r.kind for r in out.rewrites] == ["ssd_decode"] and not out.fallbacks, out
    assert out.rewrites[0].detail["state_dtype"] == "bfloat16"
    state = args[0].clone()
    want_y = cloned(state, *args[1:])
    got_y, got_state = run()
    assert got_y.dtype == want_y.dtype and got_state.dtype == torch.bfloat16
    assert relative_error(got_y.float(), want_y.float()) <= 0.03
    assert relative_error(got_state.float(), state.float()) <= 0.03


def test_step_bytes_are_the_state_read_and_written_once():
    c = ssd_step_cost(4, 48, 64, 128, 8, 2, 4).evaluate()
    state = 4 * 48 * 64 * 128 * 4  # fp32 state, read and written in place
    xy = 4 * 48 * 64 * 2  # x read, y written: bf16
    bc = 2 * 4 * 8 * 128 * 2  # B and C, 8 groups
    dt = 4 * 48 * 4
    assert c["read_bytes"] == state + xy + bc + dt
    assert c["write_bytes"] == state + xy


def test_dt_per_head_dim_stays_eager_with_the_reason():
    """mamba_ssm's API allows a dt per (head, head_dim): not the SSD step the kernel takes."""
    args = operands()

    def per_p(state, x, dt, A, B, C, D, dt_bias):
        dt3 = dt[..., None] * torch.linspace(0.5, 1.5, P)  # varies along head_dim
        return mamba2.mamba2_selective_state_update(
            state, x, dt3, A[:, None, None].expand(-1, P, N), B, C, D[:, None].expand(-1, P),
            dt_bias=dt_bias[:, None].expand(-1, P), dt_softplus=True)

    _, out, run = rewrite(per_p, args)
    assert not out.rewrites
    reasons = [f.reason for f in out.fallbacks if f.kind == "ssd_decode"]
    assert len(reasons) == 1 and "one value per (batch, head)" in reasons[0], out.fallbacks
    assert not [f for f in out.fallbacks if f.kind == "ssd"]  # named once, by its pass
    state = args[0].clone()
    want_y = per_p(state, *args[1:])
    got_y, got_state = run()  # as it was: eager's values
    assert torch.equal(got_y, want_y) and torch.equal(got_state, state)


def test_state_read_between_step_and_copy_stays_eager():
    """The cache's state is read after the step but before eager copies the update into
    it: an in-place update would change what that read sees."""
    args = operands()

    def peek(state, *rest):
        nxt = state.clone()
        y = update(nxt, *rest)
        old = state.sum()
        state.copy_(nxt)
        return y, old

    _, out, _ = rewrite(peek, args)
    assert not out.rewrites
    reasons = [f.reason for f in out.fallbacks if f.kind == "ssd_decode"]
    assert len(reasons) == 1 and "between the step and its copy" in reasons[0], reasons


def test_step_needing_gradients_stays_eager():
    args = [a.requires_grad_(i in (1, 6)) for i, a in enumerate(operands())]

    def step(state, *rest):
        return update(state.clone(), *rest)

    gm = canonical(step, *args)
    out = run_pipeline(gm, PassContext(hardware.get_profile("h100"), "reference", {}))
    assert not out.rewrites
    assert any("needs gradients" in f.reason for f in out.fallbacks), out.fallbacks


def test_step_with_symbolic_sizes_after_a_recompile():
    """A call at another group count, then at another batch, makes dynamo recompile with
    that size symbolic (automatic dynamic shapes): G enters the graph as a size input,
    `H // G` as arithmetic on it, the batch in the views. The step is still rewritten
    (probed at dynamo's example sizes) and gives eager's y and state at every size."""
    step = ioaware.compile(cloned)
    sizes = [{"groups": 2}, {"groups": 4}, {"groups": 4, "batch": 3},
             {"groups": 2, "batch": 5}]  # (the last may reuse the third graph)
    counts = []
    for i, size in enumerate(sizes):
        args = operands(7 + i, heads=8, **size)
        before = backend.counters["ssd_decode"]
        want_state = args[0].clone()
        want_y = cloned(want_state, *args[1:])
        got_state = args[0].clone()
        with torch.no_grad():
            got_y = step(got_state, *args[1:])
        assert relative_error(got_y, want_y) <= 1e-5, size
        assert relative_error(got_state, want_state) <= 1e-5, size
        counts.append(backend.counters["ssd_decode"] - before)
    explanation = step._ioaware_backend.explanation
    assert counts[:3] == [1, 1, 1] and not explanation.fallbacks, explanation
    assert isinstance(explanation.rewrites[1].detail["groups"], torch.SymInt)


@pytest.mark.parametrize("fn", [in_place, cloned], ids=["in_place", "cloned"])
def test_inductor_keeps_the_step_in_place(fn):
    """Under Inductor (the CUDA path), functionalisation turns the op's `mutates_args`
    into auto_functionalized (a new state) plus a copy_ back into the input; Inductor
    re-inplaces it: the generated code calls the op once, on the input state itself,
    with no clone and no copy of the state (nor of y), and the caller's state is updated."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.utils import run_and_get_code

    gm, out, _ = rewrite(fn, operands())
    assert [r.kind for r in out.rewrites] == ["ssd_decode"]
    inputs = [t.clone() for t in gm.inputs]
    want_inputs = [t.clone() for t in inputs]
    want = gm(*want_inputs)
    got, (code,) = run_and_get_code(lambda: compile_fx(gm, [t.clone() for t in inputs])(
        *inputs))
    body = code[code.index("def call("):]
    calls = re.findall(r"torch\.ops\.ioaware\.ssd_step\.default\((\w+),", body)
    state = next(i for i, t in enumerate(inputs) if t.dim() == 4)
    assert calls == [f"arg{state}_1"], body  # the input itself, not a buffer
    assert "copy" not in body and "clone" not in body, body
    assert torch.equal(got[0], want[0])
    assert torch.equal(inputs[state], want_inputs[state])
