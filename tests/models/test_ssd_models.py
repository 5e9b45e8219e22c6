"""Mamba-2 and the Mamba-2 hybrids of `transformers` (tests/ssd_models.py: tiny configs,
random weights): every Mamba-2 mixer's chunked SSD becomes one `ioaware::ssd` (as many
ssd rewrites as the model has mixers, no ssd fallback), and logits and every parameter
gradient match eager with the kernels under Triton's interpreter; with use_cache=True
the prefill hands its final states to the cache and the decode steps that follow give
eager's logits.
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.verify import TOLERANCE, relative_error

pytest.importorskip("transformers")

from hf_models import assert_compiled_matches_eager
from ssd_models import MIXERS, build


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_rewritten_logits_and_gradients_match(interpret, name):
    torch._dynamo.reset()  # graphs of the previous model must not be reused
    torch.manual_seed(0)
    model = build(name)
    ids = torch.randint(0, 128, (1, 12))  # 12 steps: one and a half chunks of 8
    before = ioaware.counters["ssd"]
    assert_compiled_matches_eager(model, ids, TOLERANCE[torch.float32])
    assert ioaware.counters["ssd"] - before == MIXERS[name][1]


def test_bf16_mamba2_explained_rewritten_and_as_eager(interpret):
    """bf16 weights: the region casts to fp32 inside (transformers' spelling) and computes
    dt's softplus in bf16; explain names both mixers and what each fused."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build("mamba2").to(torch.bfloat16)
    ids = torch.randint(0, 128, (1, 12))
    expl = ioaware.explain(model, ids)
    ssd = [r for r in expl.rewrites if r.kind == "ssd"]
    assert len(ssd) == 2 and not [f for f in expl.fallbacks if f.kind == "ssd"], expl
    for r in ssd:
        assert r.detail["fused"] == ["dt_bias", "softplus", "dt_clamp", "D"], r.detail
        assert (r.detail["heads"], r.detail["groups"], r.detail["head_dim"],
                r.detail["d_state"], r.detail["dtype"]) == (4, 2, 16, 8, "bfloat16")
        assert r.hbm_bytes_after < r.hbm_bytes_before
    assert_compiled_matches_eager(model, ids, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("name", ["mamba2"])
def test_prefill_then_decode_steps_match_eager(interpret, name):
    """use_cache=True: the prefill's SSD also returns the final state (fused), which the
    L=1 decode steps read from the cache. (A Zamba2 of Mamba layers only cannot decode
    eagerly in transformers 5.25: its cache has no attention layer to size masks by.)"""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(name, use_cache=True).eval()
    ids, steps = torch.randint(0, 128, (1, 11)), torch.randint(0, 128, (1, 1))

    def generate(m):
        out = m(ids, use_cache=True)
        logits = [out.logits]
        for t in range(steps.shape[1]):
            key = "cache" if hasattr(out, "cache") else "past_key_values"
            cache = getattr(out, key)
            out = m(steps[:, t:t + 1], use_cache=True, **{key: cache})
            logits.append(out.logits)
        return logits

    with torch.no_grad():
        want = generate(model)
        before = ioaware.counters["ssd"]
        got = generate(ioaware.compile(model))
    assert ioaware.counters["ssd"] - before == MIXERS[name][1]
    for g, w in zip(got, want):
        assert relative_error(g, w) <= TOLERANCE[torch.float32]


def test_new_prompt_lengths_and_batches_stay_rewritten(interpret):
    """One compiled model called at a second length and batch: dynamo
    recompiles with the sizes symbolic, the probe checks each region at several lengths
    its guards admit, and every mixer stays rewritten; logits and gradients as eager's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build("mamba2")
    compiled = ioaware.compile(model)
    for batch, length in ((1, 12), (2, 7)):
        ids = torch.randint(0, 128, (batch, length))
        before = ioaware.counters["ssd"]
        got = compiled(ids).logits
        got.square().mean().backward()
        got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        want = model(ids).logits
        want.square().mean().backward()
        assert ioaware.counters["ssd"] - before == MIXERS["mamba2"][1], (batch, length)
        assert relative_error(got, want) <= TOLERANCE[torch.float32]
        for name, p in model.named_parameters():
            assert relative_error(got_grads[name], p.grad, floor=1e-3) <= \
                TOLERANCE[torch.float32], name
        model.zero_grad(set_to_none=True)
