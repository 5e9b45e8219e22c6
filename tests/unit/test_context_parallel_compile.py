"""`ioaware.compile(..., context_parallel=cp)` refuses, when the graph is compiled and
before any collective, what the ring cannot take: attention that would stay local to
this rank's rows, and regions that cannot be sharded. No process group is needed: the
refusals come before the ring runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx

import ioaware
from ioaware.explain import Fallback
from ioaware.parallel import ContextParallel
from ioaware.parallel.context import refuse_local_attention


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_left_in_a_graph_is_refused():
    gm = fx.symbolic_trace(_sdpa)
    with pytest.raises(ValueError, match="scaled_dot_product_attention is not rewritten"):
        refuse_local_attention(gm, [])


def test_attention_fallbacks_are_refused_with_their_reason():
    gm = fx.symbolic_trace(lambda x: x + 1)
    with pytest.raises(ValueError, match="attention: probabilities used elsewhere"):
        refuse_local_attention(gm, [Fallback("attention", "probabilities used elsewhere")])
    refuse_local_attention(gm, [Fallback("scan", "not a recurrence")])  # not attention


def test_dropout_attention_is_refused_when_compiled():
    def attention_with_dropout(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, is_causal=True)

    compiled = ioaware.compile(attention_with_dropout, context_parallel=ContextParallel())
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(Exception, match="dropout_p=0.5: dropout cannot be sharded"):
        compiled(q, q, q)


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="balance='stripes'"):
        ContextParallel(balance="stripes")
    with pytest.raises(TypeError, match="context_parallel must be"):
        ioaware.compile(_sdpa, context_parallel="group")
    with pytest.raises(ValueError, match="verify=True"):
        ioaware.compile(_sdpa, context_parallel=ContextParallel(), verify=True)
