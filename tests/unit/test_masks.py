"""Mask and score-modification inference, checked by value, not by string.

Each case captures a small function to canonical ATen, runs the attention pass, and
reads back the Spec the rewritten graph hands `ioaware::attention` (and the tensors it
passes). The Spec's logits, evaluated by the reference evaluator of the Spec grammar,
must equal the logits the eager code computes, element by element, -inf and fill values
included. No kernel runs here.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spellings import (
    MASK_SPELLINGS,
    SCORE_MODS,
    allowed,
    make_modded,
    mask_extras,
    mask_trees,
    masked_scores,
    score_bias,
)
from torch import fx

from ioaware import capture, cost, hardware
from ioaware.codegen.attention import reference
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.passes.attention import ATTENTION, masks
from ioaware.passes.driver import PassContext, run_pass
from ioaware.passes.views import hint
from ioaware.spec import B_IDX, KV_IDX, Q_IDX

B, H, NQ, NK, D = 2, 3, 6, 9, 8


def canonical(fn, *args, inputs=None):
    """fn's canonical graph; `inputs` (a list) receives the tensors in dynamo's order."""
    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        if inputs is not None:
            inputs.extend(example_inputs)
        return gm.forward

    torch.compile(fn, backend=backend, dynamic=False)(*args)
    return box["gm"]


class _Calls(fx.Interpreter):
    """Runs the rewritten graph and keeps the arguments of every attention op call."""

    def __init__(self, gm):
        super().__init__(gm)
        self.calls = []

    def call_function(self, target, args, kwargs):
        if target in (torch.ops.ioaware.attention.default,
                      torch.ops.ioaware.flash_attention.default):
            self.calls.append((target, args))
        return super().call_function(target, args, kwargs)


def run_attention(gm, hints=None):
    """(rewrites, fallbacks) of the attention pass on `gm`, priced on an H100."""
    ctx = PassContext(hardware.get_profile("h100"), "reference", hints or {})
    out = run_pass(ATTENTION, gm, ctx)
    return out.rewrites, out.fallbacks


def rewrite(fn, *args):
    """(rewrites, fallbacks, [(spec, q, k, inputs)]) of fn(*args) after the pass."""
    flat = []
    gm = canonical(fn, *args, inputs=flat)
    rewrites, fallbacks = run_attention(gm)
    runner = _Calls(gm)
    runner.run(*flat)
    specs = []
    for target, a in runner.calls:
        if target is torch.ops.ioaware.attention.default:
            specs.append((AttentionSpec.from_json(a[4]), a[0], a[1], list(a[3])))
        else:
            q, k, v, scale, causal = a
            specs.append((AttentionSpec(q.shape[-1], v.shape[-1], "float32", causal, scale),
                          q, k, []))
    return rewrites, fallbacks, specs


def spec_logits(spec, q, k, inputs):
    with torch.no_grad():
        return reference.spec_logits(spec, q, k, inputs)[0]


def assert_same_logits(got, want, causal_only=False):
    """Same probabilities (NaN rows included); same logits unless only a causal mask
    remains, whose fill cannot show (every row keeps key 0)."""
    want = want.expand_as(got)
    torch.testing.assert_close(got.softmax(-1), want.softmax(-1), rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    if causal_only:
        return
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-5, atol=1e-5)


def qk(nq=NQ, nk=NK, h=H):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, h, nq, D, generator=g), torch.randn(B, h, nk, D, generator=g),
            torch.randn(B, h, nk, D, generator=g))


# --- masks: every spelling of every structure gives eager's logits ----------------------

MASKS = {
    "tril_offset": lambda q, k, pad, doc: torch.ones(q.shape[-2], k.shape[-2]).tril(2) > 0,
    "triu_not": lambda q, k, pad, doc: ~torch.ones(q.shape[-2], k.shape[-2],
                                                   dtype=torch.bool).triu(1),
    "bottom_right_causal": lambda q, k, pad, doc: torch.ones(
        q.shape[-2], k.shape[-2], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2]),
    "sliding_window": lambda q, k, pad, doc: allowed(
        ("and", ("atom", "causal", 0), ("atom", "window", 3)), NQ, NK, pad, doc),
    "padding_causal": lambda q, k, pad, doc: allowed(
        ("and", ("atom", "causal", 0), ("atom", "padding", 0)), NQ, NK, pad, doc),
    "document_or_prefix": lambda q, k, pad, doc: allowed(
        ("or", ("atom", "document", 0), ("not", ("atom", "prefix", 2))), NQ, NK, pad, doc),
    "padding_b11n": lambda q, k, pad, doc: pad[:, None, None, :] > 0,
    "data_b1nn": lambda q, k, pad, doc: (doc[:, None, :NQ, None] <= doc[:, None, None, :]),
}


@pytest.mark.parametrize("spelling", ["masked_fill", "where", "additive_min", "additive_inf"])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_mask_spellings_give_eager_logits(name, spelling):
    q, k, v = qk()
    gen = torch.Generator().manual_seed(1)
    ex = mask_extras(B, H, NQ, NK, gen)
    pad, doc = ex["pad"], ex["doc"]
    pad[:, 0] = 1

    def fn(q, k, v, pad, doc):
        s = q @ k.transpose(-2, -1) * 0.25
        return masked_scores(s, MASKS[name](q, k, pad, doc), spelling).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v, pad, doc)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    want = masked_scores(q @ k.transpose(-2, -1) * 0.25, MASKS[name](q, k, pad, doc), spelling)
    assert_same_logits(spec_logits(spec, q_, k_, inputs), want, causal_only=spec.mask is None)
    semantics = {"masked_fill": "neg_inf", "where": "neg_inf", "additive_inf": "neg_inf_add",
                 "additive_min": "add"}[spelling]
    if spec.mask is not None:
        assert spec.mask_semantics == semantics
        # index-only masks never read a tensor; data masks read the small vectors only
        assert all(math.prod(x.shape) <= B * NK for x in inputs) or name == "data_b1nn"


def test_structures_are_named():
    q, k, v = qk(nq=NK)
    ex = mask_extras(B, H, NK, NK, torch.Generator().manual_seed(1))
    tree = ("and", ("and", ("atom", "causal", 0), ("atom", "window", 4)),
            ("atom", "padding", 0))

    def fn(q, k, v, pad, doc):
        s = q @ k.transpose(-2, -1)
        return s.masked_fill(~allowed(tree, NK, NK, pad, doc), float("-inf")).softmax(-1) @ v

    rewrites, _, specs = rewrite(fn, q, k, v, ex["pad"], ex["doc"])
    assert rewrites[0].detail["mask"] == "causal & sliding_window(4) & padding"
    assert rewrites[0].detail["block_density"] == "runtime"
    assert specs[0][0].causal  # the causal conjunct goes to the kernel's fast path


def test_sdpa_bool_mask_is_safe_and_float_mask_is_added():
    q, k, v = qk()
    ex = mask_extras(B, H, NQ, NK, torch.Generator().manual_seed(2))
    pad = ex["pad"]
    pad[0] = 0  # batch 0 sees no key at all: SDPA gives those rows 0

    def sdpa_bool(q, k, v, pad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pad[:, None, None, :] > 0)

    def sdpa_float(q, k, v, bias):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    _, fallbacks, specs = rewrite(sdpa_bool, q, k, v, pad)
    assert not fallbacks
    spec, q_, k_, inputs = specs[0]
    assert spec.mask_semantics == "safe"
    want = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(
        ~(pad[:, None, None, :] > 0), float("-inf"))
    assert_same_logits(spec_logits(spec, q_, k_, inputs), want)

    bias = torch.randn(B, 1, NQ, NK).masked_fill(torch.rand(B, 1, NQ, NK) > 0.7, float("-inf"))
    _, fallbacks, specs = rewrite(sdpa_float, q, k, v, bias)
    spec, q_, k_, inputs = specs[0]
    assert not fallbacks and spec.mask_semantics == "safe" and spec.score_mod is not None
    assert_same_logits(spec_logits(spec, q_, k_, inputs), q @ k.transpose(-2, -1) / math.sqrt(D)
                       + bias)


# --- score modifications ----------------------------------------------------------------


@pytest.mark.parametrize("mod", ["bias_hqk", "bias_bk", "bias_hk", "alibi", "relative",
                                 "softcap"])
def test_score_mods_give_eager_logits(mod):
    q, k, v = qk(nq=NK)
    ex = mask_extras(B, H, NK, NK, torch.Generator().manual_seed(3))
    fn = make_modded(None, "masked_fill", mod, 0.3)
    rewrites, fallbacks, specs = rewrite(fn, q, k, v, ex)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    want = score_bias(mod, q @ k.transpose(-2, -1) * 0.3, ex)
    assert_same_logits(spec_logits(spec, q_, k_, inputs), want.detach())
    names = {"bias_hqk": "bias", "bias_bk": "bias", "bias_hk": "bias", "alibi": "alibi",
             "relative": "relative_bias", "softcap": "softcap"}
    assert names[mod] in rewrites[0].detail["score_mod"]
    learned = {"bias_hqk", "bias_hk", "relative"}
    assert any(t.requires_grad for t in spec.inputs) == (mod in learned)


def test_bias_added_before_the_scale_is_scaled():
    q, k, v = qk(nq=NK)
    bias = torch.randn(H, NK, NK)

    def fn(q, k, v, bias):
        return (((q @ k.transpose(-2, -1)) + bias) / 4.0).softmax(-1) @ v

    _, _, specs = rewrite(fn, q, k, v, bias)
    spec, q_, k_, inputs = specs[0]
    assert spec.scale == 0.25
    assert_same_logits(spec_logits(spec, q_, k_, inputs), ((q @ k.transpose(-2, -1)) + bias) / 4)


def test_baddbmm_fuses_bias_and_scale():
    q, k, v = (t.reshape(B * H, -1, D) for t in qk(nq=NK))
    bias = torch.randn(B * H, NK, NK)

    def fn(q, k, v, bias):
        return torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.5, alpha=0.125).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v, bias)
    assert rewrites and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    assert spec.scale == 0.125
    want = torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.5, alpha=0.125)
    assert_same_logits(spec_logits(spec, q_, k_, inputs)[0], want)


# --- GQA: the kernel reads K/V with their own heads ---------------------------------------


@pytest.mark.parametrize("how", ["expand_reshape", "repeat_interleave", "sdpa_repeat"])
def test_gqa_reads_the_original_kv(how):
    q, _, _ = qk(h=4)
    _, k, v = qk(h=2)

    def repeat(x):
        if how == "repeat_interleave":
            return torch.repeat_interleave(x, 2, dim=1)
        b, hkv, n, d = x.shape
        return x[:, :, None].expand(b, hkv, 2, n, d).reshape(b, hkv * 2, n, d)

    def fn(q, k, v):
        k, v = repeat(k), repeat(v)
        if how == "sdpa_repeat":
            return F.scaled_dot_product_attention(q, k, v)
        return (q @ k.transpose(-2, -1) * 0.3).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v)
    assert rewrites[0].detail["gqa_groups"] == 2 and not fallbacks
    k_ = specs[0][2]
    assert k_.shape[1] == 2 and torch.equal(k_, k)


# --- what stays eager, with the node named ----------------------------------------------


def _mixed_fills(q, k, v, pad):
    s = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(NQ, NK, dtype=torch.bool).tril(),
                                              float("-inf"))
    return (s + torch.where(pad[:, None, None, :] > 0, 0.0, -1e4)).softmax(-1) @ v


def _bias_after_finite_fill(q, k, v, pad):
    s = (q @ k.transpose(-2, -1)).masked_fill(pad[:, None, None, :] == 0, -1e4)
    return (s + pad[:, None, None, :].float()).softmax(-1) @ v


def _tanh_of_masked(q, k, v, pad):
    s = (q @ k.transpose(-2, -1)).masked_fill(pad[:, None, None, :] == 0, float("-inf"))
    return torch.tanh(s).softmax(-1) @ v


def _two_additive_masks(q, k, v, pad):
    m = torch.where(pad[:, None, None, :] > 0, 0.0, -1e4)
    return ((q @ k.transpose(-2, -1)) + m + m.transpose(-1, -2)[..., :NK]).softmax(-1) @ v


FALLBACKS = {
    _mixed_fills: ("add", "mix kinds"),
    _bias_after_finite_fill: ("add", "bias added after a masked_fill"),
    _tanh_of_masked: ("tanh", "tanh of masked scores"),
}


@pytest.mark.parametrize("fn", list(FALLBACKS), ids=lambda f: f.__name__.strip("_"))
def test_inexpressible_stays_eager_naming_the_node(fn):
    q, k, v = qk()
    pad = torch.ones(B, NK, dtype=torch.long)
    gm = canonical(fn, q, k, v, pad)
    before = [n.target for n in gm.graph.nodes]
    rewrites, fallbacks = run_attention(gm)
    node, why = FALLBACKS[fn]
    assert not rewrites and len(fallbacks) == 1
    assert why in fallbacks[0].reason and node in fallbacks[0].reason, fallbacks
    assert [n.target for n in gm.graph.nodes] == before


def test_mask_offset_by_a_runtime_size_reads_the_sizes():
    # With dynamic shapes, bottom-right causal is kv_idx <= q_idx + (Nk - Nq) with Nk, Nq
    # symbols: the Spec reads them from a `sizes` vector the rewritten graph builds.
    def fn(q, k, v):
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(
            k.shape[-2] - q.shape[-2])
        return (q @ k.transpose(-2, -1)).masked_fill(~keep, float("-inf")).softmax(-1) @ v

    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        box["inputs"] = [hint(x) if isinstance(x, torch.SymInt) else x for x in example_inputs]
        return gm.forward

    torch.compile(fn, backend=backend, dynamic=True)(*qk())
    gm = box["gm"]
    rewrites, fallbacks = run_attention(gm, cost.size_hints(gm))
    assert rewrites and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == "index(runtime sizes)"
    runner = _Calls(gm)
    runner.run(*box["inputs"])
    spec = AttentionSpec.from_json(runner.calls[0][1][4])
    sizes = runner.calls[0][1][3][-1]
    assert spec.inputs[-1].name == "sizes" and sorted(sizes.tolist()) == sorted([NQ, NK])
    q, k, _ = qk()
    want = (q @ k.transpose(-2, -1)).masked_fill(
        ~torch.ones(NQ, NK, dtype=torch.bool).tril(NK - NQ), float("-inf"))
    assert_same_logits(spec_logits(spec, q, k, [sizes]), want)


# --- the masks module on its own ---------------------------------------------------------


def test_describe_and_block_density():
    window = sympy.And(sympy.Gt(KV_IDX, Q_IDX - 128), sympy.Le(KV_IDX, Q_IDX))
    assert masks.describe(window) == "causal & sliding_window(128)"
    # 1024² at 128×64 blocks: rows [128r, 128r + 127] see keys [128r - 127, 128r + 127],
    # which touch key blocks 2r - 2 .. 2r + 1: 4 of the 16 (2 for r = 0, clipped at 0).
    d = masks.block_density(window, False, 1024, 1024, 128, 64)
    assert d == (2 + 7 * 4) / (8 * 16)
    pad = sympy.Ne(sympy.IndexedBase("in0")[B_IDX, KV_IDX], 0)
    assert masks.describe(pad, causal=True) == "causal & padding"
    assert masks.block_density(pad, True, 64, 64, 16, 16) is None  # data: at runtime
    assert masks.block_density(None, True, 64, 64, 16, 16) == 1.0
    ids, m = sympy.IndexedBase("in1"), sympy.IndexedBase("in2")
    assert masks.describe(sympy.Eq(ids[B_IDX, Q_IDX], ids[B_IDX, KV_IDX])) == "document"
    assert masks.describe(sympy.Eq(ids[B_IDX, KV_IDX] - ids[B_IDX, Q_IDX], 0)) == "document"
    # DeBERTa: mask[b, q]·mask[b, kv] != 0 is padding at both ends, not a document id
    both = sympy.Ne(m[B_IDX, Q_IDX] * m[B_IDX, KV_IDX], 0)
    assert masks.describe(both) == "query_key_padding"


def test_block_sparse_masks_cost_less():
    # 512 queries and keys at the model's 128 × 64 tiles: causal visits key blocks
    # 0 .. 2r+1 of row block r (2 + 4 + 6 + 8 = 20); a 64-wide window only 2r-1 .. 2r+1
    # (2 + 3 + 3 + 3 = 11). Modelled FLOPs scale by 11/20, bytes drop too.
    def attend(window):
        def fn(q, k, v):
            i = torch.arange(q.shape[-2])
            keep = i[None, :] <= i[:, None]
            if window:
                keep = keep & (i[None, :] > i[:, None] - window)
            return (q @ k.transpose(-2, -1)).masked_fill(~keep, float("-inf")).softmax(-1) @ v
        return fn

    q, k, v = (torch.randn(1, 1, 512, 16) for _ in range(3))
    runs = {}
    for window in (64, None):
        gm = canonical(attend(window), q, k, v)
        runs[window] = run_attention(gm)[0][0]
    sparse, causal = runs[64], runs[None]
    assert causal.detail["mask"] == "causal" and "block_density" not in causal.detail
    density = sparse.detail["block_density"]
    assert density == 11 / 20
    assert sparse.flops == pytest.approx(causal.flops * density)
    assert sparse.hbm_bytes_after < causal.hbm_bytes_after


@pytest.mark.parametrize("form", ["bias_plus_mask", "where_bias_or_min"])
def test_bias_and_mask_in_one_additive_term_split(form):
    # T5 adds position_bias + where(pad, 0, finfo.min) as one tensor: the mask is split
    # off (kernel can skip padded blocks) and the bias kept; bias + min rounds to min.
    q, k, v = qk(nq=NK)
    ex = mask_extras(B, H, NK, NK, torch.Generator().manual_seed(4))
    pad, table = ex["pad"], ex["table"].detach()
    pad[:, 0] = 1

    def term(pad, table):
        rel = (torch.arange(NK)[None, :] - torch.arange(NK)[:, None]).clamp(-4, 4) + 4
        bias = table[rel].permute(2, 0, 1)[None]
        keep = pad[:, None, None, :] > 0
        if form == "bias_plus_mask":
            return bias + torch.where(keep, 0.0, torch.finfo(torch.float32).min)
        return torch.where(keep, bias, torch.finfo(torch.float32).min)

    def fn(q, k, v, pad, table):
        return ((q @ k.transpose(-2, -1)) * 0.25 + term(pad, table)).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v, pad, table)
    assert rewrites and not fallbacks, fallbacks
    assert rewrites[0].detail["mask"] == "padding"
    assert rewrites[0].detail["score_mod"] == ["relative_bias"]
    spec, q_, k_, inputs = specs[0]
    assert spec.mask_semantics == "add"
    assert_same_logits(spec_logits(spec, q_, k_, inputs),
                       (q @ k.transpose(-2, -1)) * 0.25 + term(pad, table))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.none(), mask_trees()), st.sampled_from(MASK_SPELLINGS),
       st.sampled_from(SCORE_MODS), st.integers(0, 2**31 - 1))
def test_random_trees_and_mods_infer_eager_logits(tree, spelling, mod, seed):
    # Every mask tree of the grammar, in every spelling, with every score modification:
    # the Spec's logits (or, for SDPA, its allowed keys) are eager's. Rows may be fully
    # masked here: logits say what they become, whatever the fill.
    if spelling.startswith("sdpa") and mod == "softcap":
        return  # not expressible through SDPA
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, NK, D, generator=gen) for _ in range(3))
    ex = mask_extras(B, H, NK, NK, gen)
    fn = make_modded(tree, spelling, mod, 0.25)
    rewrites, fallbacks, specs = rewrite(fn, q, k, v, ex)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    got = spec_logits(spec, q_, k_, inputs)
    keep = None if tree is None else allowed(tree, NK, NK, ex["pad"], ex["doc"])
    if spelling.startswith("sdpa") or spelling == "baddbmm":
        want = score_bias(mod, q @ k.transpose(-2, -1) * 0.25, ex).detach()
        if keep is not None:  # what is masked is -inf or finfo.min-like: not kept
            assert torch.equal(got > -1e30, keep.expand_as(got))
            got, want = got.masked_fill(~keep, 0.0), want.masked_fill(~keep, 0.0)
        torch.testing.assert_close(got, want.expand_as(got), rtol=1e-5, atol=1e-5)
        return
    s = score_bias(mod, q @ k.transpose(-2, -1) * 0.25, ex).detach()
    want = s if keep is None else masked_scores(s, keep, spelling)
    assert_same_logits(got, want, causal_only=spec.mask is None)


def test_negative_gather_indices_wrap_as_in_python():
    # table[kv_idx - q_idx] reads from the end of the table below the diagonal.
    q, k, v = qk(nq=NK)
    table = torch.randn(NK)

    def fn(q, k, v, table):
        i = torch.arange(NK)
        return ((q @ k.transpose(-2, -1)) + table[i[None, :] - i[:, None]]).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v, table)
    assert rewrites and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    i = torch.arange(NK)
    assert_same_logits(spec_logits(spec, q_, k_, inputs),
                       q @ k.transpose(-2, -1) + table[i[None, :] - i[:, None]])


def test_shifted_relative_positions_need_no_wrap():
    # table[kv_idx - q_idx + N - 1] is never negative (least at q = N - 1, kv = 0): the
    # Spec reads the table directly, without a wrap-around select on every score.
    q, k, v = qk(nq=NK)
    table = torch.randn(2 * NK - 1, H)

    def fn(q, k, v, table):
        i = torch.arange(NK)
        bias = table[i[None, :] - i[:, None] + (NK - 1)].permute(2, 0, 1)
        return ((q @ k.transpose(-2, -1)) + bias).softmax(-1) @ v

    rewrites, fallbacks, specs = rewrite(fn, q, k, v, table)
    assert rewrites and not fallbacks, fallbacks
    spec, q_, k_, inputs = specs[0]
    assert not spec.score_mod_expr().atoms(sympy.Piecewise), spec.score_mod
    i = torch.arange(NK)
    want = q @ k.transpose(-2, -1) + table[i[None, :] - i[:, None] + NK - 1].permute(2, 0, 1)
    assert_same_logits(spec_logits(spec, q_, k_, inputs), want)


@pytest.mark.parametrize("kind", ["sliding_window", "alibi", "document", "padding", "bias"])
def test_the_bench_kernel_row_calls_the_spec_the_pass_builds(kind, monkeypatch):
    # `ioaware bench attention --mask` times the kernel with a written-out Spec beside
    # ioaware.compile of the plain spelling: the same Spec, so one module, tuned once.
    from ioaware.bench import masks as bench

    monkeypatch.setattr(bench, "WINDOW", 4)
    q, k, v = (x.to(torch.bfloat16) for x in qk(nq=NK))
    extra = bench.mask_extra(kind, B, H, NK, "cpu")
    rewrites, fallbacks, specs = rewrite(bench.SPELLINGS[kind], q, k, v, extra)
    assert rewrites and not fallbacks, fallbacks
    assert specs[0][0] == bench._spec(kind, bench.masked_problem(kind, B, H, NK, D, "bf16"))
