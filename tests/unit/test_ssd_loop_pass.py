"""Mamba-2 written as a loop over steps (dynamo unrolls it) is re-rolled into one chunked
`ioaware::ssd` by the SSD pass (passes/ssd/loop.py): two spellings of the loop, y and the
final state as eager's (torch reference path); a loop of another decay stays eager with
its reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_ssd_pass import G, H, operands, rewrite

from ioaware.codegen.ssd import reference
from ioaware.verify import relative_error

SSD_OP = torch.ops.ioaware.ssd.default


def definition(x, dt, A, B, C, D, dt_bias, h0):
    """The recurrence as reference.py defines it: B, C repeated to heads, D on the
    stacked output, the state from zeros."""
    return reference.ssd_recurrent(x, dt, A, B, C, D, dt_bias, True)


def per_step(x, dt, A, B, C, D, dt_bias, h0):
    """Another hand: B, C indexed by each head's group, D added per step, from h0."""
    group = torch.arange(H) // (H // G)
    dt = F.softplus(dt + dt_bias)
    S, ys = h0, []
    for t in range(x.shape[1]):
        S = (torch.exp(dt[:, t] * A)[..., None, None] * S
             + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, group][:, :, None, :])
        ys.append((S * C[:, t, group][:, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), S


def run(fn, args):
    """(the rewritten graph, the pipeline's outcome, the graph's outputs on args)."""
    gm, out = rewrite(fn, *args)
    return gm, out, gm(*gm.inputs)


@pytest.mark.parametrize("fn, fused", [
    (definition, ["dt_bias", "softplus", "D", "final_state"]),
    (per_step, ["dt_bias", "softplus", "D", "h0", "final_state"]),
], ids=["definition", "per_step"])
def test_mamba2_loop_rerolled_into_one_ssd_as_eager(fn, fused):
    args = operands()
    gm, out, (y, state) = run(fn, args)
    ssd = [r for r in out.rewrites if r.kind == "ssd"]
    assert len(ssd) == 1 and not out.fallbacks, out
    assert ssd[0].detail["spelling"] == "a loop over steps, re-rolled"
    assert ssd[0].detail["fused"] == fused
    targets = [n.target for n in gm.graph.nodes]
    assert targets.count(SSD_OP) == 1 and torch.ops.aten.exp.default not in targets
    want_y, want_state = fn(*args)
    assert relative_error(y, want_y) <= 1e-5
    assert relative_error(state, want_state) <= 1e-5


def test_loop_with_a_decay_per_step_and_head_stays_eager():
    """exp(dt_t · A_t) with A varying by step: not the SSD's one A per head."""
    args = operands()

    def varying(x, dt, A, B, C, D, dt_bias, h0):
        A_t = A * torch.linspace(0.5, 1.5, x.shape[1])[:, None]  # [L, H]
        S, ys = h0, []
        for t in range(x.shape[1]):
            S = (torch.exp(dt[:, t] * A_t[t])[..., None, None] * S
                 + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :1][:, :, None, :])
            ys.append((S * C[:, t, :1][:, :, None, :]).sum(-1))
        return torch.stack(ys, 1)

    _, out, got = run(varying, args)
    assert not out.rewrites
    reasons = [f.reason for f in out.fallbacks if f.kind == "ssd"]
    assert len(reasons) == 1 and "loop of 10 steps" in reasons[0], out.fallbacks
    assert "one A per head" in reasons[0]
    assert torch.equal(got[0] if isinstance(got, (tuple, list)) else got, varying(*args))
