"""ioaware::attention with masks, score mods, extra inputs and dropout, under the interpreter.

Each example draws a Spec from the grammar the passes emit (mask atoms: causal,
sliding window, prefix, padding vector, document ids, combined with &, |, ~; score
mods: a bias of a random broadcast shape, ALiBi with a slopes input, a clipped
relative-position table, soft-capping; all four mask semantics), runs the generated
kernels, and compares out and the gradients of q, k, v and every learned input with
attention written directly in torch (float64, on the same rounded inputs).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm90 import compile_sm90, has_ptx_backend, import_compiled

from ioaware.codegen.attention import op as ops
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.config import config
from ioaware.spec import TensorInput
from ioaware.verify import relative_error

# ‖a − b‖ / ‖b‖ per dtype: a few units of rounding (the kernels accumulate in fp32).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


# Every test here runs the kernels under the interpreter (tests/interp/conftest.py).
pytestmark = pytest.mark.usefixtures("interpreted_kernels")


# ---- the grammar: each atom is (sympy text, torch predicate over index grids, inputs) --

def _grids(batch, heads, n_q, n_k, device="cpu"):
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    i = torch.arange(n_q, device=device).view(1, 1, -1, 1)
    j = torch.arange(n_k, device=device).view(1, 1, 1, -1)
    return b, h, i, j


@st.composite
def mask_atoms(draw, batch, n_q, n_k, gen):
    kind = draw(st.sampled_from(["window", "prefix", "padding", "document", "causal"]))
    if kind == "causal":
        return "kv_idx <= q_idx", lambda b, h, i, j, t: j <= i, {}
    if kind == "window":
        w = draw(st.integers(1, 40))
        return (f"q_idx - kv_idx < {w}", lambda b, h, i, j, t: (i - j) < w, {})
    if kind == "prefix":
        p = draw(st.integers(0, n_k))
        return f"kv_idx < {p}", lambda b, h, i, j, t: j < p, {}
    if kind == "padding":
        lengths = torch.randint(0, n_k + 1, (batch,), generator=gen)
        pad = torch.arange(n_k)[None, :] < lengths[:, None]  # [B, Nk] keep flags
        return "Ne(pad[b, kv_idx], 0)", lambda b, h, i, j, t: t["pad"][b, j], {"pad": pad}
    docs = draw(st.integers(1, 4))
    qdoc = torch.randint(0, docs, (batch, n_q), generator=gen).sort(-1).values
    kvdoc = torch.randint(0, docs, (batch, n_k), generator=gen).sort(-1).values
    return ("Eq(qdoc[b, q_idx], kvdoc[b, kv_idx])",
            lambda b, h, i, j, t: t["qdoc"][b, i] == t["kvdoc"][b, j],
            {"qdoc": qdoc, "kvdoc": kvdoc})


@st.composite
def masks(draw, batch, n_q, n_k, gen):
    """A predicate of one to three atoms under &, | and ~ (or no mask at all)."""
    if draw(st.booleans()):
        return None, None, {}
    text, fn, tensors = draw(mask_atoms(batch, n_q, n_k, gen))
    for _ in range(draw(st.integers(0, 2))):
        t2, f2, x2 = draw(mask_atoms(batch, n_q, n_k, gen))
        if any(name in tensors for name in x2):
            continue
        tensors = {**tensors, **x2}
        op = draw(st.sampled_from(["&", "|", "&~"]))
        text, fn = f"({text}) {op}({t2})", _combine(op, fn, f2)
    return text, fn, tensors


def _combine(op, first, second):
    if op == "&":
        return lambda *g: first(*g) & second(*g)
    if op == "|":
        return lambda *g: first(*g) | second(*g)
    return lambda *g: first(*g) & ~second(*g)


@st.composite
def score_mods(draw, batch, heads, n_q, n_k, gen):
    """(text, torch fn of (score, b, h, i, j, tensors), {name: (tensor, requires_grad,
    shape it is broadcast to (a stride-0 view) or None)})."""
    kind = draw(st.sampled_from(["none", "bias", "bias_view", "alibi", "table", "softcap",
                                 "softcap_bias"]))
    if kind == "none":
        return None, None, {}
    if kind in ("bias", "softcap_bias"):
        full = (batch, heads, n_q, n_k)
        keep = draw(st.lists(st.booleans(), min_size=4, max_size=4))
        shape = tuple(n if k else 1 for n, k in zip(full, keep))
        bias = torch.randn(shape, generator=gen)
        idx = ", ".join(s if k else "0" for s, k in zip(("b", "h", "q_idx", "kv_idx"), keep))

        def add_bias(s, b, h, i, j, t):
            return s + t["bias"][tuple(x if k else 0 for x, k in zip((b, h, i, j), keep))]

        if kind == "bias":
            return f"score + bias[{idx}]", add_bias, {"bias": (bias, True, None)}
        cap = draw(st.floats(2.0, 30.0))
        return (f"{cap!r}*tanh((score + bias[{idx}])/{cap!r})",
                lambda s, *g: cap * torch.tanh(add_bias(s, *g) / cap),
                {"bias": (bias, True, None)})
    if kind == "bias_view":  # a stride-0 broadcast view, indexed at every position
        bias = torch.randn(1, heads, 1, n_k, generator=gen)
        return ("score + bias[b, h, q_idx, kv_idx]",
                lambda s, b, h, i, j, t: s + t["bias"][b, h, i, j],
                {"bias": (bias, True, (batch, heads, n_q, n_k))})
    if kind == "alibi":
        slopes = torch.rand(heads, generator=gen)
        return ("score + slopes[h]*(kv_idx - q_idx)",
                lambda s, b, h, i, j, t: s + t["slopes"][h] * (j - i),
                {"slopes": (slopes, False, None)})
    if kind == "table":
        r = draw(st.integers(1, 6))
        table = torch.randn(heads, 2 * r + 1, generator=gen)
        return (f"score + table[h, Min(Max(q_idx - kv_idx, -{r}), {r}) + {r}]",
                lambda s, b, h, i, j, t: s + t["table"][h, (i - j).clamp(-r, r) + r],
                {"table": (table, True, None)})
    cap = draw(st.floats(2.0, 30.0))
    return f"{cap!r}*tanh(score/{cap!r})", lambda s, *g: cap * torch.tanh(s / cap), {}


def eager_attention(q, k, v, scale, causal, mask_fn, mod_fn, tensors, semantics, fill,
                    keep=None, dropout_p=0.0):
    """Attention as a user writes it in torch, float64; `tensors` maps input names."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    s = scale * q @ k.transpose(-1, -2)
    g = _grids(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device)
    logit = mod_fn(s, *g, tensors) if mod_fn is not None else s
    visible = torch.ones_like(s, dtype=torch.bool)
    if mask_fn is not None:
        visible = visible & mask_fn(*g, tensors)
    if causal:
        visible = visible & (g[3] <= g[2])
    if semantics in ("neg_inf", "safe"):
        logit = logit.masked_fill(~visible, float("-inf"))
    elif semantics == "fill":
        logit = logit.masked_fill(~visible, fill)
    else:
        logit = logit + torch.where(visible, 0.0, fill)
    if semantics == "safe":  # SDPA's safe softmax: a row with no visible key is 0
        seen = visible.any(-1, keepdim=True)
        p = torch.where(seen, torch.softmax(torch.where(seen, logit, 0.0), dim=-1), 0.0)
    else:
        p = torch.softmax(logit, dim=-1)
    if keep is not None:  # as F.dropout: a multiply (a NaN row stays NaN)
        p = p * keep / (1.0 - dropout_p)
    return p @ v


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    h_kv = draw(st.integers(1, 2))
    heads = h_kv * draw(st.sampled_from([1, 2]))
    batch = draw(st.integers(1, 2))
    n_q, n_k = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    mask_text, mask_fn, mask_tensors = draw(masks(batch, n_q, n_k, gen))
    mod_text, mod_fn, mod_tensors = draw(score_mods(batch, heads, n_q, n_k, gen))
    return {
        "gen": gen, "batch": batch, "heads": heads, "h_kv": h_kv, "n_q": n_q, "n_k": n_k,
        "d": draw(st.sampled_from([16, 32])), "dtype": draw(st.sampled_from(list(TOLERANCE))),
        "causal": draw(st.booleans()),
        "semantics": draw(st.sampled_from(["neg_inf", "safe", "fill", "add"])),
        "mask": (mask_text, mask_fn, mask_tensors), "mod": (mod_text, mod_fn, mod_tensors),
        "dropout_p": draw(st.sampled_from([0.0, 0.0, 0.0, 0.25])),
    }


