"""The split-KV decode kernels under the interpreter, against attention written in torch.

Each example draws a decode problem (context lengths 1 to a few hundred, not powers of
two; query rows 1-16; GQA groups 1-4; split counts that leave ragged and empty splits),
a mask of the kinds generate() emits (the bottom-right causal offset of a dynamic cache,
a StaticCache's cache_position, a sliding window, padding, top-left causal) with a
score modification (ALiBi, soft-capping) and a mask semantics, and compares out and lse
with eager math in float64 on the same inputs. Paged examples scatter the same K/V into
a shuffled page pool with a random page size and read it through the block table.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm90 import compile_sm90, has_ptx_backend, import_compiled

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode import op as decode_op
from ioaware.codegen.decode.reference import gather_pages, split_forward
from ioaware.spec import TensorInput
from ioaware.verify import relative_error

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
FINFO_MIN = torch.finfo(torch.float32).min


def _mask(kind: str, batch: int, n_q: int, n_k: int, gen: torch.Generator):
    """(mask text, inputs {name: tensor}, eager predicate over (b, h, i, j) grids)."""
    off = n_k - n_q  # decode: query row i sits at position off + i of the cache
    if kind == "none":
        return None, {}, None
    if kind == "offset":  # a DynamicCache's bottom-right causal mask, sizes at run time
        sizes = torch.tensor([off], dtype=torch.int64)
        return "kv_idx <= q_idx + sizes[0]", {"sizes": sizes}, lambda b, h, i, j: j <= i + off
    if kind == "cache_position":  # a StaticCache longer than what is filled
        used = int(torch.randint(min(n_q, n_k), n_k + 1, (1,), generator=gen))
        pos = torch.arange(used - n_q, used, dtype=torch.int64)
        return ("kv_idx <= cp[q_idx]", {"cp": pos},
                lambda b, h, i, j: j <= pos[i.clamp(max=n_q - 1)])
    if kind == "window":
        w = int(torch.randint(1, 40, (1,), generator=gen))
        return (f"(kv_idx <= q_idx + {off}) & (kv_idx > q_idx + {off - w})", {},
                lambda b, h, i, j: (j <= i + off) & (j > i + off - w))
    if kind == "padding":  # left padding; a zero length makes rows with no visible key
        lengths = torch.randint(0, n_k + 1, (batch,), generator=gen)
        keep = torch.arange(n_k)[None, :] >= (n_k - lengths)[:, None]
        return "Ne(pad[b, kv_idx], 0)", {"pad": keep}, lambda b, h, i, j: keep[b, j]
    raise AssertionError(kind)


def _mod(kind: str, heads: int):
    if kind == "none":
        return None, {}, lambda s, b, h, i, j: s
    if kind == "alibi":
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)
        return ("score + slopes[h]*(kv_idx - q_idx)", {"slopes": slopes},
                lambda s, b, h, i, j: s + slopes.double()[h] * (j - i))
    return "30.0*tanh(score/30.0)", {}, lambda s, b, h, i, j: 30.0 * torch.tanh(s / 30.0)


def _inputs(named: dict) -> tuple[tuple[TensorInput, ...], list[torch.Tensor]]:
    spec_inputs = tuple(TensorInput(name=n, ndim=t.dim(), dtype=str(t.dtype).split(".")[1])
                        for n, t in named.items())
    return spec_inputs, list(named.values())


def _eager(q, k, v, scale, causal, visible, mod, semantics):
    """Attention in float64 as eager computes it under each mask semantics."""
    batch, h_q, n_q, _ = q.shape
    group = h_q // k.shape[1]
    k = k.double().repeat_interleave(group, 1)
    v = v.double().repeat_interleave(group, 1)
    b, h, i, j = (torch.arange(n).view([-1 if a == x else 1 for a in range(4)])
                  for x, n in enumerate((batch, h_q, n_q, k.shape[2])))
    s = mod(q.double() @ k.transpose(-1, -2) * scale, b, h, i, j)
    seen = torch.ones(s.shape, dtype=torch.bool)
    if causal:
        seen = seen & (j <= i)
    if visible is not None:
        seen = seen & visible(b, h, i, j)
    if semantics == "add":  # scores + where(m, 0, finfo.min), rounded in fp32 as eager
        logits = torch.where(seen, s, (s.float() + FINFO_MIN).double())
    else:
        logits = s.masked_fill(~seen, float("-inf"))
    lse = torch.logsumexp(logits, -1)
    p = torch.softmax(logits, -1)
    if semantics == "safe":
        p = torch.where(seen.any(-1, keepdim=True), p, 0.0)
    return p @ v, lse


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    group = draw(st.sampled_from([1, 2, 4]))
    h_kv = draw(st.integers(1, 2))
    return {
        "batch": draw(st.integers(1, 2)), "h_kv": h_kv, "h_q": group * h_kv,
        "n_q": draw(st.sampled_from([1, 1, 2, 3, 5, 16])),
        # a context shorter than a key tile, or up to a few hundred (not powers of two)
        "n_k": draw(st.one_of(st.integers(1, 16), st.integers(17, 300))),
        "d": draw(st.sampled_from([16, 24, 32])),
        "dtype": dtype, "splits": draw(st.sampled_from([0, 1, 2, 3, 7])),
        "mask": draw(st.sampled_from(["none", "offset", "cache_position", "window",
                                      "padding"])),
        "mod": draw(st.sampled_from(["none", "none", "alibi", "softcap"])),
        "semantics": draw(st.sampled_from(["neg_inf", "safe", "add"])),
        "causal": draw(st.sampled_from([False, False, False, True])),
        "paged": draw(st.booleans()), "page": draw(st.sampled_from([1, 3, 16, 32])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _pool(k: torch.Tensor, v: torch.Tensor, page: int, gen: torch.Generator):
    """K/V [B, Hkv, Nk, d] scattered into shuffled pages: (k_cache, v_cache, table)."""
    batch, h_kv, n_k, d = k.shape
    per_row = -(-n_k // page)
    n_pages = batch * per_row + 3  # spare pages the table never names
    order = torch.randperm(n_pages, generator=gen)[:batch * per_row].view(batch, per_row)
    k_cache = torch.randn(n_pages, page, h_kv, d, generator=gen).to(k.dtype)
    v_cache = torch.randn(n_pages, page, h_kv, v.shape[-1], generator=gen).to(v.dtype)
    for b in range(batch):
        for n in range(n_k):
            k_cache[order[b, n // page], n % page] = k[b, :, n]
            v_cache[order[b, n // page], n % page] = v[b, :, n]
    table = torch.cat([order, torch.zeros(batch, 2, dtype=order.dtype)], 1)  # wider
    return k_cache, v_cache, table.to(torch.int32)


@settings(max_examples=24, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems())
def test_decode_matches_eager(p):
    _check_against_eager(p)


def test_a_few_thousand_keys_paged():
    """One long context (2345 keys, many splits and pages) through the paged kernels."""
    _check_against_eager({"batch": 1, "h_kv": 1, "h_q": 4, "n_q": 2, "n_k": 2345, "d": 16,
                          "dtype": torch.float32, "splits": 0, "mask": "window",
                          "mod": "alibi", "semantics": "add", "causal": False,
                          "paged": True, "page": 16, "seed": 7})


def _check_against_eager(p, device="cpu"):
    """Run problem `p` (see `problems`) through the decode ops on `device` and compare
    out and lse with eager math in float64 on the CPU."""
    gen = torch.Generator().manual_seed(p["seed"])
    batch, h_q, h_kv, n_q, n_k, d = (p[x] for x in ("batch", "h_q", "h_kv", "n_q", "n_k", "d"))
    q, k, v = (torch.randn(batch, h, n, d, generator=gen).to(p["dtype"])
               for h, n in ((h_q, n_q), (h_kv, n_k), (h_kv, n_k)))
    mask, mask_inputs, visible = _mask(p["mask"], batch, n_q, n_k, gen)
    mod, mod_inputs, mod_fn = _mod(p["mod"], h_q)
    spec_inputs, tensors = _inputs({**mask_inputs, **mod_inputs})
    scale = 1 / math.sqrt(d)
    fill = FINFO_MIN if p["semantics"] == "add" else float("-inf")
    spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype=str(p["dtype"]).split(".")[1],
                         causal=p["causal"], scale=scale, mask=mask, score_mod=mod,
                         inputs=spec_inputs, mask_semantics=p["semantics"], mask_fill=fill)
    def on(*xs):
        return [x.to(device) for x in xs]

    if p["paged"]:
        k_cache, v_cache, table = _pool(k, v, p["page"], gen)
        assert torch.equal(gather_pages(k_cache, table, n_k), k)
        out, lse = torch.ops.ioaware.paged_decode_attention(
            *on(q, k_cache, v_cache, table), n_k, on(*tensors), spec.to_json(), p["splits"])
    else:
        out, lse = torch.ops.ioaware.decode_attention(*on(q, k, v), on(*tensors),
                                                      spec.to_json(), p["splits"])
    out, lse = out.cpu(), lse.cpu()
    ref, ref_lse = _eager(q, k, v, scale, p["causal"], visible, mod_fn, p["semantics"])
    # rows with no visible key: NaN under neg_inf (eager softmax), else compared as values
    assert decode_op.decode_supports(spec) is None  # the decode kernels ran, not prefill
    nan_rows = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan_rows)
    got = torch.where(nan_rows, 0.0, out.double())
    ref = torch.where(nan_rows, 0.0, ref)
    assert relative_error(got, ref) < TOLERANCE[p["dtype"]], p
    finite = torch.isfinite(ref_lse) & (ref_lse > -1e30)
    assert torch.allclose(lse.double()[finite], ref_lse[finite], atol=1e-3, rtol=1e-4)


def test_split_merge_is_one_softmax():
    """The log-sum-exp merge of split partials equals one softmax over all keys."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, n, 8, generator=gen) for h, n in ((4, 3), (2, 77), (2, 77)))
    out, lse = split_forward(q, k, v, 0.3, splits=5)
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.3
    assert torch.allclose(lse, torch.logsumexp(s, -1), atol=1e-5)
    assert torch.allclose(out, torch.softmax(s, -1) @ v.repeat_interleave(2, 1), atol=1e-5)


