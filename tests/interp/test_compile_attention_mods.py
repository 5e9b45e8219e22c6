"""ioaware.compile on masked and modified attention, drawn from the grammar: vs eager.

Random mask trees (causal, sliding window, key prefix, padding, document ids; &, |, ~)
in every spelling (masked_fill, where, additive finfo.min / -inf, SDPA bool / additive
attn_mask) and random score modifications (bias tensors of several shapes, learned or
not; ALiBi; a bucketed relative-position table; soft-capping). The kernels run under
Triton's interpreter; outputs and the gradients of q, k, v and every learned tensor are
compared with eager at the dtype's tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spellings import MASK_SPELLINGS, SCORE_MODS, make_modded, mask_extras, mask_trees

import ioaware
from ioaware.verify import TOLERANCE, relative_error

# SDPA takes an additive mask, so a soft-cap (a function of the score) cannot be spelled.
SDPA_MODS = [m for m in SCORE_MODS if m != "softcap"]


@st.composite
def cases(draw):
    spelling = draw(st.sampled_from(MASK_SPELLINGS))
    mod = draw(st.sampled_from(SDPA_MODS if spelling.startswith("sdpa") else SCORE_MODS))
    tree = draw(st.one_of(st.none(), mask_trees()))
    if tree is not None:
        # key 0 stays visible (a BOS token), so no row is fully masked here: what such
        # rows give is tested on its own below, where eager's NaNs are expected.
        tree = ("or", tree, ("atom", "prefix", 1))
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n = draw(st.integers(3, 40))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return spelling, mod, tree, b, h, n, dtype


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases(), st.integers(0, 2**31 - 1))
def test_masks_and_score_mods_match_eager(interpret, case, seed):
    spelling, mod, tree, b, h, n, dtype = case
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, 16, generator=gen).to(dtype).requires_grad_()
               for _ in range(3))
    extra = mask_extras(b, h, n, n, gen, dtype)
    fn = make_modded(tree, spelling, mod, 0.25)
    fast = ioaware.compile(fn)

    out = fast(q, k, v, extra)
    ref = fn(q, k, v, extra)
    expl = fast._ioaware_backend.explanation
    assert len(expl.rewrites) == 1 and not expl.fallbacks, expl
    tol = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tol

    names = [n for n, t in extra.items() if t.requires_grad]
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(out, (q, k, v, *(extra[n] for n in names)), grad,
                              allow_unused=True)
    want = list(torch.autograd.grad(ref, (q, k, v), grad))
    # A learned bias or table gathers its gradient over many score elements; eager sums
    # them in the input dtype (in fp16 about 5e-3 off the exact sum), the kernel in fp32.
    # So those are checked against the same eager code run in fp32 on the same values.
    up = {n: t.detach().float().requires_grad_(t.requires_grad) if t.is_floating_point()
          else t for n, t in extra.items()}
    ref32 = fn(*(t.detach().float() for t in (q, k, v)), up)
    if ref32.requires_grad:  # some learned tensor is read
        want += torch.autograd.grad(ref32, [up[n] for n in names], grad.float(),
                                    allow_unused=True)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:  # this spelling does not read that tensor
            continue
        err = relative_error(g, w, floor=0.1)
        assert err <= tol, f"gradient {i}: relative error {err:.3g}"


# --- rows with no visible key: each spelling gives what eager gives ---------------------


@pytest.mark.parametrize("spelling", ["masked_fill", "additive_min", "sdpa_bool"])
def test_fully_masked_rows_behave_as_eager(interpret, spelling):
    # Left padding with a causal mask: the first queries of batch 0 see no key at all.
    # masked_fill(-inf) gives NaN rows; finfo.min gives a uniform average; SDPA gives 0.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 10, 16, generator=gen).requires_grad_() for _ in range(3))
    extra = mask_extras(2, 2, 10, 10, gen)
    extra["pad"] = torch.ones(2, 10, dtype=torch.long)
    extra["pad"][0, :4] = 0
    tree = ("and", ("atom", "causal", 0), ("atom", "padding", 0))
    fn = make_modded(tree, spelling, "none", 0.25)
    fast = ioaware.compile(fn)
    out, ref = fast(q, k, v, extra), fn(q, k, v, extra)
    assert fast._ioaware_backend.explanation.rewrites
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]  # NaNs at the same places
    if spelling != "masked_fill":  # NaN rows have NaN gradients: nothing to compare
        for g, w in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                        torch.autograd.grad(ref.sum(), (q, k, v))):
            assert relative_error(g, w, floor=0.1) <= TOLERANCE[torch.float32]


# --- GQA and dropout --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["expand_reshape", "repeat_interleave", "enable_gqa"])
def test_gqa_matches_eager(interpret, how):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 12, 16, generator=gen).requires_grad_()
    k, v = (torch.randn(2, 2, 12, 16, generator=gen).requires_grad_() for _ in range(2))

    def fn(q, k, v):
        if how == "enable_gqa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if how == "repeat_interleave":
            k, v = (torch.repeat_interleave(t, 2, dim=1) for t in (k, v))
        else:
            k, v = (t[:, :, None].expand(2, 2, 2, 12, 16).reshape(2, 4, 12, 16) for t in (k, v))
        return (q @ k.transpose(-2, -1) * 0.25).softmax(-1) @ v

    fast = ioaware.compile(fn)
    out, ref = fast(q, k, v), fn(q, k, v)
    assert fast._ioaware_backend.explanation.rewrites[0].detail["gqa_groups"] == 2
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]
    for g, w in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                    torch.autograd.grad(ref.sum(), (q, k, v))):
        assert relative_error(g, w, floor=0.1) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("spelling", ["F.dropout", "sdpa"])
def test_dropout_keeps_one_minus_p_and_rescales(interpret, spelling):
    # With V = 1 every output element is sum_j P_j·keep_j/(1-p): 1 on average. Kept
    # fraction and mean are checked over 4·64·64 probabilities; p = 0 / eval is exact.
    p = 0.3
    q, k = torch.zeros(4, 1, 64, 16), torch.zeros(4, 1, 64, 16)  # uniform P = 1/64
    v = torch.eye(64).expand(4, 1, 64, 64)  # out[..., j] = P_j·keep_j/(1-p)

    def fn(q, k, v):
        if spelling == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return F.dropout((q @ k.transpose(-2, -1)).softmax(-1), p=p, training=True) @ v

    fast = ioaware.compile(fn)
    torch.manual_seed(0)
    a = fast(q, k, v)
    assert fast._ioaware_backend.explanation.rewrites[0].detail["dropout_p"] == p
    kept = (a > 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.02
    assert torch.allclose(a[a > 0], torch.full_like(a[a > 0], 1 / 64 / (1 - p)))
    torch.manual_seed(0)
    assert torch.equal(fast(q, k, v), a)  # same generator state, same keep mask
    assert not torch.equal(fast(q, k, v), a)  # the next call draws a new one