def _run(p, dropout_p=0.0, seed=None):
    """(kernel results, eager results, spec) for problem p: out and every gradient."""
    gen, dtype = p["gen"], p["dtype"]
    mask_text, mask_fn, mask_tensors = p["mask"]
    mod_text, mod_fn, mod_tensors = p["mod"]
    shapes = ((p["batch"], p["heads"], p["n_q"], p["d"]),
              (p["batch"], p["h_kv"], p["n_k"], p["d"]),
              (p["batch"], p["h_kv"], p["n_k"], p["d"]))
    q, k, v = (torch.randn(s, generator=gen).to(dtype) for s in shapes)
    fill = torch.finfo(dtype).min if p["semantics"] in ("fill", "add") else float("-inf")
    fill = p.get("fill", fill)
    named = {**{n: (t, False, None) for n, t in mask_tensors.items()}, **mod_tensors}
    inputs = tuple(TensorInput(n, t.dim(), str(t.dtype).removeprefix("torch."), rg)
                   for n, (t, rg, _) in named.items())
    spec = AttentionSpec(head_dim=p["d"], head_dim_v=p["d"], dtype=str(dtype)[6:],
                         causal=p["causal"], scale=1 / math.sqrt(p["d"]), mask=mask_text,
                         score_mod=mod_text, inputs=inputs, mask_semantics=p["semantics"],
                         mask_fill=fill, dropout_p=dropout_p)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    bases = {n: t.clone().requires_grad_() if rg else t for n, (t, rg, _) in named.items()}
    # a broadcast input reaches the kernel as a stride-0 view of its base
    tensors = [bases[n] if shape is None else bases[n].expand(shape)
               for n, (_, _, shape) in named.items()]
    out = ops.attention(*leaves, spec, tensors, seed)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = [bases[n] for n, (_, rg, _) in named.items() if rg]
    got = [out, *torch.autograd.grad(out, leaves + grads, dout)]

    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref_bases = {n: (t.double().requires_grad_() if rg else t)
                 for n, (t, rg, _) in named.items()}
    ref_inputs = {n: ref_bases[n] if shape is None else ref_bases[n].expand(shape)
                  for n, (_, _, shape) in named.items()}
    keep = (ops.dropout_keep_mask(spec, seed, (p["batch"], p["heads"], p["n_q"], p["n_k"]),
                                  "cpu") if dropout_p > 0 else None)
    ref_out = eager_attention(*ref_leaves, spec.scale, p["causal"], mask_fn, mod_fn,
                              ref_inputs, p["semantics"], fill, keep, dropout_p)
    ref_grads = [ref_bases[n] for n, (_, rg, _) in named.items() if rg]
    want = [ref_out, *torch.autograd.grad(ref_out, ref_leaves + ref_grads, dout.double())]
    return got, want, spec