def _plain(d: int) -> AttentionSpec:
    return AttentionSpec(head_dim=d, head_dim_v=d, dtype="float32", causal=False,
                         scale=1 / math.sqrt(d))


def test_paged_bad_block_table_is_an_error_not_a_read():
    """Entries outside the pool and a table too short for n_k raise ValueError naming
    block_table; nothing out of bounds is read."""
    q = torch.randn(1, 2, 1, 16)
    k_cache = torch.randn(4, 8, 2, 16)
    table = torch.tensor([[0, 1, 7]], dtype=torch.int32)  # page 7 of 4
    spec = _plain(16).to_json()
    with pytest.raises(ValueError, match="block_table entries"):
        torch.ops.ioaware.paged_decode_attention(q, k_cache, k_cache, table, 20, [], spec)
    with pytest.raises(ValueError, match="block_table entries"):
        torch.ops.ioaware.paged_decode_attention(q, k_cache, k_cache, -table, 20, [], spec)
    with pytest.raises(ValueError, match="block_table addresses 3 pages"):
        torch.ops.ioaware.paged_decode_attention(q, k_cache, k_cache, table, 25, [], spec)
    with pytest.raises(ValueError, match="n_k=-1"):
        torch.ops.ioaware.paged_decode_attention(q, k_cache, k_cache, table, -1, [], spec)
    # the unused tail of the table is not read: 16 keys need pages 0 and 1 only
    out, _ = torch.ops.ioaware.paged_decode_attention(q, k_cache, k_cache, table, 16, [], spec)
    dense = gather_pages(k_cache, table[:, :2], 16)
    ref = torch.softmax(q @ dense.transpose(-1, -2) / 4, -1) @ dense
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("splits", [1, 3])
def test_paged_kernel_flags_entries_outside_the_pool(splits):
    """On the GPU the entries are checked by the kernels that read them: the launcher
    returns 1 when every entry read named a page of the pool, 0 when one did not (that
    page read as masked zeros, never dereferenced), with one split and with a merge."""
    from ioaware.codegen.decode.spec import DecodeSpec
    from ioaware.codegen.runtime import kernel_module

    module = kernel_module("decode", DecodeSpec(_plain(16), paged=True), torch.device("cpu"))
    q = torch.randn(2, 4, 1, 16)
    cache = torch.randn(6, 8, 2, 16)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    for entry, want in ((4, 1), (6, 0), (-1, 0)):
        bad = table.clone()
        bad[1, 1] = entry
        out = q.new_empty(q.shape)
        lse = q.new_empty(q.shape[:3])
        in_pool = module.forward(q, cache, cache, out, lse, [], splits, (16, 16, 4, 1),
                                 bad, 20)
        assert in_pool.shape == (1,) and int(in_pool) == want, (entry, splits)
    # entries past n_k's pages are not read, so not flagged: 16 keys use pages 0, 1
    bad = table.clone()
    bad[:, 2] = 99
    in_pool = module.forward(q, cache, cache, out, lse, [], splits, (16, 16, 4, 1), bad, 16)
    assert int(in_pool) == 1


