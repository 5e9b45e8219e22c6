"""A forward config that names the Gluon kernel, pinned where its gate refuses it (no
CUDA device here, or a Triton other than 3.6), runs today's Triton forward and says
why, once (codegen/attention/gluon_forward.py)."""

from __future__ import annotations

import pytest
import torch

from ioaware.codegen.attention import gluon_forward
from ioaware.codegen.attention import op as ops
from ioaware.codegen.runtime import kernel_module

pytestmark = pytest.mark.usefixtures("interpreted_kernels")


def test_a_pinned_gluon_config_falls_back(caplog):
    spec = ops._plain_spec(64, 64, torch.bfloat16, True, 64 ** -0.5)
    assert gluon_forward.spec_reason(spec) is None  # refused by the environment only
    module = kernel_module("attention_fwd", spec, torch.device("cpu"))
    gen = torch.Generator().manual_seed(15)
    q, k, v = (torch.randn(1, 2, 40, 64, generator=gen).bfloat16() for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(1, 2, 40)
    gluon_forward._noted.clear()
    with caplog.at_level("WARNING", logger="ioaware.attention"):
        module.forward(q, k, v, out, lse, config=(128, 128, 8, 2, "gluon+pingpong"))
    scores = (q.float() @ k.float().transpose(-1, -2)) * 64 ** -0.5
    scores = scores.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out.float(), torch.softmax(scores, -1) @ v.float(),
                               atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-4, rtol=1e-4)
    assert "runs the Triton forward instead" in caplog.text