# RMS per element below which an expected gradient counts as zero by cancellation (a
# row with one visible key, a bias constant along the keys): there only rounding is
# left, of O in the output dtype (delta = rowsum(dO ∘ O), scaled up by dropout's
# 1/(1-p)) and of the summed terms.
FLOOR = {torch.float32: 1e-2, torch.bfloat16: 1.0}


def _check(got, want, dtype, semantics, n_scores):
    names = ["out", "dq", "dk", "dv"] + [f"d_input{i}" for i in range(len(got) - 4)]
    empty_rows = bool(torch.isnan(want[0]).any())
    dq, dk = want[1], want[2]
    # terms summed into one element: dq over the keys, dk / dv over the query rows that
    # read the kv head, an input over the score elements that load it
    summed = {"out": 1, "dq": dk.shape[2], "dk": dq.shape[1] // dk.shape[1] * dq.shape[2]}
    summed["dv"] = summed["dk"]
    for name, a, e in zip(names, got, want):
        if semantics == "neg_inf" and empty_rows and name != "out":
            continue  # eager's NaN spreads through whole heads; out's NaN rows are checked
        terms = summed.get(name) or max(1, n_scores // max(1, e.numel()))
        # fp32 noise is accumulation, growing like √terms; bf16's is the rounding of O in
        # each row's delta: dq's sum over keys weighs one row's error by P (no growth),
        # dk / dv and an input's sums add the errors of many rows
        if dtype != torch.float32 and name == "dq":
            terms = 1
        err = relative_error(a, e.to(a.dtype), floor=FLOOR[dtype] * terms**0.5)
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g}"


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_masks_and_score_mods_match_eager(p):
    seed = torch.randint(0, 2**31 - 1, (2,), generator=p["gen"])
    got, want, _ = _run(p, p["dropout_p"], seed if p["dropout_p"] > 0 else None)
    n_scores = p["batch"] * p["heads"] * p["n_q"] * p["n_k"]
    _check(got, want, p["dtype"], p["semantics"], n_scores)


# ---- dropout -------------------------------------------------------------------------

def _dropout_problem(causal=False, semantics="neg_inf", n=48):
    return {"gen": torch.Generator().manual_seed(3), "batch": 2, "heads": 2, "h_kv": 1,
            "n_q": n, "n_k": n + 5, "d": 16, "dtype": torch.float32, "causal": causal,
            "semantics": semantics, "mask": (None, None, {}), "mod": (None, None, {})}


def test_dropout_matches_eager_with_the_kernels_keep_mask():
    p = _dropout_problem(causal=True)
    got, want, _ = _run(p, dropout_p=0.3, seed=torch.tensor([1234, 77]))
    _check(got, want, torch.float32, "neg_inf", 0)


def test_dropout_is_deterministic_and_keeps_one_minus_p():
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=False,
                         scale=0.25, dropout_p=0.3)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(3))
    seed = torch.tensor([99, 0])
    a = ops.attention(q, k, v, spec, (), seed)
    b = ops.attention(q, k, v, spec, (), seed)
    c = ops.attention(q, k, v, spec, (), torch.tensor([100, 0]))
    assert torch.equal(a, b)  # the same (seed, offset) draws the same mask
    assert not torch.equal(a, c)
    keep = ops.dropout_keep_mask(spec, seed, (4, 8, 64, 64), "cpu")
    fraction = keep.float().mean().item()
    # 131072 Bernoulli(0.7) draws: standard deviation 0.0013
    assert abs(fraction - 0.7) < 0.007, fraction


