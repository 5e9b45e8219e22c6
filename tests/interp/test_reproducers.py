"""Issue 14's reproducers (tests/reproducers.py) under the interpreter: each ran wrong
or crashed before its fix; each must be rewritten and match eager, outputs and
gradients, NaN patterns included."""

from __future__ import annotations

import pytest
import torch
from eager_compare import compare
from reproducers import CASES, params

import ioaware

# what the rewrite must show for the cases where it says something specific
DETAIL = {"mask_from_q": ("mask", "data"), "mask_from_k": ("mask", "data")}


@pytest.mark.parametrize("name, dtype", params(), ids=str)
def test_reproducer_is_rewritten_and_matches_eager(interpret, name, dtype):
    fn, make, _ = CASES[name]
    args = make(dtype, "cpu")
    expl = ioaware.explain(fn, *args)
    assert [r.kind for r in expl.rewrites] == ["attention"], expl
    if name in DETAIL:
        key, value = DETAIL[name]
        assert expl.rewrites[0].detail[key] == value
    torch._dynamo.reset()
    assert compare(fn, args, dtype) == []
