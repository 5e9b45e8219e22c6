"""GPU tier of issue 14: the reproducers and a short generated run with compiled
kernels (Inductor around them), compared with eager on CUDA.

    pytest -q -m gpu tests/gpu/test_reliability_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from eager_compare import compare
from reproducers import CASES, params

import ioaware

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name, dtype", params(), ids=str)
def test_reproducer_on_gpu(name, dtype):
    torch._dynamo.reset()
    fn, make, _ = CASES[name]
    args = make(dtype, "cuda")
    expl = ioaware.explain(fn, *args)
    assert [r.kind for r in expl.rewrites] == ["attention"], expl
    torch._dynamo.reset()
    assert compare(fn, args, dtype) == []


def test_generated_programs_on_gpu():
    from generated.test_generated import RUN_SEED, run_programs

    print(f"\n[generated, cuda] seed {RUN_SEED}, 200 cases")
    done, failures = run_programs(RUN_SEED, 200, device="cuda")
    assert done >= 200
    assert not failures, f"{len(failures)} of {done} differ:\n\n" + "\n\n".join(failures[:3])
