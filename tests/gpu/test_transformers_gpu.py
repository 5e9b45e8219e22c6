"""GPU tier for real models: tiny transformers models in bf16 on CUDA, compiled with
ioaware (kernels compiled, the rest of the graph on Inductor), against eager."""

from __future__ import annotations

import warnings

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytest.importorskip("transformers")

from hf_models import LAYERS, gpt2, llama_gqa

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [gpt2, llama_gqa], ids=["gpt2", "llama_gqa"])
def test_model_on_gpu_matches_eager(build, impl, dtype):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(impl).cuda().to(dtype).train()
    ids = torch.randint(0, 128, (2, 64), device="cuda")  # GPT-2 has 64 positions
    expl = ioaware.explain(model, ids)
    assert len(expl.rewrites) == LAYERS and expl.rewrites[0].backend == "triton", expl

    fast = ioaware.compile(model)
    logits = fast(ids).logits
    logits.float().square().mean().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    ref = model(ids).logits
    ref.float().square().mean().backward()

    tol = TOLERANCE[dtype]
    assert relative_error(logits, ref) <= tol
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert relative_error(got[name], p.grad, floor=1e-3) <= tol, name
