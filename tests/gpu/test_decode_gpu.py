"""The compiled decode kernels on a CUDA GPU: the interpreter tier's properties
(tests/interp/test_decode_kernel.py) at GPU sizes, contexts up to a few thousand, with
the tiles and split counts the op chooses from the device's profile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_decode_kernel import _check_against_eager, problems


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems(), st.integers(17, 5000), st.sampled_from([64, 128]))
def test_decode_matches_eager_on_gpu(p, n_k, d):
    _check_against_eager({**p, "n_k": n_k, "d": d}, device="cuda")
