"""Sequence layouts for context parallelism (ioaware/parallel/layout.py), the ring's plan
and the checks that run before any collective. No process group, no kernels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import fx

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel import (
    ShardLayout,
    balanced_layout,
    contiguous_layout,
    document_row_work,
    zigzag_layout,
)
from ioaware.parallel.context import gather_plan
from ioaware.parallel.ring import ring_plan
from ioaware.parallel.shard import plain_pair
from ioaware.spec import TensorInput

CAUSAL = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True, scale=0.25)


@pytest.mark.parametrize("make", [contiguous_layout, zigzag_layout])
@pytest.mark.parametrize("seq_len,world", [(29, 2), (29, 4), (8, 8), (100, 3)])
def test_layouts_tile_the_sequence_evenly(make, seq_len, world):
    layout = make(seq_len, world)
    x = torch.arange(seq_len).view(1, seq_len, 1)
    parts = [layout.shard(x, r, dim=1) for r in range(world)]
    assert torch.equal(layout.unshard(parts, dim=1), x)  # every position once
    for r, part in enumerate(parts):
        assert torch.equal(part.flatten(), layout.positions(r))
    lengths = [layout.length(r) for r in range(world)]
    assert max(lengths) - min(lengths) <= (1 if make is contiguous_layout else 2)


def test_zigzag_pairs_head_and_tail_chunks():
    layout = zigzag_layout(16, 4)  # chunks of 2: rank r holds chunks r and 7 - r
    assert layout.chunks[0] == ((0, 2), (14, 2))
    assert layout.chunks[3] == ((6, 2), (8, 2))
    # causal work (visible keys summed over rows) is the same on every rank
    work = [sum(p + 1 for p in layout.positions(r).tolist()) for r in range(4)]
    assert len(set(work)) == 1


def test_balanced_layout_evens_document_work():
    doc = torch.tensor([0] * 4 + [1] * 4 + [2] * 24)  # two short documents, a long one
    work = document_row_work(doc)  # causal: position within its document + 1
    assert work[:6].tolist() == [1, 2, 3, 4, 1, 2] and work[8:10].tolist() == [1, 2]
    assert document_row_work(doc, causal=False)[9].item() == 24
    layout = balanced_layout(work.float(), 2)
    shares = [float(work[layout.positions(r)].sum()) for r in range(2)]
    total = float(work.sum())
    assert max(shares) <= total / 2 + work.max().item()  # within one row of even
    contiguous = [float(work[contiguous_layout(32, 2).positions(r)].sum()) for r in range(2)]
    assert max(shares) < 0.7 * max(contiguous)  # contiguous: 56 against 264


def test_layouts_refuse_bad_sizes_naming_them():
    with pytest.raises(ValueError, match="seq_len=3 is shorter than world=4"):
        zigzag_layout(3, 4)
    with pytest.raises(ValueError, match="tile"):
        ShardLayout(10, (((0, 4),), ((5, 5),)))  # position 4 missing
    with pytest.raises(ValueError, match="x.shape"):
        contiguous_layout(10, 2).shard(torch.zeros(1, 9), 0, dim=1)
    with pytest.raises(ValueError, match="row_work"):
        balanced_layout(torch.ones(2, 5), 2)


def test_ring_plan_sends_shards_only_as_far_as_the_mask_needs():
    world = 4
    pairs, last_hop = ring_plan(CAUSAL, contiguous_layout(29, world))
    assert last_hop == (3, 2, 1, 0)  # shard r is needed by ranks r..W-1 only
    assert all(not pairs[dst][src] for dst in range(world) for src in range(dst + 1, world))
    pairs, last_hop = ring_plan(CAUSAL, zigzag_layout(29, world))
    assert last_hop == (3, 3, 3, 3)
    # rank 0 (chunks 0 and 7) against shard 1 (chunks 1 and 6): chunk 0 sees neither
    assert len(pairs[0][1]) == 2
    window = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                           scale=0.25, mask="q_idx - kv_idx < 3")
    _, last_hop = ring_plan(window, contiguous_layout(40, world))
    assert last_hop == (1, 1, 1, 0)  # a short window reaches the next rank only


def test_plain_pairs_of_a_causal_ring():
    assert plain_pair(CAUSAL, (10, 5), (0, 10)) is False  # every key before every query
    assert plain_pair(CAUSAL, (10, 5), (10, 5)) is True  # diagonal: local causal is global
    assert plain_pair(CAUSAL, (10, 5), (8, 5)) is None  # straddles the diagonal
    alibi = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                          scale=1 / math.sqrt(16), score_mod="score + s[h]*(kv_idx - q_idx)",
                          inputs=(TensorInput("s", 1, "float32"),))
    assert plain_pair(alibi, (10, 5), (0, 10)) is None


def test_per_token_inputs_are_gathered_only_when_they_are_graph_inputs():
    padding = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                            scale=0.25, mask="Ne(pad[b, kv_idx], 0)",
                            inputs=(TensorInput("pad", 2, "bool"),))
    graph = fx.Graph()
    given = graph.placeholder("attention_mask")
    computed = graph.call_function(torch.ne, (given, 0))
    assert gather_plan(padding, [given]) == [0, 1]  # all-gather input 0 along axis 1
    with pytest.raises(ValueError, match="reads pad per token"):
        gather_plan(padding, [computed])  # computed in the sharded graph: refused
    alibi = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                          scale=0.25, score_mod="score + s[h]*(kv_idx - q_idx)",
                          inputs=(TensorInput("s", 1, "float32"),))
    assert gather_plan(alibi, [computed]) == []  # per head: the same on every rank
    relative = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                             scale=0.25, score_mod="score + t[h, q_idx - kv_idx + 40]",
                             inputs=(TensorInput("t", 2, "float32"),))
    with pytest.raises(ValueError, match="table over positions"):
        gather_plan(relative, [given])
