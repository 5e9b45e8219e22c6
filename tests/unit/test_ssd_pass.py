"""The SSD pass on captured graphs: transformers' chunked spelling becomes one
`ioaware::ssd`, the rewritten graph runs (torch reference path) as eager did; what is
not the SSD stays eager with its reason. And the family's closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from test_scan_pass import canonical

import ioaware
from ioaware import backend, hardware
from ioaware.codegen.ssd.price import ssd_cost
from ioaware.codegen.ssd.spec import SSDSpec
from ioaware.codegen.ssd.tiles import choose_chunk
from ioaware.passes.driver import PassContext
from ioaware.passes.pipeline import run_pipeline
from ioaware.verify import relative_error

mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
SSD_OP = torch.ops.ioaware.ssd.default

Bt, L, H, P, G, N = 2, 10, 4, 3, 2, 5


def operands(seed: int = 0, batch: int = Bt, length: int = L):
    g = torch.Generator().manual_seed(seed)
    b, n = batch, length
    return (torch.randn(b, n, H, P, generator=g), torch.randn(b, n, H, generator=g),
            -torch.rand(H, generator=g) - 0.1, torch.randn(b, n, G, N, generator=g),
            torch.randn(b, n, G, N, generator=g), torch.randn(H, generator=g),
            torch.randn(H, generator=g), torch.randn(b, H, P, N, generator=g))


def chunk_scan(x, dt, A, B, C, D, dt_bias, h0):
    return mamba2.mamba2_chunk_scan(x, dt, A, B, C, chunk_size=4, D=D, dt_bias=dt_bias,
                                    initial_states=h0, dt_softplus=True,
                                    dt_limit=(0.0, 2.0), return_final_states=True)


def rewrite(fn, *args):
    gm = canonical(fn, *args)
    out = run_pipeline(gm, PassContext(hardware.get_profile("h100"), "reference", {}))
    gm.recompile()
    return gm, out


def test_chunked_spelling_becomes_one_ssd_and_runs_as_eager():
    args = operands()
    gm, out = rewrite(chunk_scan, *args)
    ssd = [r for r in out.rewrites if r.kind == "ssd"]
    assert len(ssd) == 1 and not out.fallbacks, out
    assert ssd[0].detail["fused"] == ["dt_bias", "softplus", "dt_clamp", "D", "h0",
                                      "final_state"]
    assert [n.target for n in gm.graph.nodes].count(SSD_OP) == 1
    # nothing of the chunked form is left: no cumsum, no bmm
    assert not [n for n in gm.graph.nodes if n.target in (torch.ops.aten.cumsum.default,
                                                          torch.ops.aten.bmm.default)]
    assert relative_error(gm.run(), chunk_scan(*args)[0]) <= 1e-5


def shifted_segment_sum(t):
    """transformers' segment_sum without its diagonal: every step loses its own input."""
    q = t.size(-1)
    t = t[..., None].expand(*t.size(), q)
    t = t.masked_fill(~torch.tril(torch.ones(q, q, dtype=torch.bool), -1), 0)
    s = torch.cumsum(t, dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(q, q, dtype=torch.bool), -1), -math.inf)


def test_a_second_length_is_probed_at_several_and_rewritten():
    """Called at a second length and batch, dynamo recompiles with both symbolic (the
    chunk count, the padding): the probe checks the region at several lengths the
    graph's guards admit, not its one example, and the region is rewritten again."""
    from ioaware.passes.ssd import probe

    lengths = []
    real = probe.probe_sizes

    def recorded(region):
        sizes = real(region)
        lengths.append([None if s is None else sorted(s.values()) for s in sizes])
        return sizes

    ssd = ioaware.compile(chunk_scan)
    outcomes = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "probe_sizes", recorded)
        for i, size in enumerate([{}, {"length": 6, "batch": 3}]):
            args = operands(i, **size)
            before = backend.counters["ssd"]
            with torch.no_grad():
                got = ssd(*args)
            want = chunk_scan(*args)
            assert all(relative_error(g, w) <= 1e-5 for g, w in zip(got, want)), size
            outcomes.append(backend.counters["ssd"] - before)
    assert outcomes == [1, 1]
    assert lengths[0] == [None] and len(lengths[1]) >= 2, lengths  # static, then several


def test_a_wrong_region_at_a_symbolic_length_stays_eager(monkeypatch):
    """The shifted decay mask, recompiled at a second length: refused at
    the symbolic length too (the probe runs the region at each admitted length)."""
    monkeypatch.setattr(mamba2, "segment_sum", shifted_segment_sum)
    ssd = ioaware.compile(chunk_scan)
    for i, size in enumerate([{}, {"length": 6}]):
        args = operands(i, **size)
        before = backend.counters["ssd"]
        with torch.no_grad():
            got = ssd(*args)
        assert all(relative_error(g, w) <= 1e-5 for g, w in zip(got, chunk_scan(*args)))
        assert backend.counters["ssd"] == before, size
    reasons = {f.reason for f in ssd._ioaware_backend.explanation.fallbacks}
    assert reasons and all("does not compute the SSD" in r for r in reasons), reasons