@pytest.mark.parametrize("semantics", ["fill", "add"])
def test_a_mild_fill_counts_everywhere(semantics):
    """masked_fill(~m, -1.0): masked logits are not negligible, so no tile is skipped and
    every masked element takes its fill (causal ones included)."""
    p = _dropout_problem(causal=True, semantics=semantics, n=40)
    p["mask"] = ("Ne(pad[b, kv_idx], 0)",
                 lambda b, h, i, j, t: t["pad"][b, j],
                 {"pad": torch.arange(45)[None, :] < torch.tensor([[30], [45]])})
    p["fill"] = -1.0
    got, want, _ = _run(p)
    _check(got, want, torch.float32, semantics, 0)


def test_dropout_needs_a_seed():
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=False,
                         scale=0.25, dropout_p=0.1)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="seed"):
        ops.attention(q, q, q, spec)


# ---- block map: interval reasoning is never wrong -------------------------------------

@pytest.mark.parametrize("mask, causal", [
    ("q_idx - kv_idx < 20", True),
    ("Eq(qdoc[b, q_idx], kvdoc[b, kv_idx])", True),
    ("(kv_idx < 40) | Ne(pad[b, kv_idx], 0)", False),
    ("kv_idx <= q_idx + sizes[0]", False),
    ("~(Eq(qdoc[b, q_idx], kvdoc[b, kv_idx])) & (kv_idx >= 7)", False),
])
def test_block_map_never_skips_a_visible_key(mask, causal):
    """Every tile the map calls empty holds no visible key; every full one only visible
    keys (checked against the mask evaluated densely)."""
    from ioaware.codegen.attention import reference
    from ioaware.codegen.cache import INTERPRET_DEVICE, load_kernel_module

    gen = torch.Generator().manual_seed(1)
    batch, n = 2, 100
    tensors = {"qdoc": torch.randint(0, 4, (batch, n), generator=gen).sort(-1).values,
               "kvdoc": torch.randint(0, 4, (batch, n), generator=gen).sort(-1).values,
               "pad": torch.rand(batch, n, generator=gen) < 0.5,
               "sizes": torch.tensor([-3])}
    names = [name for name in tensors if name in mask]
    inputs = tuple(TensorInput(name, tensors[name].dim(), str(tensors[name].dtype)[6:])
                   for name in names)
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=causal,
                         scale=0.25, mask=mask, inputs=inputs)
    module = load_kernel_module("attention_fwd", spec, INTERPRET_DEVICE)
    q = torch.zeros(batch, 1, n, 16)
    _, visible = reference.spec_logits(spec, q, q, [tensors[name] for name in names])
    for bm, bn, kv_major in ((32, 16, False), (16, 32, True)):
        full_cnt, full_list, part_cnt, part_list, h_map, b_map = module.block_map(
            [tensors[name] for name in names], batch, 1, n, n, bm, bn, kv_major, "cpu")
        assert b_map == (batch if names else 1) and h_map == 1
        n_outer = full_cnt.shape[1]
        for bb in range(batch):
            for o in range(n_outer):
                m = bb % b_map
                full = set(full_list[m, o, :full_cnt[m, o]].tolist())
                part = set(part_list[m, o, :part_cnt[m, o]].tolist())
                for t in range(full_list.shape[2]):
                    qb, kb = (t, o) if kv_major else (o, t)
                    tile = visible[bb % b_map, 0, qb * bm:(qb + 1) * bm, kb * bn:(kb + 1) * bn]
                    if t in full:
                        assert bool(tile.all())
                    elif t not in part:
                        assert not bool(tile.any())


