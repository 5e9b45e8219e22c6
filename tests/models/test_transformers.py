"""Real models from `transformers`, built from tiny configs with random weights.

Every attention call is rewritten (as many rewrites as the model has layers, no
attention fallbacks), and logits and every parameter gradient match eager execution
with the generated kernels running under Triton's interpreter.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytest.importorskip("transformers")

from hf_models import LAYERS, gpt2, llama_gqa


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [gpt2, llama_gqa], ids=["gpt2", "llama_gqa"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_model_logits_and_gradients_match_eager(interpret, build, impl, training):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(impl).train(training)
    ids = torch.randint(0, 128, (2, 24))

    expl = ioaware.explain(model, ids)
    assert len(expl.rewrites) == LAYERS, expl
    assert not [f for f in expl.fallbacks if f.kind == "attention"], expl

    fast = ioaware.compile(model)
    logits = fast(ids).logits
    logits.float().square().mean().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    ref = model(ids).logits
    ref.float().square().mean().backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    tol = TOLERANCE[torch.float32]
    assert relative_error(logits, ref) <= tol
    assert got.keys() == want.keys() and len(got) > 0
    for name, w in want.items():
        assert relative_error(got[name], w, floor=1e-3) <= tol, name