def test_decode_gradients_are_the_prefill_backward():
    """A decode region under autograd: gradients of q, k, v equal eager's."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, n, 16, generator=gen).requires_grad_()
               for h, n in ((4, 2), (2, 41), (2, 41)))
    out, _ = torch.ops.ioaware.decode_attention(q, k, v, [], _plain(16).to_json(), 3)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    ref.square().sum().backward()
    for g, t in zip(grads, (q, k, v)):
        assert relative_error(g, t.grad) < 1e-4


@pytest.mark.parametrize("gather", ["indexing", "index_select", "gather"])
def test_paged_example_compiles_to_the_paged_kernel(gather):
    """examples/paged_decode.py through ioaware.compile, each gather spelling: equal to
    eager, the pages read in place; a block table naming a page outside the pool is a
    ValueError naming block_table, never a read out of bounds."""
    import ioaware
    from ioaware import backend
    from ioaware.examples import paged_decode

    model, args = paged_decode.make(batch=3, context=70, block_size=8, gather=gather,
                                    d_model=64, n_heads=4, n_kv_heads=2)
    before = backend.counters["decode"]
    compiled = ioaware.compile(model)
    got = compiled(*args)
    assert backend.counters["decode"] == before + 1
    assert relative_error(got, model(*args)) < 1e-5
    x, k_pages, v_pages, table, lens = args
    bad = table.clone()
    bad[1, 2] = k_pages.shape[0] + 5
    with pytest.raises((ValueError, IndexError, RuntimeError), match="block_table|index"):
        model(x, k_pages, v_pages, bad, lens)  # eager's own error
    with pytest.raises(ValueError, match="block_table entries"):
        compiled(x, k_pages, v_pages, bad, lens)


@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
def test_decode_kernels_compile_for_hopper(tmp_path):
    """The interpreter forgives what compiled Triton rejects (a block-level `if` in a
    loop, loop-carried shapes): build the split kernel (one split and many) and the
    merge for sm_90 at the H100 tile, paged, for a masked and modified Spec (the plain
    Spec's kernels are the same code with those switches off)."""
    from ioaware.codegen.decode.forward import render_decode
    from ioaware.codegen.decode.spec import DecodeSpec
    from ioaware.codegen.decode.tiles import decode_tile, paged_stages
    from ioaware.hardware import get_profile

    masked = AttentionSpec(
        head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False, scale=0.088,
        mask="(kv_idx <= q_idx + sizes[0]) & Ne(pad[b, kv_idx], 0)",
        score_mod="score + slopes[h]*(kv_idx - q_idx)",
        inputs=(TensorInput("sizes", 1, "int64"), TensorInput("pad", 2, "bool"),
                TensorInput("slopes", 1, "float32")),
        mask_semantics="add", mask_fill=FINFO_MIN)
    pointers = {"Part": "*fp32", "Lse": "*fp32",
                "BT": "*i32", "Bad": "*i32", "Ok": "*i32", "In0": "*i64", "In1": "*i1",
                "In2": "*fp32"}
    bm, bn, warps, stages = decode_tile(get_profile("h100"), 128, 128, 2, 16)
    module = import_compiled(render_decode(DecodeSpec(masked, paged=True)),
                             tmp_path / "decode_paged.py")

    def types(a):
        return pointers.get(a, "*bf16" if a in ("Q", "K", "V", "Out") else "i32")

    for final in (False, True):
        compile_sm90(module._decode_split, {"BLOCK_M": bm, "BLOCK_N": bn, "PAGE": 16,
                                            "FINAL": final},
                     types, num_warps=warps, num_stages=paged_stages(stages))
    compile_sm90(module._decode_merge, {"BLOCK_M": bm, "BLOCK_N": bn, "PAGE": 16}, types,
                 num_warps=4)
    compile_sm90(module._pool_check_kernel, {"CHECK_BLOCK": 1024}, types, num_warps=4)


@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
def test_paged_split_keeps_the_dense_pipeline_depth_on_hopper(tmp_path):
    """The page ids address K and V, and Triton's pipeliner splits num_stages across
    that chain: at the dense tile's 3 stages the paged kernel kept one K/V tile in
    flight (39 KB of shared memory against 72 KB, sm_90, 16 x 64 bf16 tile). With
    tiles.paged_stages it keeps the dense kernel's buffers: at least its shared memory."""
    from ioaware.codegen.decode.forward import render_decode
    from ioaware.codegen.decode.spec import DecodeSpec
    from ioaware.codegen.decode.tiles import decode_tile, paged_stages
    from ioaware.hardware import get_profile

    plain = AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False,
                          scale=0.088)
    bm, bn, warps, stages = decode_tile(get_profile("h100"), 128, 128, 2, 16)
    pointers = {"Part": "*fp32", "Lse": "*fp32", "BT": "*i32", "Bad": "*i32"}

    def types(a):
        return pointers.get(a, "*bf16" if a in ("Q", "K", "V", "Out") else "i32")

    def aligned(a):  # tensors and every stride but the unit ones and the table's
        return a in pointers or a in ("Q", "K", "V", "Out") or (
            a.startswith("stride_") and not a.startswith("stride_bt"))

    shared = {}
    for paged in (False, True):
        module = import_compiled(render_decode(DecodeSpec(plain, paged=paged)),
                                 tmp_path / f"decode_{int(paged)}.py")
        fn = module._decode_split
        unit = {a: 1 for a in fn.arg_names if a.startswith("stride_") and a.endswith("d")}
        kernel = compile_sm90(fn, {"BLOCK_M": bm, "BLOCK_N": bn, "PAGE": 16 if paged else 1,
                                   "FINAL": False, **unit}, types, num_warps=warps,
                              num_stages=paged_stages(stages) if paged else stages,
                              aligned=aligned)
        shared[paged] = kernel.metadata.shared
    # dense: stages - 1 K/V tiles in flight (bf16, d = dv = 128); paged: as many
    assert shared[False] >= (stages - 1) * bn * (128 + 128) * 2, shared
    assert shared[True] >= shared[False], shared


def test_opcheck_schema_fake_and_autograd():
    """torch.library.opcheck: schemas, fakes (what Inductor and dynamo trace with) and
    the autograd registration of both decode ops agree with what they compute."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, h, n, 16, generator=gen).requires_grad_()
               for h, n in ((4, 1), (2, 37), (2, 37)))
    spec = _plain(16).to_json()
    torch.library.opcheck(torch.ops.ioaware.decode_attention.default, (q, k, v, [], spec, 3))
    cache = torch.randn(5, 8, 2, 16, generator=gen)
    table = torch.tensor([[3, 0, 4, 1, 2]], dtype=torch.int32)
    torch.library.opcheck(torch.ops.ioaware.paged_decode_attention.default,
                          (q.detach(), cache, cache, table, 37, [], spec, 0))
