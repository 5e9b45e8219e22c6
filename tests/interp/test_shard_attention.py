"""Shard-pair attention kernels (ioaware/parallel/shard.py) under the interpreter.

The global problem is cut into uneven query and key ranges by hand; every pair the mask
does not empty runs the shard kernels with global positions, the partial (out, lse)
merge by log-sum-exp, and the backward of each pair from the merged (out, lse) sums to
eager's gradients. One process, no torch.distributed: the ring's arithmetic alone.
"""

from __future__ import annotations

import pytest
import torch
from ring_cases import assert_close, cases, eager_grads, problem

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel import global_spec, merge_partial, pair_may_see
from ioaware.parallel.shard import shard_backward, shard_forward

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

SEQ = 29
RANGES = [(0, 7), (7, 13), (20, 9)]  # uneven, none a multiple of the 32×16 tiles


@pytest.mark.parametrize("case", cases(SEQ), ids=lambda c: c.name)
def test_pairs_merge_to_eager(case):
    q, k, v, dout = problem(case, seed=3)
    want = eager_grads(case, q, k, v, dout)
    inputs = [case.tensors[t.name] for t in case.spec.inputs]
    learned = [x.requires_grad_(False) for t, x in zip(case.spec.inputs, inputs)
               if t.requires_grad]
    out = torch.zeros(q.shape, dtype=torch.float32)
    lse = torch.full(q.shape[:3], float("-inf"))
    skipped = 0
    for q0, nq in RANGES:
        for k0, nk in RANGES:
            if not pair_may_see(case.spec, (q0, nq), (k0, nk)):
                skipped += 1
                continue
            o, l = shard_forward(case.spec, q[:, :, q0:q0 + nq], k[:, :, k0:k0 + nk],
                                 v[:, :, k0:k0 + nk], inputs, q0, k0)
            merge_partial(out[:, :, q0:q0 + nq], lse[:, :, q0:q0 + nq], o, l)
    assert_close("out", out, want["out"])
    # the pairs above the diagonal; the window also empties queries 20.. against keys ..6
    assert skipped == {"window": 4}.get(case.name, 3 if case.spec.causal else 0)

    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dlearned = [torch.zeros_like(x) for x in learned]
    for q0, nq in RANGES:
        for k0, nk in RANGES:
            if not pair_may_see(case.spec, (q0, nq), (k0, nk)):
                continue
            rows, cols = slice(q0, q0 + nq), slice(k0, k0 + nk)
            gq, gk, gv, gin = shard_backward(
                case.spec, dout[:, :, rows], q[:, :, rows], k[:, :, cols], v[:, :, cols],
                out[:, :, rows], lse[:, :, rows], None, inputs, q0, k0)
            dq[:, :, rows] += gq
            dk[:, :, cols] += gk
            dv[:, :, cols] += gv
            for acc, g in zip(dlearned, gin):
                acc += g
    for name, got in (("q", dq), ("k", dk), ("v", dv)):
        assert_close(f"d{name}", got, want[name])
    for t, got in zip([t for t in case.spec.inputs if t.requires_grad], dlearned):
        assert_close(f"d{t.name}", got, want[t.name])


def test_rows_with_no_visible_key_give_minus_inf_and_zero():
    """Causal, queries 8..15 against keys 10..19: rows 8 and 9 see nothing there."""
    case = cases(SEQ)[0]
    q, k, v, _ = problem(case, seed=5)
    out, lse = shard_forward(case.spec, q[:, :, 8:16], k[:, :, 10:20], v[:, :, 10:20], [],
                             8, 10)
    assert torch.isneginf(lse[:, :, :2]).all() and torch.isfinite(lse[:, :, 2:]).all()
    assert (out[:, :, :2] == 0).all()


def test_pair_may_see_proves_what_it_can():
    causal = cases(SEQ)[0].spec
    window = cases(SEQ)[1].spec  # causal and q - kv < 5
    assert not pair_may_see(causal, (0, 10), (10, 5))  # keys all after the queries
    assert pair_may_see(causal, (10, 5), (14, 3))  # the diagonal crosses the pair
    assert not pair_may_see(window, (20, 5), (0, 10))  # all keys older than the window
    assert pair_may_see(window, (20, 5), (12, 10))
    document = cases(SEQ)[2].spec  # data-dependent part: never a proof
    assert pair_may_see(document, (20, 5), (0, 10))


def test_unshardable_specs_are_refused_naming_the_spec():
    base = {"head_dim": 16, "head_dim_v": 16, "dtype": "float32", "scale": 0.25}
    with pytest.raises(ValueError, match="dropout_p"):
        global_spec(AttentionSpec(causal=True, dropout_p=0.1, **base))
    with pytest.raises(ValueError, match="mask_semantics"):
        global_spec(AttentionSpec(causal=True, mask_semantics="fill", mask_fill=-5.0, **base))


def test_document_tiles_a_pair_empties_are_skipped_inside_it():
    """The document vector reaches the kernels as the pair's slices (plain per-token
    loads), so the block map bounds it per tile: queries 20..51 (document 1) against
    keys 0..31 visit the key tile 16..31 only, not 0..15 (document 0)."""
    from ioaware.codegen.runtime import kernel_module
    from ioaware.parallel.shard import _pair_inputs

    spec = next(c for c in cases(SEQ) if c.name == "document").spec
    gspec = global_spec(spec)
    assert "doc_q1[b, q_idx]" in gspec.mask and "doc_kv1[b, kv_idx]" in gspec.mask
    doc = (torch.arange(64) >= 16).long().view(1, 64)
    inputs = _pair_inputs(spec, [doc], (20, 32), (0, 32), torch.device("cpu"))
    module = kernel_module("attention_fwd", gspec, torch.device("cpu"))
    full_cnt, _, part_cnt, part_list, _, _ = module.block_map(
        inputs, 1, 2, 32, 32, 32, 16, False, torch.device("cpu"))
    assert full_cnt.tolist() == [[0]] and part_cnt.tolist() == [[1]]
    assert part_list[0, 0, 0].item() == 1  # the key tile 16..31