# ---- interface ------------------------------------------------------------------------

def test_inputs_are_checked_by_name():
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=False,
                         scale=0.25, score_mod="score + bias[h]",
                         inputs=(TensorInput("bias", 1, "float32"),))
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="inputs has 0 tensors"):
        ops.attention(q, q, q, spec)
    with pytest.raises(ValueError, match="'bias' must be 1-D"):
        ops.attention(q, q, q, spec, [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="'bias' has dtype"):
        ops.attention(q, q, q, spec, [torch.randn(2).double()])
    with pytest.raises(ValueError, match="spec.dtype"):
        ops.attention(q.half(), q.half(), q.half(), spec, [torch.randn(2)])


def test_reference_path_matches_the_kernels():
    """Without the interpreter, CPU runs codegen/reference.py: same numbers."""
    p = {"gen": torch.Generator().manual_seed(5), "batch": 1, "heads": 2, "h_kv": 1,
         "n_q": 30, "n_k": 37, "d": 16, "dtype": torch.float32, "causal": True,
         "semantics": "add", "mask": (None, None, {}), "mod": (None, None, {})}
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(2, 7, generator=gen)
    p["mod"] = ("score + table[h, Min(Max(q_idx - kv_idx, -3), 3) + 3]",
                lambda s, b, h, i, j, t: s + t["table"][h, (i - j).clamp(-3, 3) + 3],
                {"table": (table, True, None)})
    got, _, _ = _run(p)
    config.interpret = False
    try:
        p["gen"] = torch.Generator().manual_seed(5)
        ref_got, _, _ = _run(p)
    finally:
        config.interpret = True
    for a, b in zip(got, ref_got):
        assert relative_error(a, b) <= 1e-5


# ---- compiled Triton, without a GPU ---------------------------------------------------

@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
def test_general_kernels_compile_for_hopper(tmp_path):
    """The interpreter forgives what compiled Triton rejects (loop-carried shapes, block
    conditions): compile every general kernel for sm_90 here, no GPU needed."""
    from ioaware.codegen.attention import backward as attention_bwd
    from ioaware.codegen.attention import forward as attention_fwd

    spec = AttentionSpec(
        head_dim=80, head_dim_v=64, dtype="bfloat16", causal=True, scale=0.1,
        mask="Eq(doc[b, q_idx], doc[b, kv_idx]) & Ne(pad[b, kv_idx], 0)",
        score_mod="30.0*tanh((score + table[h, Min(Max(q_idx - kv_idx, -8), 8) + 8])/30.0)",
        inputs=(TensorInput("doc", 2, "int64"), TensorInput("pad", 2, "bool"),
                TensorInput("table", 2, "float32", True)),
        mask_semantics="add", mask_fill=torch.finfo(torch.bfloat16).min, dropout_p=0.1)
    pointers = {"In0": "*i64", "In1": "*i1", "In2": "*fp32", "DIn2": "*fp32",
                "Lse": "*fp32", "Delta": "*fp32", "dLse": "*fp32", "Seed": "*i64",
                "FullCnt": "*i32", "FullList": "*i32", "PartCnt": "*i32", "PartList": "*i32",
                "EmptyHeads": "*i32"}

    def compile_kernel(fn, constexprs):
        compile_sm90(fn, constexprs, lambda a: pointers.get(
            a, "*bf16" if a in ("Q", "K", "V", "Out", "O", "dO", "dQ", "dK", "dV") else "i32"),
            num_warps=8)

    # "add" fills empty rows; "neg_inf" spreads their NaN through the backward
    variants = [(kind, render, s)
                for s in (spec, dataclasses.replace(spec, mask_semantics="neg_inf",
                                                    mask_fill=float("-inf")))
                for kind, render in (("fwd", attention_fwd.render_forward),
                                     ("bwd", attention_bwd.render_backward))]
    for i, (kind, render, s) in enumerate(variants):
        module = import_compiled(render(s, interpret=False), tmp_path / f"compile_{kind}_{i}.py")
        if kind == "fwd":
            bm, bn, _, _ = module.DEFAULT_CONFIG
            compile_kernel(module._attn_fwd, {"BLOCK_M": bm, "BLOCK_N": bn})
            for kv_major in (False, True):
                compile_kernel(module._block_map,
                               {"BLOCK_M": bm, "BLOCK_N": bn, "KV_MAJOR": kv_major})
        else:
            compile_kernel(module._bwd_preprocess, {"HAS_DLSE": True, "BLOCK_M": 64})
            bm, bn, _, _ = module.DEFAULT_DKDV
            compile_kernel(module._bwd_dkdv, {"BLOCK_M": bm, "BLOCK_N": bn})
            bm, bn, _, _ = module.DEFAULT_DQ
            compile_kernel(module._bwd_dq, {"BLOCK_M": bm, "BLOCK_N": bn})


@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
@pytest.mark.parametrize("causal", [False, True])
def test_plain_kernels_compile_for_hopper(tmp_path, causal):
    """The FlashAttention (plain Spec) kernels of both directions build for sm_90 at the
    configs they launch with, as the general ones do above (docs/kernels.md, "One
    template per direction?", compares the two on these builds)."""
    from ioaware.codegen.attention import backward as attention_bwd
    from ioaware.codegen.attention import forward as attention_fwd

    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=causal,
                         scale=0.125)
    pointers = {"Lse": "*fp32", "Delta": "*fp32", "dLse": "*fp32"}

    def compile_kernel(fn, config):
        bm, bn, warps, _ = config
        return compile_sm90(fn, {"BLOCK_M": bm, "BLOCK_N": bn}, lambda a: pointers.get(
            a, "*bf16" if a in ("Q", "K", "V", "Out", "O", "dO", "dQ", "dK", "dV") else "i32"),
            num_warps=warps)

    fwd = import_compiled(attention_fwd.render_forward(spec), tmp_path / "plain_fwd.py")
    bwd = import_compiled(attention_bwd.render_backward(spec), tmp_path / "plain_bwd.py")
    assert fwd.TUNE_CONFIGS and bwd.TUNE_DKDV and bwd.TUNE_DQ  # the plain (autotuned) modules
    compile_kernel(fwd._attn_fwd, fwd.DEFAULT_CONFIG)
    compile_sm90(bwd._bwd_preprocess, {"HAS_DLSE": True, "BLOCK_M": bwd.PRE_BLOCK_M},
                 lambda a: pointers.get(a, "*bf16" if a in ("O", "dO") else "i32"), num_warps=4)
    compile_kernel(bwd._bwd_dkdv, bwd.DEFAULT_DKDV)
    compile_kernel(bwd._bwd_dq, bwd.DEFAULT_DQ)


