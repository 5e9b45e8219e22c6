"""Real state-space models from `transformers`, built from tiny configs with random weights.

Every selective scan is rewritten into one fused `ioaware::selective_scan` (as many scan
rewrites as the model has Mamba mixers, no scan fallbacks), with the time loop or the
associative_scan (transformers' `use_associative_scan`), and logits and every parameter
gradient match eager execution with the generated kernels under Triton's interpreter.
Eager runs transformers' sequential loop either way: the associative path is only taken
under dynamo.
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE

pytest.importorskip("transformers")

from hf_models import LAYERS, assert_compiled_matches_eager, jamba, mamba, quietly

# (builder, Mamba mixers in the tiny model)
MODELS = {"mamba": (mamba, LAYERS), "jamba": (jamba, LAYERS)}


@pytest.mark.parametrize(("name", "associative_scan", "training"), [
    ("mamba", False, False),
    ("mamba", False, True),
    ("mamba", True, True),
    ("jamba", False, True),
    ("jamba", True, False),
])
def test_ssm_logits_and_gradients_match_eager(interpret, name, associative_scan, training):
    build, mixers = MODELS[name]
    torch.manual_seed(0)
    model = quietly(build, associative_scan)
    if model is None:
        pytest.skip("this transformers has no use_associative_scan")
    model.train(training)
    ids = torch.randint(0, 128, (2, 12))

    expl = ioaware.explain(model, ids)
    scans = [r for r in expl.rewrites if r.kind == "scan"]
    assert len(scans) == mixers, expl
    assert not [f for f in expl.fallbacks if f.kind == "scan"], expl
    form = "associative_scan" if associative_scan else "loop"
    for r in scans:
        assert r.detail["op"] == "selective_scan" and r.detail["form"] == form, r.detail
        assert r.detail["fused"] == ["discretize", "softplus", "delta_bias", "readout", "skip",
                                     "gate"], r.detail
        assert r.hbm_bytes_after < r.hbm_bytes_before
    assert_compiled_matches_eager(model, ids, TOLERANCE[torch.float32])
