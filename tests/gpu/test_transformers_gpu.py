"""GPU tier for real models: tiny transformers models in bf16 on CUDA, compiled with
ioaware (kernels compiled, the rest of the graph on Inductor), against eager."""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE

pytest.importorskip("transformers")

from hf_models import LAYERS, assert_compiled_matches_eager, gpt2, llama_gqa, quietly

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [gpt2, llama_gqa], ids=["gpt2", "llama_gqa"])
def test_model_on_gpu_matches_eager(build, impl, dtype):
    torch.manual_seed(0)
    model = quietly(build, impl).cuda().to(dtype).train()
    ids = torch.randint(0, 128, (2, 64), device="cuda")  # GPT-2 has 64 positions
    expl = ioaware.explain(model, ids)
    assert len(expl.rewrites) == LAYERS and expl.rewrites[0].backend == "triton", expl
    assert_compiled_matches_eager(model, ids, TOLERANCE[dtype])