def test_opcheck_schema_fake_and_autograd():
    """torch.library.opcheck on ioaware::attention and its backward: schema, fake
    tensors, autograd registration (a learned bias, dropout's seed), aot_dispatch."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 20, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 1, 24, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 1, 24, 16, generator=gen, requires_grad=True)
    bias = torch.randn(2, 24, generator=gen, requires_grad=True)
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True,
                         scale=0.25, mask="q_idx - kv_idx < 9", score_mod="score + bias[h, kv_idx]",
                         inputs=(TensorInput("bias", 2, "float32", True),), dropout_p=0.2)
    seed = torch.tensor([5, 6])
    args = (q, k, v, [bias], spec.to_json(), seed)
    torch.library.opcheck(torch.ops.ioaware.attention.default, args)
    out, lse = torch.ops.ioaware.attention(*args)
    torch.library.opcheck(
        torch.ops.ioaware.attention_backward.default,
        (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
         [bias.detach()], spec.to_json(), seed, None))


def test_inside_a_compiled_graph():
    """The op stays opaque under torch.compile (aot_eager), gradients included."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=gen, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 5, generator=gen, requires_grad=True)
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=True, scale=0.25,
                         score_mod="score + table[h, Min(q_idx - kv_idx, 4)]",
                         inputs=(TensorInput("table", 2, "float32", True),))

    def block(q, k, v, table):
        return (ops.attention(q, k, v, spec, [table]) * 2).sum()

    eager = block(q, k, v, table)
    eager_grads = torch.autograd.grad(eager, (q, k, v, table))
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(q, k, v, table)
    compiled_grads = torch.autograd.grad(compiled, (q, k, v, table))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


