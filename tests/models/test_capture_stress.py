"""Capture of graphs that hold data-dependent ops (issue 14, reproducers 5 and 6).

Two tiny models compiled one after the other in one process (Qwen3, then Phi-3: their
RMSNorm eps differ, so dynamo reads the eps through `.item()` from the second model on),
and a mixture-of-experts model (GraniteMoeHybrid, 2 experts, a Mamba and an attention
layer) compiled after them. Each graph must be captured (no "capture failed" fallback),
its attention rewritten, and logits and gradients must match eager.
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE

transformers = pytest.importorskip("transformers")

from hf_models import LAYERS, assert_compiled_matches_eager, quietly

COMMON = {"num_hidden_layers": LAYERS, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 128,
              "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}


def qwen3(impl: str) -> torch.nn.Module:
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        head_dim=16, rms_norm_eps=1e-6, attn_implementation=impl, **COMMON))


def phi3(impl: str) -> torch.nn.Module:
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(
        rms_norm_eps=1e-5, attn_implementation=impl, **COMMON))


def granite_moe_hybrid(impl: str) -> torch.nn.Module:
    fields = {**COMMON, "intermediate_size": 64}
    return transformers.GraniteMoeHybridForCausalLM(transformers.GraniteMoeHybridConfig(
        shared_intermediate_size=64, num_local_experts=2, num_experts_per_tok=1,
        layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=8, mamba_n_groups=1, mamba_expand=1, mamba_chunk_size=8,
        rms_norm_eps=1e-4, attn_implementation=impl, **fields))


def _captured(model, ids) -> ioaware.Explanation:
    expl = ioaware.explain(model, ids)
    failed = [f.reason for f in expl.fallbacks if "failed" in f.reason]
    assert not failed, failed
    assert any(r.kind == "attention" for r in expl.rewrites), expl
    return expl


def test_models_in_one_process_and_moe_are_captured(interpret):
    # no dynamo reset between the models: the second sees the first's eps
    torch.manual_seed(0)
    ids = torch.randint(1, 100, (2, 12))
    for build in (qwen3, phi3, granite_moe_hybrid):
        model = quietly(build, "sdpa").eval()
        _captured(model, ids)
        assert_compiled_matches_eager(model, ids, TOLERANCE[torch.float32])
