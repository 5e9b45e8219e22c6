"""generate() of Mamba-2 and a Mamba-2 hybrid under ioaware (tiny random models, kernels
under Triton's interpreter): every mixer's decode step (L = 1 state update, the state in
the cache) becomes one in-place `ioaware::ssd_step`; greedy tokens equal eager's, the
logits of every step are within fp32 tolerance, and the cache's states after the last
step equal eager's.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from ssd_models import MIXERS, build

import ioaware
from ioaware import backend
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.usefixtures("interpret")
transformers = pytest.importorskip("transformers")

NEW_TOKENS = 3


def _states(out, layers: int) -> list[torch.Tensor]:
    """The SSM states the generation's cache holds, one per mixer (copies)."""
    cache = out.past_key_values
    found = [cache.get_recurrent_state(i) for i in range(layers)
             if isinstance(cache.layers[i], transformers.cache_utils.LinearAttentionLayer)]
    return [t.clone() for t in found]


@pytest.mark.parametrize("name", ["mamba2", "bamba"])
def test_generate_matches_eager_every_step_rewritten(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(name, use_cache=True).eval()
    ids = torch.randint(1, 128, (1, 11))  # prefill: a chunk of 8 and a partial one
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "output_logits": True,
              "return_dict_in_generate": True}
    with torch.no_grad():
        ref = model.generate(ids, **kwargs)
        ref_states = _states(ref, model.config.num_hidden_layers)
        before = collections.Counter(backend.counters)
        model.forward = ioaware.compile(model.forward)
        got = model.generate(ids, **kwargs)
    counted = backend.counters - before
    assert got.sequences.tolist() == ref.sequences.tolist()
    for g, w in zip(got.logits, ref.logits, strict=True):
        assert relative_error(g, w) <= TOLERANCE[torch.float32]
    mixers = MIXERS[name][1]
    # the prefill's chunked SSDs and, in each decode graph, every mixer's step
    assert counted["ssd"] == mixers, counted
    assert counted["ssd_decode"] >= mixers and counted["ssd_decode"] % mixers == 0, counted
    got_states = _states(got, model.config.num_hidden_layers)
    assert len(got_states) == len(ref_states) == mixers
    for g, w in zip(got_states, ref_states):
        assert relative_error(g, w) <= TOLERANCE[torch.float32]


def test_bf16_decode_steps_within_bf16_tolerance():
    """bf16 weights, fp32 cache states: eager rounds dt, the update and the output in bf16
    where the kernel keeps fp32, so greedy tokens of a tiny random model may flip on a
    near tie; the steps are compared teacher-forced instead (same tokens fed to both)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build("mamba2", use_cache=True).eval().to(torch.bfloat16)
    ids, steps = torch.randint(1, 128, (1, 11)), torch.randint(1, 128, (1, NEW_TOKENS))

    def decode(forward):  # from a copy of one eager prefill: only the steps differ
        cache, logits = copy.deepcopy(prefill), []
        for t in range(steps.shape[1]):
            logits.append(forward(steps[:, t:t + 1], use_cache=True, cache=cache).logits)
        return logits, [cache.get_recurrent_state(i).clone() for i in range(2)]

    with torch.no_grad():
        prefill = model(ids, use_cache=True).cache
        want, want_states = decode(model.forward)
        before = backend.counters["ssd_decode"]
        got, got_states = decode(ioaware.compile(model.forward))
    assert backend.counters["ssd_decode"] - before == MIXERS["mamba2"][1]  # one graph
    for g, w in zip(got + got_states, want + want_states, strict=True):
        assert relative_error(g.float(), w.float()) <= TOLERANCE[torch.bfloat16]


def test_decode_at_a_second_batch_size_rewrites_every_step():
    """Decode steps at batch 1, then at batch 2, through the same compiled forward (from
    eager prefills): dynamo recompiles the decode graph with the batch symbolic
    (automatic dynamic shapes) and every mixer's step is still rewritten (n_groups = 2);
    logits and the cache's states as eager's."""
    torch.manual_seed(0)
    model = build("mamba2", use_cache=True).eval()
    compiled = ioaware.compile(model.forward)
    mixers = MIXERS["mamba2"][1]
    for batch in (1, 2):
        ids, step = torch.randint(1, 128, (batch, 5)), torch.randint(1, 128, (batch, 1))
        with torch.no_grad():
            prefill = model(ids, use_cache=True).cache
            results, before = [], backend.counters["ssd_decode"]
            for forward in (model.forward, compiled):
                cache = copy.deepcopy(prefill)
                logits = forward(step, use_cache=True, cache=cache).logits
                results.append([logits] + [cache.get_recurrent_state(i) for i in range(2)])
        assert backend.counters["ssd_decode"] - before == mixers, batch  # a new graph each
        for g, w in zip(results[1], results[0], strict=True):
            assert relative_error(g, w) <= TOLERANCE[torch.float32]