# ---- tiles: any config runs, maps follow the tile, the tuner -------------------------

def test_forced_tiles_match_the_reference_with_their_own_block_maps():
    """Launched under tiles other than the interpreter's defaults (each kernel's block
    map built for its own tile, ragged edges on both axes), out and every gradient,
    the atomically added learned bias included, match the torch reference path."""
    from ioaware.codegen.attention import reference
    from ioaware.codegen.cache import INTERPRET_DEVICE, load_kernel_module

    gen = torch.Generator().manual_seed(7)
    batch, heads, n_q, n_k, d = 2, 2, 45, 50, 16
    doc = torch.randint(0, 3, (batch, n_k), generator=gen).sort(-1).values
    bias = torch.randn(heads, n_k, generator=gen)
    spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype="float32", causal=False,
                         scale=0.25, mask="(q_idx - kv_idx < 30) & Eq(doc[b, q_idx], "
                         "doc[b, kv_idx])", score_mod="score + bias[h, kv_idx]",
                         inputs=(TensorInput("doc", 2, "int64"),
                                 TensorInput("bias", 2, "float32", True)),
                         mask_semantics="safe")
    q = torch.randn(batch, heads, n_q, d, generator=gen)
    k, v = (torch.randn(batch, heads, n_k, d, generator=gen) for _ in range(2))
    dout = torch.randn(batch, heads, n_q, d, generator=gen)
    inputs = [doc, bias]
    want = (*reference.spec_forward(spec, q, k, v, inputs, None)[:1],
            *reference.spec_backward(spec, dout, q, k, v, inputs, None, None))
    fwd = load_kernel_module("attention_fwd", spec, INTERPRET_DEVICE)
    bwd = load_kernel_module("attention_bwd", spec, INTERPRET_DEVICE)
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, n_q)
    fwd.forward(q, k, v, out, lse, inputs, None, config=(16, 32, 4, 1))
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))  # written whole
    dbias = torch.zeros_like(bias)
    bwd.backward(dout, q, k, v, out, lse, None, dq, dk, dv, inputs, [dbias], None,
                 dkdv_config=(32, 16, 4, 1), dq_config=(16, 32, 4, 1))
    for name, got, exp in zip(("out", "dq", "dk", "dv", "dbias"),
                              (out, dq, dk, dv, dbias), want):
        assert relative_error(got, exp) <= 1e-4, name


def test_a_static_block_map_is_built_once_per_tile():
    """A mask of indices alone keeps its map (no launch per call), one per tile shape;
    a mask that reads a tensor builds it every call (its contents may change)."""
    from ioaware.codegen.cache import INTERPRET_DEVICE, load_kernel_module

    common = {"head_dim": 16, "head_dim_v": 16, "dtype": "float32", "causal": True,
              "scale": 0.25}
    window = load_kernel_module("attention_fwd", AttentionSpec(
        **common, mask="q_idx - kv_idx < 20"), INTERPRET_DEVICE)
    first = window.block_map([], 2, 3, 70, 70, 32, 16, False, "cpu")
    assert window.block_map([], 2, 3, 70, 70, 32, 16, False, "cpu")[0] is first[0]
    assert window.block_map([], 2, 3, 70, 70, 16, 32, False, "cpu")[0] is not first[0]
    docs = load_kernel_module("attention_fwd", AttentionSpec(
        **common, mask="Eq(doc[b, q_idx], doc[b, kv_idx])",
        inputs=(TensorInput("doc", 2, "int64"),)), INTERPRET_DEVICE)
    doc = torch.zeros(2, 70, dtype=torch.int64)
    first = docs.block_map([doc], 2, 3, 70, 70, 32, 16, False, "cpu")
    assert docs.block_map([doc], 2, 3, 70, 70, 32, 16, False, "cpu")[0] is not first[0]