def test_final_state_alone_runs_as_eager():
    args = operands(1)
    gm, out = rewrite(lambda *a: chunk_scan(*a)[1], *args)
    assert len(out.rewrites) == 1
    assert relative_error(gm.run(), chunk_scan(*args)[1]) <= 1e-5


def test_wrong_decay_mask_stays_eager_with_the_reason(monkeypatch):
    """segment_sum without its diagonal: the probe finds the region does not compute
    the SSD."""
    monkeypatch.setattr(mamba2, "segment_sum", shifted_segment_sum)
    _, out = rewrite(chunk_scan, *operands())
    assert not [r for r in out.rewrites if r.kind == "ssd"]
    reasons = [f.reason for f in out.fallbacks if f.kind == "ssd"]
    assert len(reasons) == 1 and "does not compute the SSD recurrence" in reasons[0]


def test_dense_state_transition_stays_eager_with_the_reason():
    """S_t = M S_{t-1} + k_t v_tᵀ: not a scalar or diagonal decay, no SSD and no scan."""
    def dense(S, M, k, v, q):
        ys = []
        for t in range(k.shape[1]):
            S = M @ S + k[:, t, :, None] * v[:, t, None, :]
            ys.append((S * q[:, t, :, None]).sum(1))
        return torch.stack(ys, 1)

    args = (torch.randn(2, 4, 3), torch.randn(4, 4) * 0.3, torch.randn(2, 6, 4),
            torch.randn(2, 6, 3), torch.randn(2, 6, 4))
    _, out = rewrite(dense, *args)
    assert not out.rewrites
    assert any("matrix product" in f.reason for f in out.fallbacks), out.fallbacks


def test_spec_validates_its_fields():
    with pytest.raises(ValueError, match="head_dim"):
        SSDSpec(dtype="float32", head_dim=0, d_state=4)
    with pytest.raises(ValueError, match="dt_min"):
        SSDSpec(dtype="float32", head_dim=4, d_state=4, dt_min=1.0, dt_max=0.5)
    with pytest.raises(ValueError, match="dtype"):
        SSDSpec(dtype="int8", head_dim=4, d_state=4)


def test_forward_bytes_are_the_compulsory_traffic():
    c = ssd_cost(4, 4096, 64, 64, 128, 1, 2, chunk=64).evaluate()
    x = 4 * 4096 * 64 * 64 * 2  # x read, y written: bf16
    bc = 2 * 4 * 4096 * 1 * 128 * 2  # B and C, one group
    dt = 4 * 4096 * 64 * 4  # fp32
    state = 4 * 64 * 64 * 128 * 4  # the final state, fp32
    assert c["read_bytes"] == x + bc + dt
    assert c["write_bytes"] == x + state
    # tensor FLOPs per (batch, head, step): 2QN + 2QP + 4NP at one head_dim block
    assert c["tensor_flops"] == 4 * 64 * 4096 * (2 * 64 * 128 + 2 * 64 * 64 + 4 * 128 * 64)


def test_chunk_from_the_cost_model():
    """H100, bf16, P = 64, N = 128: the chunk trades [Q, Q] FLOPs against state bytes."""
    q = choose_chunk(hardware.get_profile("h100"), 64, 128, 2, 64)
    assert q in (32, 64, 128, 256)


@pytest.mark.parametrize("decay_shape, kind", [((2, 6, 1, 1), "scalar decay"),
                                               ((2, 6, 4, 1), "not a scalar decay")])
def test_matrix_state_loop_is_named_with_its_reason(decay_shape, kind):
    """S_t = a_t·S_(t-1) + k_t v_tᵀ as a Python loop (gated linear attention, retention):
    named in explain with its decay's structure, left as written."""
    def loop(S, a, k, v, q):
        ys = []
        for t in range(k.shape[1]):
            S = a[:, t] * S + k[:, t, :, None] * v[:, t, None, :]
            ys.append((S * q[:, t, :, None]).sum(1))
        return torch.stack(ys, 1)

    args = (torch.randn(2, 4, 3), torch.rand(*decay_shape), torch.randn(2, 6, 4),
            torch.randn(2, 6, 3), torch.randn(2, 6, 4))
    _, out = rewrite(loop, *args)
    reasons = [f.reason for f in out.fallbacks if f.kind == "ssd"]
    assert len(reasons) == 1 and "loop of 6 steps" in reasons[0] and kind in reasons[0], reasons
