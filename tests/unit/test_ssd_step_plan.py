"""The SSD decode step behind a launch plan (codegen/plan.py), on its CUDA path with CPU
tensors (test_launch_plan.py's fixture: kernel modules rendered for an H100, binaries
that record their arguments): replays launch what the body launched, on the caller's
state (updated in place by the kernel) and a fresh y."""

from __future__ import annotations

import pytest
import torch
from test_launch_plan import LAUNCHED, calls, cuda_path, same_launch  # noqa: F401

from ioaware.codegen import plan, runtime
from ioaware.codegen.host import undecorated
from ioaware.codegen.ssd import step_op

step = undecorated(step_op.ssd_step_op)


@pytest.fixture
def step_cuda_path(cuda_path, monkeypatch):  # noqa: F811 - the fixture, extended
    monkeypatch.setattr(step_op, "kernel_module", runtime.kernel_module)
    monkeypatch.setattr(step_op, "backend_name", lambda device: "triton")


def test_step_replays_its_one_launch_on_the_callers_state(step_cuda_path):
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 8, 16, generator=g)
    x, dt = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, generator=g)
    A, D, dt_bias = -torch.rand(4, generator=g), torch.randn(4, generator=g), torch.zeros(4)
    B, C = torch.randn(2, 2, 16, generator=g), torch.randn(2, 2, 16, generator=g)
    args = (state, x, dt, A, B, C, D, dt_bias, True, -float("inf"), float("inf"))
    unplanned, _ = calls(lambda: step.__wrapped__(*args), 1)
    per_call, y = calls(lambda: step(*args), 5)
    (entry,) = step.plans.values()
    assert isinstance(entry, plan.Plan)
    for launches in per_call:  # the body (seen, recorded, recorded), then replays
        assert len(launches) == 1 and same_launch(launches[0], unplanned[0][0], args[:8])
    assert per_call[4][0][0] is state  # the state itself: the kernel updates it in place
    assert per_call[4][0][8] is y and y.shape == x.shape  # the y it returned