def test_tuner_takes_the_fastest_config_once_per_size_class(monkeypatch):
    """The launchers' tuner: the fastest config that runs (one that cannot run is
    passed over), chosen once per power-of-two size class; what the trials added
    atomically is reset after them, and the block maps only losing trials built go."""
    import triton.testing

    from ioaware.codegen.render import TUNER

    times = {(64, 64, 4, 2): 3.0, (128, 64, 8, 2): 1.0, (128, 128, 8, 3): 2.0}
    trials, resets = [], []

    def fake_bench(fn, **kwargs):
        fn()
        return times[trials[-1]]

    # static block maps keyed (b, h, Nq, Nk, BLOCK_M, BLOCK_N, kv_major, device)
    maps = {(1, 1, 100, 100, 32, 32, False, "cuda:0"): "built before"}

    def trial(config):
        trials.append(config)
        maps[(1, 1, 100, 100, *config[:2], False, "cuda:0")] = "built by a trial"
        if config == (128, 128, 8, 3):
            raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    module: dict = {"INTERPRET": False, "TUNE_MIN_SCORES": 1024, "_STATIC_MAPS": maps}
    exec(TUNER, module)  # noqa: S102 - the tuner is module text, run as the modules run it
    choose = module["choose_config"]
    configs = [(64, 64, 4, 2), (128, 128, 8, 3), (128, 64, 8, 2)]
    default = configs[0]
    assert choose("dq", configs, default, "cuda:0", 100, 100, trial,
                  lambda: resets.append(1)) == (128, 64, 8, 2)
    assert len(trials) == 3 and resets == [1]
    # the losers' maps are dropped, the winner's and older ones kept
    assert {k[4:6] for k in maps} == {(32, 32), (128, 64)}
    # the same size class: a lookup, no trials
    assert choose("dq", configs, default, "cuda:0", 120, 90, trial) == (128, 64, 8, 2)
    assert len(trials) == 3
    # below TUNE_MIN_SCORES, or no candidates: the default, untimed
    assert choose("dq", configs, default, "cuda:0", 16, 16, trial) == default
    assert choose("fwd", [], default, "cuda:0", 100, 100, trial) == default
    assert len(trials) == 3


def test_rows_with_no_visible_key_spread_nan_like_eager():
    """neg_inf_add semantics: a row that sees no key is NaN, and so is its dQ row and the
    whole dK, dV of the kv head it reads, as eager gives with an additive -inf mask
    (masked_fill's backward zeroes the masked scores' gradient instead: dQ 0, dK finite,
    the neg_inf semantics, tests/interp/test_reproducers.py);
    the kernels flag those heads themselves (no host sync). Other heads match."""
    gen = torch.Generator().manual_seed(11)
    batch, h_q, h_kv, n, d = 2, 4, 2, 40, 16
    pad = torch.ones(batch, n, dtype=torch.int64)
    pad[0, :5] = 0  # batch 0: rows 0-4 see no key, except in heads >= 2
    spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype="float32", causal=True,
                         scale=0.25, mask="Ne(pad[b, kv_idx], 0) | (h >= 2)",
                         inputs=(TensorInput("pad", 2, "int64"),), mask_semantics="neg_inf_add")
    q = torch.randn(batch, h_q, n, d, generator=gen, requires_grad=True)
    k, v = (torch.randn(batch, h_kv, n, d, generator=gen, requires_grad=True)
            for _ in range(2))
    dout = torch.randn(batch, h_q, n, d, generator=gen)
    got = ops.attention(q, k, v, spec, [pad])
    got_grads = torch.autograd.grad(got, (q, k, v), dout)

    i = torch.arange(n)
    h = torch.arange(h_q).view(1, -1, 1, 1)
    visible = (((pad[:, None, None, :] != 0) | (h >= 2)) & (i[None, :] <= i[:, None]))
    ke, ve = (x.repeat_interleave(h_q // h_kv, 1) for x in (k, v))
    bias = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
    s = q @ ke.transpose(-2, -1) * 0.25 + bias
    want = torch.softmax(s, -1) @ ve
    want_grads = torch.autograd.grad(want, (q, k, v), dout)
    for name, a, e in zip(("out", "dq", "dk", "dv"), (got, *got_grads), (want, *want_grads)):
        assert torch.equal(torch.isnan(a), torch.isnan(e)), name
        finite = ~torch.isnan(e)
        assert relative_error(a[finite], e[finite]) <= TOLERANCE[torch.float32], name
    assert torch.isnan(got_grads[1][0, 0]).all() and not torch.isnan(got_grads[1][0, 1]).any()
