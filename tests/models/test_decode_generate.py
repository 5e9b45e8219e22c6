"""generate() under ioaware: greedy tokens equal eager's, and every attention of a decode
step runs the split-KV decode kernels (under Triton's interpreter, tiny random models).

A generation compiles a prefill graph, then decode graphs: with dynamic shapes the
first decode step specialises and the second marks the cache length dynamic, after
which no step recompiles (test_compiles_of_a_long_generation states the count).
"""

from __future__ import annotations

import collections

import pytest
import torch
from hf_models import LAYERS, gpt2, llama_gqa, mistral_sliding, quietly

import ioaware
from ioaware import backend

pytestmark = pytest.mark.usefixtures("interpret")


def _gemma2(impl):
    import transformers

    return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        num_hidden_layers=LAYERS, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, vocab_size=128, sliding_window=8,
        attn_logit_softcapping=50.0, attn_implementation=impl, pad_token_id=0,
        bos_token_id=0, eos_token_id=0))


def _generate(model, ids, new_tokens, **kwargs):
    """(eager tokens, ioaware tokens, rewrites counted while generating)."""
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, **kwargs)
        before = collections.Counter(backend.counters)
        model.forward = ioaware.compile(model.forward)
        got = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, **kwargs)
    return ref, got, backend.counters - before


@pytest.mark.parametrize("build, impl, cache", [
    (llama_gqa, "sdpa", None),  # DynamicCache, GQA by enable_gqa
    (llama_gqa, "eager", "static"),  # StaticCache: cache_position mask, repeat_kv
    (mistral_sliding, "sdpa", None),  # sliding window 8 < the generated length
    (gpt2, "eager", None),  # multi-head, additive causal mask
    (_gemma2, "eager", None),  # soft-capping, alternating sliding-window layers
], ids=["llama_sdpa_dynamic", "llama_eager_static", "mistral_sdpa_window", "gpt2_eager",
        "gemma2_eager"])
def test_generate_matches_eager_and_decodes(build, impl, cache):
    torch.manual_seed(0)
    model = quietly(build, impl).eval()
    ids = torch.randint(1, 128, (1, 6))
    kwargs = {"cache_implementation": cache} if cache else {}
    ref, got, counted = _generate(model, ids, 3, **kwargs)
    assert got.tolist() == ref.tolist()
    # every attention site of every decode graph rewritten to the decode kernels, and
    # nothing left as it was; the prefill graph's LAYERS sites keep the prefill kernels
    # (Nq = Nk), except with a StaticCache, whose prompt is a few rows against the whole
    # cache (a chunked prefill, decode-shaped)
    assert counted["fallbacks"] == 0, counted
    assert counted["attention"] == (0 if cache == "static" else LAYERS), counted
    assert counted["decode"] >= LAYERS and counted["decode"] % LAYERS == 0, counted


def test_compiles_of_a_long_generation(monkeypatch):
    """64 new tokens with a DynamicCache: 3 graphs (prefill, the first decode step, the
    decode step with the cache length dynamic), every decode-step attention decoded.
    Counting compiles needs no kernel: the ops run their torch reference here."""
    from ioaware.config import config

    monkeypatch.setattr(config, "interpret", False)
    torch.manual_seed(0)
    model = quietly(llama_gqa, "sdpa").eval()
    ids = torch.randint(1, 128, (1, 5))
    ref, got, counted = _generate(model, ids, 64)
    assert got.tolist() == ref.tolist()
    assert counted["attention"] == LAYERS and counted["decode"] == 2 * LAYERS, counted


def test_compiles_of_a_static_cache_generation(monkeypatch):
    """40 new tokens with a StaticCache (SDPA): 2 graphs, prefill and one decode step
    whose shapes never change again (the cache's length is fixed)."""
    from ioaware.config import config

    monkeypatch.setattr(config, "interpret", False)
    torch.manual_seed(0)
    model = quietly(llama_gqa, "sdpa").eval()
    ids = torch.randint(1, 128, (1, 5))
    ref, got, counted = _generate(model, ids, 40, cache_implementation="static")
    assert got.tolist() == ref.tolist()
    assert counted["attention"] + counted["decode"] == 2 * LAYERS, counted
    assert counted["decode"] >= LAYERS, counted


def test_static_cache_bad_positions_fail_as_eager():
    """A StaticCache too short for the query, and a cache_position past the cache's end:
    the compiled step raises eager's error (the cache update's IndexError, before any
    attention runs) or, where eager raises nothing, returns eager's logits; nothing is
    read out of bounds."""
    import transformers

    torch.manual_seed(0)
    model = quietly(llama_gqa, "eager").eval()
    compiled = ioaware.compile(model.forward)
    ids = torch.randint(1, 128, (1, 4))

    def step(forward, ids, cache_len, positions):
        cache = transformers.StaticCache(config=model.config, max_cache_len=cache_len)
        with torch.no_grad():
            return forward(input_ids=ids, past_key_values=cache, cache_position=positions,
                           use_cache=True).logits

    errors = []
    for forward in (model.forward, compiled):  # a 4-token query, a 3-slot cache
        with pytest.raises(IndexError, match="out of bounds") as error:
            step(forward, ids, 3, torch.arange(4))
        errors.append(str(error.value))
    assert errors[0] == errors[1]
    # one token written at position 9 of an 8-slot cache: eager (transformers' update)
    # raises nothing here, so the compiled step must give the same logits
    want = step(model.forward, ids[:, :1], 8, torch.tensor([9]))
    got = step(compiled, ids[:, :1], 8, torch.tensor([9]))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
