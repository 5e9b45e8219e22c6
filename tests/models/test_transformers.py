"""Real models from `transformers`, built from tiny configs with random weights.

Every attention call is rewritten (as many rewrites as the model has layers, no
attention fallbacks), and logits and every parameter gradient match eager execution
with the generated kernels running under Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE

pytest.importorskip("transformers")

from hf_models import LAYERS, assert_compiled_matches_eager, gpt2, llama_gqa, quietly


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [gpt2, llama_gqa], ids=["gpt2", "llama_gqa"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_model_logits_and_gradients_match_eager(interpret, build, impl, training):
    torch.manual_seed(0)
    model = quietly(build, impl).train(training)
    ids = torch.randint(0, 128, (2, 24))

    expl = ioaware.explain(model, ids)
    assert len(expl.rewrites) == LAYERS, expl
    assert not [f for f in expl.fallbacks if f.kind == "attention"], expl
    assert_compiled_matches_eager(model, ids, TOLERANCE[torch.float32])
