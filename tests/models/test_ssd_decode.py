"""generate() of Mamba-2 and a Mamba-2 hybrid under ioaware (tiny random models, kernels
under Triton's interpreter): every mixer's decode step (L = 1 state update, the state in
the cache) becomes one in-place `ioaware::ssd_step`; greedy tokens equal eager's, the
logits of every step are within fp32 tolerance, and the cache's states after the last
step equal eager's.
"""

from __future__ import annotations

import collections

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
