"""The attention pass on before/after graphs, and the cases it must leave alone.

Each test captures a small function to canonical ATen, runs the pass, and checks the
graph that comes out: one `ioaware::flash_attention` call with the inferred scale and
causal flag (or one `ioaware::attention` call when a mask, bias or dropout needs the
general Spec), and no softmax or batched matmul left of the region. No kernel runs here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from spellings import SPELLINGS, make

from ioaware import capture, hardware
from ioaware.passes.attention import ATTENTION
from ioaware.passes.driver import PassContext
from ioaware.passes.driver import run_pass as drive

aten = torch.ops.aten


def canonical(fn, *args):
    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        return gm.forward

    torch.compile(fn, backend=backend)(*args)
    return box["gm"]


def run_pass(gm):
    out = drive(ATTENTION, gm, PassContext(hardware.get_profile("h100"), "reference", {}))
    return out.rewrites, out.fallbacks


def targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def qkv(b=2, h=4, n=32, d=16, hkv=None):
    return (torch.randn(b, h, n, d), torch.randn(b, hkv or h, n, d), torch.randn(b, hkv or h, n, d))


@pytest.mark.parametrize("name", sorted(SPELLINGS))
@pytest.mark.parametrize("causal", [False, True])
def test_every_spelling_becomes_one_flash_call(name, causal):
    q, k, v = qkv(hkv=2 if name == "sdpa_gqa" else None)
    gm = canonical(make(name, causal, 0.2), q, k, v)
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == ("causal" if causal else "none")
    calls = [n for n in gm.graph.nodes if n.target is torch.ops.ioaware.flash_attention.default]
    assert len(calls) == 1
    _, _, _, scale, is_causal = calls[0].args
    assert scale == pytest.approx(0.2) and is_causal == causal
    assert aten._softmax.default not in targets(gm)
    assert aten.bmm.default not in targets(gm)
    assert aten.scaled_dot_product_attention.default not in targets(gm)
    if name == "sdpa_gqa":
        assert rewrites[0].detail["gqa_groups"] == 2


def test_matmul_reads_4d_inputs_without_the_reshape_copy():
    # q @ kᵀ on 4-D tensors becomes reshape(expand(q)) → bmm; the kernel reads q itself.
    q, k, v = qkv()
    gm = canonical(make("matmul_masked_fill", True, 0.25), q, k, v)
    run_pass(gm)
    call = next(n for n in gm.graph.nodes if n.target is torch.ops.ioaware.flash_attention.default)
    assert call.args[0].op == "placeholder"
    assert aten.reshape.default not in targets(gm)


def test_rewritten_graph_computes_what_eager_computes():
    q, k, v = qkv()
    fn = make("einsum_where", True, 0.25)
    gm = canonical(fn, q, k, v)
    run_pass(gm)
    out = gm(q, k, v)
    torch.testing.assert_close(out[0] if isinstance(out, (tuple, list)) else out, fn(q, k, v))


def test_scale_on_k_is_folded():
    def fn(q, k, v):
        return (q @ (k * 0.5).transpose(-2, -1)).softmax(-1) @ v

    gm = canonical(fn, *qkv())
    rewrites, _ = run_pass(gm)
    assert rewrites and rewrites[0].detail["scale"] == 0.5
    assert aten.mul.Tensor not in targets(gm)


# --- cases the pass must leave alone, each with its reason ----------------------------


def _softmax_other_axis(q, k, v):
    return (q @ k.transpose(-2, -1)).softmax(-2) @ v


def _probs_returned(q, k, v):
    p = (q @ k.transpose(-2, -1)).softmax(-1)
    return p @ v, p


def _scores_reused(q, k, v):
    s = q @ k.transpose(-2, -1)
    return s.softmax(-1) @ v + s.sum()


def _sliding_window(q, k, v):
    n = q.shape[-2]
    i = torch.arange(n)
    keep = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 4)
    return (q @ k.transpose(-2, -1)).masked_fill(~keep, float("-inf")).softmax(-1) @ v


def _mask_from_input(q, k, v, mask):
    return (q @ k.transpose(-2, -1)).masked_fill(mask, float("-inf")).softmax(-1) @ v


def _bias_added(q, k, v, bias):
    return ((q @ k.transpose(-2, -1)) + bias).softmax(-1) @ v


def _dropout_training(q, k, v):
    return F.dropout((q @ k.transpose(-2, -1)).softmax(-1), p=0.5, training=True) @ v


def _sdpa_with_mask(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _fill_not_inf(q, k, v):
    n = q.shape[-2]
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    return (q @ k.transpose(-2, -1)).masked_fill(~keep, -1.0).softmax(-1) @ v


FALLBACKS = {
    _softmax_other_axis: "not the key (last) axis",
    _probs_returned: "probabilities are used elsewhere",
    _scores_reused: "used elsewhere",
}


@pytest.mark.parametrize("fn", list(FALLBACKS), ids=lambda f: f.__name__.strip("_"))
def test_fallback_leaves_region_and_says_why(fn):
    q, k, v = qkv(n=8)
    gm = canonical(fn, q, k, v)
    before = targets(gm)
    rewrites, fallbacks = run_pass(gm)
    assert not rewrites
    assert len(fallbacks) == 1 and FALLBACKS[fn] in fallbacks[0].reason, fallbacks
    assert targets(gm) == before  # untouched


# Once fallbacks of v0; now each becomes one call of the general ioaware::attention op.
GENERAL = {
    _sliding_window: "causal & sliding_window(4)",
    _mask_from_input: "data",
    _bias_added: "none",
    _dropout_training: "none",
    _sdpa_with_mask: "data",
    _fill_not_inf: "none",  # masked_fill(-1.0): a finite fill, kept exactly
}


@pytest.mark.parametrize("fn", list(GENERAL), ids=lambda f: f.__name__.strip("_"))
def test_general_regions_become_one_attention_call(fn):
    q, k, v = qkv(n=8)
    extra = []
    if fn in (_mask_from_input, _sdpa_with_mask):
        extra = [torch.rand(8, 8) > 0.5]
    if fn is _bias_added:
        extra = [torch.randn(8, 8)]
    gm = canonical(fn, q, k, v, *extra)
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == GENERAL[fn] or fn is _fill_not_inf
    calls = [n for n in gm.graph.nodes if n.target is torch.ops.ioaware.attention.default]
    assert len(calls) == 1
    assert aten._softmax.default not in targets(gm)
    seed = calls[0].args[5]
    if fn is _dropout_training:
        # the seed is drawn in the graph at every call, as eager draws its keep mask
        assert rewrites[0].detail["dropout_p"] == 0.5
        assert seed.target is aten.randint.low
        assert aten.native_dropout.default not in targets(gm)
    else:
        assert seed is None


def _sdpa_bool_causal_mask(q, k, v):
    n = q.shape[-2]
    i = torch.arange(n)
    keep = (i[None, None, :, None] >= i[None, None, None, :]).expand(q.shape[0], -1, n, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def _sdpa_additive_causal_mask(q, k, v):
    n = q.shape[-2]
    bias = torch.full((n, n), float("-inf")).triu(1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize("fn", [_sdpa_bool_causal_mask, _sdpa_additive_causal_mask],
                         ids=["bool", "additive"])
def test_sdpa_index_only_attn_mask_is_causal(fn):
    # transformers hands SDPA its causal mask as a tensor built from aranges.
    gm = canonical(fn, *qkv())
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == "causal"


def _additive_where_with_tensor_constant(q, k, v):
    # transformers 5.17's eager mask: where(kv_idx <= q_idx, tensor(0.), finfo.min), the
    # literal lifted by dynamo into a graph constant (get_attr, lift_fresh_copy, detach_).
    n = q.shape[-2]
    i = torch.arange(n)
    keep = i[None, None, None, :] <= i[None, None, :, None]
    bias = torch.where(keep, torch.tensor(0.0), torch.finfo(q.dtype).min)
    return ((q @ k.transpose(-2, -1)) * 0.25 + bias).softmax(-1) @ v


def test_additive_mask_with_a_lifted_constant_and_finfo_min():
    gm = canonical(_additive_where_with_tensor_constant, *qkv())
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == "causal"
