"""The cost model: exact HBM bytes and FLOPs per op family, and the attention closed forms.

Nodes come from real make_fx traces of tiny functions, in the canonical form capture
produces (pre-dispatch ATen, matmul/softmax/dropout/to decomposed). Static traces use
tracing_mode="real", symbolic ones "symbolic"; both must give the same numbers.
Every expected number has its reasoning beside it. fp32 is 4 bytes, bf16 2, bool 1.
"""

import dataclasses
import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from ioaware import hardware
from ioaware.codegen.attention.price import (
    attention_unfused_cost,
    causal_backward_query_rows,
    causal_forward_blocks,
    flash_attention_backward_cost,
    flash_attention_cost,
)
from ioaware.codegen.attention.tiles import (
    attention_dkdv_tile_candidates,
    attention_dq_tile_candidates,
    attention_forward_sram_bytes,
    attention_tile,
    attention_tile_candidates,
)
from ioaware.codegen.scan.price import linear_scan_cost, selective_scan_cost
from ioaware.codegen.scan.tiles import scan_chunk_candidates, scan_tile, selective_scan_sram_bytes
from ioaware.cost import (
    FLOPS_PER_FMA,
    NUM_SMS,
    Cost,
    bound,
    ceilings,
    dram_bytes,
    graph_cost,
    l2_hits,
    matmul_l2_spill,
    modelled_time,
    node_cost,
    programs_in_flight,
    rewrite_pays,
    size_hints,
    softmax_row_waves,
    sym,
)
from ioaware.hardware import PROFILES

aten = torch.ops.aten
DECOMPOSE = {
    op: op.decompose
    for op in (aten.matmul.default, aten.einsum.default, aten.softmax.int,
               aten.dropout.default, aten.to.dtype)
}
MODES = ["real", "symbolic"]
H100 = PROFILES["h100"]


def trace(fn, *args, mode="real") -> fx.GraphModule:
    return make_fx(fn, tracing_mode=mode, pre_dispatch=True, decomposition_table=DECOMPOSE)(*args)


def the(gm: fx.GraphModule, target) -> fx.Node:
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]
    assert len(nodes) == 1, f"expected one {target} in\n{gm.graph}"
    return nodes[0]


def priced(fn, *args, target, mode="real") -> dict[str, int]:
    """Numbers for the one `target` node in the trace of fn(*args)."""
    gm = trace(fn, *args, mode=mode)
    cost = node_cost(the(gm, target))
    assert cost is not None
    return cost.evaluate(size_hints(gm))


x = torch.randn(4, 64)
y = torch.randn(4, 64)
N = 4 * 64  # elements of x


# ---------------------------------------------------------------------------------------
# pointwise


@pytest.mark.parametrize("mode", MODES)
def test_binary_pointwise_reads_each_input_and_writes_the_output(mode):
    c = priced(torch.add, x, y, target=aten.add.Tensor, mode=mode)
    assert c["read_bytes"] == 2 * 4 * N  # reads x and y, fp32
    assert c["write_bytes"] == 4 * N  # writes x + y
    assert c["flops"] == N  # one add per element
    assert c["transcendentals"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_an_input_used_twice_is_read_once(mode):
    c = priced(lambda a: a * a, x, target=aten.mul.Tensor, mode=mode)
    assert c["read_bytes"] == 4 * N  # x once, not twice
    c = priced(lambda a: a + a.t().t(), x, target=aten.add.Tensor, mode=mode)
    assert c["read_bytes"] == 4 * N  # a view of x is the same memory


@pytest.mark.parametrize("mode", MODES)
def test_a_broadcast_input_counts_its_own_size(mode):
    b = torch.randn(64)
    c = priced(torch.add, x, b, target=aten.add.Tensor, mode=mode)
    assert c["read_bytes"] == 4 * N + 4 * 64  # x, and the 64-element bias once
    assert c["write_bytes"] == 4 * N


@pytest.mark.parametrize("mode", MODES)
def test_an_expanded_input_is_read_at_its_own_size_and_expand_is_free(mode):
    row = torch.randn(1, 64)
    gm = trace(lambda a, r: a * r.expand(4, 64), x, row, mode=mode)
    assert node_cost(the(gm, aten.expand.default)) == Cost()
    c = node_cost(the(gm, aten.mul.Tensor)).evaluate(size_hints(gm))
    assert c["read_bytes"] == 4 * N + 4 * 64  # x, and the row it broadcasts, once


def test_transcendentals_and_activation_conventions():
    c = priced(torch.exp, x, target=aten.exp.default)
    assert (c["flops"], c["transcendentals"]) == (N, N)  # an exp is 1 FLOP and 1 SFU op
    c = priced(lambda a: F.gelu(a), x, target=aten.gelu.default)
    assert (c["flops"], c["transcendentals"]) == (5 * N, N)  # 0.5·x·(1 + erf(x/√2))
    c = priced(lambda a: F.silu(a), x, target=aten.silu.default)
    assert (c["flops"], c["transcendentals"]) == (4 * N, N)  # x / (1 + exp(-x))
    c = priced(lambda a: a.pow(2), x, target=aten.pow.Tensor_Scalar)
    assert (c["flops"], c["transcendentals"]) == (N, 0)  # x·x, no exp/log


def test_masked_fill_reads_the_broadcast_mask_once():
    scores = torch.randn(2, 3, 16, 16)
    mask = torch.ones(16, 16, dtype=torch.bool).triu(1)
    c = priced(lambda s, m: s.masked_fill(m, -math.inf), scores, mask,
               target=aten.masked_fill.Scalar)
    assert c["read_bytes"] == 4 * 2 * 3 * 16 * 16 + 16 * 16  # scores fp32, bool mask once
    assert c["write_bytes"] == 4 * 2 * 3 * 16 * 16


def test_where_reads_condition_and_both_branches():
    m = torch.rand(4, 64) > 0.5
    c = priced(torch.where, m, x, y, target=aten.where.self)
    assert c["read_bytes"] == N + 2 * 4 * N  # bool condition, then x and y
    assert c["write_bytes"] == 4 * N


# ---------------------------------------------------------------------------------------
# views and copies


@pytest.mark.parametrize("mode", MODES)
def test_views_cost_nothing(mode):
    def views(a):
        return a.t().unsqueeze(0).squeeze(0)[1:3].select(0, 0).detach().view(2, 2)

    gm = trace(views, x, mode=mode)
    ops = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert {n.target for n in ops} >= {aten.t.default, aten.slice.Tensor, aten.select.int}
    for node in ops:
        assert node_cost(node) == Cost(), node.format_node()


@pytest.mark.parametrize("mode", MODES)
def test_reshape_copies_only_when_it_cannot_view(mode):
    gm = trace(lambda a: (a.reshape(-1), a.t().reshape(-1)), x, mode=mode)
    viewed, copied = (n for n in gm.graph.nodes if n.target == aten.reshape.default)
    assert node_cost(viewed) == Cost()  # contiguous: a view
    c = node_cost(copied).evaluate(size_hints(gm))
    assert (c["read_bytes"], c["write_bytes"]) == (4 * N, 4 * N)  # transposed: a copy


def test_copies_read_and_write():
    c = priced(torch.clone, x, target=aten.clone.default)
    assert (c["read_bytes"], c["write_bytes"], c["flops"]) == (4 * N, 4 * N, 0)
    c = priced(lambda a: a.to(torch.bfloat16), x, target=aten._to_copy.default)
    assert (c["read_bytes"], c["write_bytes"]) == (4 * N, 2 * N)  # read fp32, write bf16
    c = priced(lambda a: a.t().contiguous(), x, target=aten.contiguous.default)
    assert (c["read_bytes"], c["write_bytes"]) == (4 * N, 4 * N)
    c = priced(lambda a, b: torch.cat([a, b]), x, y, target=aten.cat.default)
    assert (c["read_bytes"], c["write_bytes"]) == (2 * 4 * N, 2 * 4 * N)


def test_gqa_expand_then_reshape_copies_but_reads_the_small_tensor():
    k = torch.randn(2, 1, 8, 16)  # one kv head, expanded to 4 query heads
    c = priced(lambda t: t.expand(2, 4, 8, 16).transpose(1, 2).reshape(2, 8, 64), k,
               target=aten.reshape.default)
    assert c["read_bytes"] == 4 * 2 * 1 * 8 * 16  # the kv head once
    assert c["write_bytes"] == 4 * 2 * 4 * 8 * 16  # four copies of it


def test_factories_write_and_empty_writes_nothing():
    c = priced(lambda: torch.ones(8, 8), target=aten.ones.default)
    assert (c["read_bytes"], c["write_bytes"]) == (0, 4 * 64)
    c = priced(lambda: torch.arange(8), target=aten.arange.default)
    assert c["write_bytes"] == 8 * 8  # int64
    c = priced(lambda a: torch.empty_like(a), x, target=aten.empty_like.default)
    assert c["hbm_bytes"] == 0  # allocates, touches nothing


# ---------------------------------------------------------------------------------------
# matmuls, reductions, normalisation, gathers


@pytest.mark.parametrize("mode", MODES)
def test_mm_is_2mnk(mode):
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    c = priced(torch.matmul, a, b, target=aten.mm.default, mode=mode)
    assert c["flops"] == 2 * 8 * 32 * 16  # an FMA per (m, n, k) counts 2
    assert c["read_bytes"] == 4 * (8 * 16 + 16 * 32)  # A and B once
    assert c["write_bytes"] == 4 * 8 * 32


@pytest.mark.parametrize("mode", MODES)
def test_bmm_multiplies_by_the_batch(mode):
    a, b = torch.randn(3, 8, 16), torch.randn(3, 16, 32)
    c = priced(torch.matmul, a, b, target=aten.bmm.default, mode=mode)
    assert c["flops"] == 2 * 3 * 8 * 32 * 16
    assert c["read_bytes"] == 4 * 3 * (8 * 16 + 16 * 32)
    assert c["write_bytes"] == 4 * 3 * 8 * 32


def test_linear_and_addmm_add_one_flop_per_output_for_the_bias():
    a, w, b = torch.randn(4, 16), torch.randn(32, 16), torch.randn(32)
    for fn, target in ((F.linear, aten.linear.default),
                       (lambda a, w, b: torch.addmm(b, a, w.t()), aten.addmm.default)):
        c = priced(fn, a, w, b, target=target)
        assert c["flops"] == 2 * 4 * 32 * 16 + 4 * 32  # matmul, then the bias add
        assert c["read_bytes"] == 4 * (4 * 16 + 32 * 16 + 32)  # input, weight, bias
        assert c["write_bytes"] == 4 * 4 * 32


@pytest.mark.parametrize("mode", MODES)
def test_softmax_convention(mode):
    c = priced(lambda a: torch.softmax(a, -1), x, target=aten._softmax.default, mode=mode)
    assert (c["read_bytes"], c["write_bytes"]) == (4 * N, 4 * N)  # read x, write y
    assert c["flops"] == 5 * N  # max, sub, exp, add, scale per element
    assert c["transcendentals"] == N  # one exp per element


def test_reductions_read_all_and_write_the_reduced_shape():
    for fn, target in ((lambda a: a.sum(-1), aten.sum.dim_IntList),
                       (lambda a: a.amax(-1), aten.amax.default),
                       (lambda a: a.mean(-1), aten.mean.dim)):
        c = priced(fn, x, target=target)
        assert c["read_bytes"] == 4 * N
        assert c["write_bytes"] == 4 * 4  # one value per row
        assert c["flops"] == N  # one add or compare per input element
    c = priced(lambda a: a.cumsum(-1), x, target=aten.cumsum.default)
    assert (c["write_bytes"], c["flops"]) == (4 * N, N)


def test_layer_norm():
    w, b = torch.randn(64), torch.randn(64)
    c = priced(lambda a, w, b: F.layer_norm(a, (64,), w, b), x, w, b,
               target=aten.layer_norm.default)
    assert c["read_bytes"] == 4 * (N + 64 + 64)  # x, weight, bias
    assert c["write_bytes"] == 4 * N
    assert c["flops"] == 8 * N  # mean, variance (3), normalise (2), affine (2)
    assert c["transcendentals"] == 4  # one rsqrt per row


def test_embedding_reads_only_the_rows_it_picks():
    table, idx = torch.randn(1000, 32), torch.randint(0, 1000, (2, 8))
    c = priced(lambda i, t: F.embedding(i, t), idx, table, target=aten.embedding.default)
    assert c["read_bytes"] == 8 * 2 * 8 + 4 * 2 * 8 * 32  # int64 ids, 16 rows of 32 fp32
    assert c["write_bytes"] == 4 * 2 * 8 * 32


# ---------------------------------------------------------------------------------------
# symbolic sizes, unpriced ops, whole graphs


def test_symbolic_costs_are_expressions_in_the_size_symbols():
    gm = trace(torch.add, torch.randn(5, 7), torch.randn(5, 7), mode="symbolic")
    rows, cols = (sym(s) for s in the(gm, aten.add.Tensor).meta["val"].shape)
    assert rows.free_symbols and cols.free_symbols
    c = node_cost(the(gm, aten.add.Tensor))
    assert c.read_bytes == 2 * 4 * rows * cols  # x and y, fp32
    assert c.write_bytes == 4 * rows * cols
    assert c.evaluate(size_hints(gm))["hbm_bytes"] == 3 * 4 * 5 * 7
    assert c.subs({str(rows): 10}).evaluate({cols: 2})["read_bytes"] == 2 * 4 * 20


def test_an_unknown_op_is_unpriced_not_free():
    gm = trace(lambda a: torch.fft.rfft(a).abs(), x)
    fft = the(gm, aten.fft_rfft.default)
    assert node_cost(fft) is None
    total, per_node = graph_cost(gm)
    assert dict(per_node)[fft] is None
    assert total.write_bytes == 4 * 4 * 33  # only abs is in the total: [4, 33] fp32

    graph = fx.Graph()
    inp = graph.placeholder("x")
    graph.output(graph.call_module("layer", (inp,)))
    assert node_cost(next(n for n in graph.nodes if n.op == "call_module")) is None


def test_cost_arithmetic():
    a = Cost(read_bytes=1, write_bytes=2, flops=3, transcendentals=4)
    assert a + a == 2 * a == Cost(2, 4, 6, 8)
    assert sum([a, a, a]) == a * 3
    assert a.hbm_bytes == 3
    n = sympy.Symbol("n", positive=True, integer=True)
    with pytest.raises(ValueError, match=r"\['n'\]"):
        Cost(read_bytes=n).evaluate()


# ---------------------------------------------------------------------------------------
# attention: the eager chain node by node equals the closed form


def eager_attention(q, k, v, mask):
    s = q @ k.transpose(-2, -1)
    s = s.float()  # upcast: the chain keeps scores in fp32
    s = s * 0.125
    s = s.masked_fill(mask, -math.inf)
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return p @ v


@pytest.mark.parametrize("mode", MODES)
def test_the_traced_eager_chain_costs_what_attention_unfused_cost_says(mode):
    B, H, Nq, D = 2, 3, 40, 16
    q, k, v = (torch.randn(B, H, Nq, D, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(Nq, Nq, dtype=torch.bool).triu(1)
    gm = trace(eager_attention, q, k, v, mask, mode=mode)
    total, per_node = graph_cost(gm)
    assert all(c is not None for _, c in per_node)
    expected = attention_unfused_cost(B, H, Nq, Nq, D, D, 2, causal=True, score_itemsize=4)
    assert total.evaluate(size_hints(gm)) == expected.evaluate()


def test_unfused_attention_bytes_by_hand():
    B, H, n, d = 1, 1, 128, 64
    c = attention_unfused_cost(B, H, n, n, d, d, itemsize=2, causal=False)
    qkv_o = 4 * n * d * 2  # read Q, K, V and write O once, bf16
    scores = 6 * n * n * 2  # write S; read+write scaled; read+write P; read P
    assert c.evaluate()["hbm_bytes"] == qkv_o + scores
    assert c.evaluate()["flops"] == 4 * n * n * d + n * n + 5 * n * n  # 2 matmuls, scale, softmax


# ---------------------------------------------------------------------------------------
# FlashAttention closed forms


def test_flash_forward_by_hand():
    # B=1, 2 heads, N=256, d=64, bf16, tiles 128 x 64: T = 2 query blocks
    c = flash_attention_cost(1, 2, 2, 256, 256, 64, 64, 2, causal=False,
                             block_m=128, block_n=64).evaluate()
    q_bytes = 256 * 64 * 2  # Q once per head
    kv_bytes = 2 * 256 * (64 + 64) * 2  # K and V once per query block, 2 blocks
    assert c["read_bytes"] == 2 * (q_bytes + kv_bytes)
    assert c["write_bytes"] == 2 * (256 * 64 * 2 + 256 * 4)  # O in bf16, lse in fp32
    assert c["flops"] == 4 * 2 * 256 * 256 * 64  # 4·H·N²·d
    causal = flash_attention_cost(1, 2, 2, 256, 256, 64, 64, 2, causal=True,
                                  block_m=128, block_n=64).evaluate()
    # query block 1 loads keys 0..127, block 2 keys 0..255: 384 key rows, not 512
    assert causal["read_bytes"] == 2 * (q_bytes + 384 * (64 + 64) * 2)
    # whole visited blocks are computed: 128·128 + 128·256 pairs (3/4 of 256²)
    assert causal["flops"] == 2 * 2 * (128 * 128 + 128 * 256) * (64 + 64)


def test_sdpa_and_ioaware_ops_are_priced_as_the_fused_kernel():
    q, k, v = torch.randn(2, 4, 64, 16), torch.randn(2, 2, 64, 16), torch.randn(2, 2, 64, 32)
    expected = flash_attention_cost(2, 4, 2, 64, 64, 16, 32, 4, causal=True).evaluate()
    c = priced(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                               enable_gqa=True),
               q, k, v, target=aten.scaled_dot_product_attention.default)
    assert c == expected
    mask = torch.ones(64, 64, dtype=torch.bool)
    c = priced(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                                  enable_gqa=True),
               q, k, v, mask, target=aten.scaled_dot_product_attention.default)
    no_mask = flash_attention_cost(2, 4, 2, 64, 64, 16, 32, 4, causal=False).evaluate()
    assert c["read_bytes"] == no_mask["read_bytes"] + 64 * 64  # plus the bool mask once

    import ioaware.codegen.attention.op  # noqa: F401  registers torch.ops.ioaware

    c = priced(lambda q, k, v: torch.ops.ioaware.flash_attention(q, k, v, 0.25, True),
               q, k, v, target=torch.ops.ioaware.flash_attention.default)
    assert c == expected
    out, lse = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 64)
    c = priced(lambda do, q, k, v, o, lse: torch.ops.ioaware.flash_attention_backward(
        do, q, k, v, o, lse, 0.25, True), out, q, k, v, out, lse,
        target=torch.ops.ioaware.flash_attention_backward.default)
    assert c == flash_attention_backward_cost(2, 4, 2, 64, 64, 16, 32, 4, causal=True).evaluate()


def test_families_register_their_prices():
    """SDPA and the ioaware ops are priced by rules the attention family registered from
    its own folder when `import ioaware` loaded it; the cost model itself imports no
    kernel family (tests/unit/test_layering.py holds that rule)."""
    from ioaware.cost import rules

    for key in (("aten", "scaled_dot_product_attention"), ("ioaware", "flash_attention"),
                ("ioaware", "flash_attention_backward")):
        assert rules._RULES[key].__module__ == "ioaware.codegen.attention.price", key


def test_flash_backward_by_hand():
    # B=1, Hq=Hkv=1, N=256, d=64, bf16, tiles 128 x 64; non-causal
    c = flash_attention_backward_cost(1, 1, 1, 256, 256, 64, 64, 2, causal=False,
                                      block_m=128, block_n=64).evaluate()
    row = 256 * 64 * 2  # one N x d bf16 tensor
    stats = 256 * 4  # one fp32 value per query row
    preprocess_read = 2 * row  # O, dO
    dkdv_read = 2 * row + 4 * (2 * row + 2 * stats)  # K, V once; Q, dO, lse, delta per key block
    dq_read = 2 * row + 2 * stats + 2 * 2 * row  # Q, dO, lse, delta once; K, V per query block
    assert c["read_bytes"] == preprocess_read + dkdv_read + dq_read
    assert c["write_bytes"] == stats + 2 * row + row  # delta; dK, dV; dQ
    forward = flash_attention_cost(1, 1, 1, 256, 256, 64, 64, 2, causal=False).evaluate()
    assert c["flops"] * 2 == forward["flops"] * 5  # 2.5x the forward


# ---------------------------------------------------------------------------------------
# properties

TILES = st.sampled_from([16, 32, 64, 128])


def brute_forward(nq, nk, bm, bn):
    """Key rows loaded and score pairs computed, block by block, as the kernel loops."""
    key_rows = pairs = 0
    for start in range(0, nq, bm):
        hi = min(start + bm, nk)  # causal: keys up to the block's last row
        keys = min(nk, -(-hi // bn) * bn)  # whole key blocks, clipped to Nk
        key_rows += keys
        pairs += min(bm, nq - start) * keys
    return key_rows, pairs


def brute_backward_query_rows(nq, nk, bm, bn):
    return sum(max(0, nq - (start // bm) * bm) for start in range(0, nk, bn))


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 1500), nk=st.integers(1, 1500), bm=TILES, bn=TILES)
def test_causal_block_counts_match_the_block_loop(nq, nk, bm, bn):
    key_rows, pairs = causal_forward_blocks(nq, nk, bm, bn)
    assert (int(key_rows), int(pairs)) == brute_forward(nq, nk, bm, bn)
    assert int(causal_backward_query_rows(nq, nk, bm, bn)) == brute_backward_query_rows(
        nq, nk, bm, bn
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(64, 8192), b=st.integers(1, 4), h=st.integers(1, 8),
    d=st.sampled_from([16, 32, 64, 128, 256]), bm=st.sampled_from([64, 128]),
    bn=st.sampled_from([32, 64, 128]), causal=st.booleans(), itemsize=st.sampled_from([2, 4]),
    upcast=st.booleans(),
)
def test_flash_moves_fewer_bytes_than_the_unfused_chain(n, b, h, d, bm, bn, causal, itemsize,
                                                         upcast):
    # FlashAttention's K/V re-reads are N²·2d/block_m; the chain moves >= 6·N² score
    # elements. The tile must be tall enough for the head dim (Θ(N²d²/M)): d <= 2·bm.
    assume(d <= 2 * bm)
    unfused = attention_unfused_cost(b, h, n, n, d, d, itemsize, causal,
                                     score_itemsize=4 if upcast else None)
    flash = flash_attention_cost(b, h, h, n, n, d, d, itemsize, causal, bm, bn)
    assert flash.evaluate()["hbm_bytes"] < unfused.evaluate()["hbm_bytes"]


def test_unfused_bytes_are_quadratic_in_n():
    n = sympy.Symbol("n", positive=True, integer=True)
    for causal in (False, True):
        bytes_n = attention_unfused_cost(2, 4, n, n, 64, 64, 2, causal).hbm_bytes
        poly = sympy.Poly(sympy.expand(bytes_n), n)
        assert poly.degree() == 2 and poly.LC() > 0


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 64), d=st.sampled_from([32, 64, 128]),
       bm=st.sampled_from([64, 128]), bn=st.sampled_from([32, 64, 128]))
def test_flash_kv_traffic_is_n_squared_d_over_block_m(blocks, d, bm, bn):
    n = blocks * bm
    it = 2
    c = flash_attention_cost(1, 1, 1, n, n, d, d, it, False, bm, bn).evaluate()
    kv = c["read_bytes"] - n * d * it  # all but the one read of Q
    assert kv * bm == n * n * 2 * d * it  # N²·(d + dv)·it / block_m exactly
    causal = flash_attention_cost(1, 1, 1, n, n, d, d, it, True, bm, bn).evaluate()
    causal_kv = causal["read_bytes"] - n * d * it
    if bm % bn == 0:  # key rows bm·T(T+1)/2: half, plus half a diagonal block per row block
        assert 2 * causal_kv * bm == n * (n + bm) * 2 * d * it


# ---------------------------------------------------------------------------------------
# time on a device


def test_modelled_time_is_the_slowest_ceiling():
    memory_second = Cost(read_bytes=2.0e12, write_bytes=1.0e12)  # 3 TB at 3.0 TB/s measured
    assert modelled_time(memory_second, H100, "bfloat16") == pytest.approx(1.0)
    assert bound(memory_second, H100, torch.bfloat16) == "memory"
    # at the measured 790 TFLOP/s of the tensor cores
    two_seconds = Cost(read_bytes=1e9, flops=2 * 790e12, tensor_flops=2 * 790e12)
    assert modelled_time(two_seconds, H100, "bf16") == pytest.approx(2.0)
    assert bound(two_seconds, H100, "bf16") == "compute"
    # FLOPs not on tensor cores run on the CUDA cores: 66.9 TFLOP/s of fp32 FMA
    vector = Cost(flops=66.9e12)
    assert modelled_time(vector, H100, "bf16") == pytest.approx(1.0)
    exps = Cost(transcendentals=3.9e12)  # one second of the special-function units
    assert modelled_time(exps, H100, "bf16") == pytest.approx(1.0)


def test_the_pipes_add_up_and_memory_overlaps_them():
    # 1 s of matmul, 1 s of exp, 0.5 s of fp32 (each exp is also 1 FLOP on the CUDA
    # cores: its issue slot), 2 s of HBM: the pipes do not overlap each other
    # (FlashAttention-3, §3.1), the loads overlap all of them
    c = Cost(read_bytes=6e12, flops=790e12 + 0.5 * 66.9e12 + 3.9e12,
             tensor_flops=790e12, transcendentals=3.9e12)
    t = ceilings(c, H100, "bf16")
    assert (t["tensor"], t["sfu"], t["hbm"]) == pytest.approx((1.0, 1.0, 2.0))
    assert t["vector"] == pytest.approx(0.5 + 3.9e12 / 66.9e12)
    assert modelled_time(c, H100, "bf16") == pytest.approx(2.5 + 3.9e12 / 66.9e12)
    assert bound(c, H100, "bf16") == "compute"


def test_attention_forward_time_is_matmul_plus_exp():
    # B=4, H=16, N=4096, d=128 causal bf16 (the acceptance case): 2.835e11 tensor FLOPs
    # at 790 T = 358.8 us, 5.54e8 exps at 3.9 T/s = 142.0 us; K/V re-reads hit L2, so
    # DRAM (89.8 us) hides under them: 500.8 us. Measured 931 us (ratio 0.54).
    c = flash_attention_cost(4, 16, 16, 4096, 4096, 128, 128, 2, True)
    t = ceilings(c, H100, "bf16")
    assert t["tensor"] == pytest.approx(358.8e-6, rel=1e-3)
    assert t["sfu"] == pytest.approx(142.0e-6, rel=1e-3)
    assert modelled_time(c, H100, "bf16") == pytest.approx(500.8e-6, rel=1e-3)
    # at N = 8192 the model says 566 TFLOP/s; the kernel was measured near 400
    big = flash_attention_cost(4, 16, 16, 8192, 8192, 128, 128, 2, True)
    rate = big.evaluate()["flops"] / modelled_time(big, H100, "bf16")
    assert rate == pytest.approx(566e12, rel=1e-3)


def test_the_scan_time_is_its_pipes_over_the_measured_efficiency():
    # the bench shape the H100's efficiency comes from: 29.3 us of fp32 FLOPs and
    # 61.3 us of exp (Bt·Dc·L·N + 3·Bt·Dc·L transcendentals) = 90.6 us, measured 197
    bench = selective_scan_cost(4, 1536, 2048, 16, 2, has_D=True, has_z=True,
                                has_delta_bias=True, delta_softplus=True)
    no_efficiency = dataclasses.replace(H100, kernel_efficiency={})
    t = ceilings(bench, no_efficiency, "bf16")
    assert t["compute"] == pytest.approx(hardware.SCAN_BENCH_MODELLED_S, rel=2e-3)
    assert modelled_time(bench, H100, "bf16") == pytest.approx(197e-6, rel=2e-3)
    # the acceptance shape (8, 2048, 2048, 16, ungated): 229.1 us of pipes / 0.460
    case = selective_scan_cost(8, 2048, 2048, 16, 2, has_D=False, has_z=False,
                               delta_softplus=True)
    assert ceilings(case, no_efficiency, "bf16")["compute"] == pytest.approx(229.1e-6,
                                                                             rel=1e-3)
    assert modelled_time(case, H100, "bf16") == pytest.approx(498.1e-6, rel=2e-3)


def test_rewrite_pays_for_gpt2_attention_and_says_why():
    # GPT-2 small: 12 heads, d = 64, 1024 tokens, batch 8, bf16 with fp32 softmax
    before = attention_unfused_cost(8, 12, 1024, 1024, 64, 64, 2, True, score_itemsize=4)
    after = flash_attention_cost(8, 12, 12, 1024, 1024, 64, 64, 2, True)
    pays, reason = rewrite_pays(before, after, H100, "bfloat16")
    assert pays
    b_before, b_after = before.evaluate()["hbm_bytes"], after.evaluate()["hbm_bytes"]
    assert f"{b_before:,}" in reason and f"{b_after:,}" in reason
    assert "ms" in reason or "µs" in reason
    assert rewrite_pays(after, before, H100, "bfloat16")[0] is False


def test_rewrite_pays_on_fewer_bytes_at_equal_time_and_with_symbolic_hints():
    n = sympy.Symbol("s0", positive=True, integer=True)
    compute_bound = Cost(flops=790e12)  # one second either way
    assert rewrite_pays(compute_bound + Cost(read_bytes=2 * n), compute_bound + Cost(read_bytes=n),
                        H100, "bf16", {"s0": 1000})[0]
    assert not rewrite_pays(compute_bound, compute_bound, H100, "bf16")[0]


# ---------------------------------------------------------------------------------------
# scans and block-sparse attention in closed form


def test_selective_scan_forward_by_hand():
    bt, dc, length, n, g, it = 2, 8, 16, 4, 2, 2  # bf16 activations
    c = selective_scan_cost(bt, dc, length, n, it, groups=g).evaluate()
    seq = bt * dc * length  # 256 elements of u, delta, z, y
    bc = 2 * bt * g * length * n  # 512 elements of B and C
    # read u, delta, z (3·seq·2) + A fp32 (dc·n·4) + D fp32 (dc·4) + B, C (bc·2)
    assert c["read_bytes"] == 3 * seq * 2 + dc * n * 4 + dc * 4 + bc * 2
    # write y (seq·2) and h_last fp32 (bt·dc·n·4)
    assert c["write_bytes"] == seq * 2 + bt * dc * n * 4
    # 9 per state element; per (b, d, l): delta·u 1, D skip FMA 2, y·silu(z) 5
    assert c["flops"] == 9 * seq * n + (1 + 2 + 5) * seq
    assert c["transcendentals"] == seq * n + seq  # exp(ΔA) per state, exp in silu(z)


def test_selective_scan_options_and_backward_by_hand():
    bt, dc, length, n, it = 1, 4, 8, 2, 4
    seq, bc = bt * dc * length, 2 * bt * length * n
    bare = selective_scan_cost(bt, dc, length, n, it, has_D=False, has_z=False).evaluate()
    assert bare["read_bytes"] == 2 * seq * 4 + dc * n * 4 + bc * 4  # u, delta, A, B, C
    assert bare["flops"] == 9 * seq * n + seq  # only delta·u per (b, d, l)
    biased = selective_scan_cost(bt, dc, length, n, it, has_D=False, has_z=False,
                                 has_delta_bias=True, delta_softplus=True).evaluate()
    assert biased["read_bytes"] == bare["read_bytes"] + dc * 4  # delta_bias, fp32
    assert biased["flops"] == bare["flops"] + (1 + 3) * seq  # bias add, softplus
    assert biased["transcendentals"] == bare["transcendentals"] + 2 * seq  # softplus: exp, log
    back = selective_scan_cost(bt, dc, length, n, it, backward=True).evaluate()
    # read u, delta, z, dy + A, D + B, C; write du, ddelta, dz + dB, dC fp32 + dA, dD
    assert back["read_bytes"] == 4 * seq * 4 + dc * n * 4 + dc * 4 + bc * 4
    assert back["write_bytes"] == 3 * seq * 4 + bc * 4 + dc * n * 4 + dc * 4
    assert back["flops"] == 25 * seq * n + 2 * (1 + 2 + 5) * seq


def test_linear_scan_by_hand():
    r, length, f, it = 3, 16, 8, 2
    n = r * length * f
    fwd = linear_scan_cost(r, length, f, it, has_h0=True).evaluate()
    assert fwd["read_bytes"] == 2 * n * it + r * f * it  # a, b and h0
    assert fwd["write_bytes"] == n * it  # h
    assert fwd["flops"] == 2 * n  # one FMA per element
    back = linear_scan_cost(r, length, f, it, backward=True).evaluate()
    assert back["read_bytes"] == 3 * n * it  # a, h, dh
    assert back["write_bytes"] == 2 * n * it  # da, db
    assert back["flops"] == 3 * n  # FMA for g, mul for da


def test_scan_costs_reject_bad_sizes_by_name():
    with pytest.raises(ValueError, match="d_state=0"):
        selective_scan_cost(1, 4, 8, 0, 2)
    with pytest.raises(ValueError, match="groups=3 must divide channels=4"):
        selective_scan_cost(1, 4, 8, 2, 2, groups=3)
    with pytest.raises(ValueError, match="length=-1"):
        linear_scan_cost(1, -1, 4, 2)


def test_block_sparse_attention_scales_the_streamed_blocks():
    n, d, it = 1024, 64, 2
    dense = flash_attention_cost(1, 1, 1, n, n, d, d, it, False, 128, 64).evaluate()
    quarter = flash_attention_cost(1, 1, 1, n, n, d, d, it, False, 128, 64,
                                   block_density=0.25).evaluate()
    q_reads = n * d * it
    # K/V rows streamed: 8 query blocks · 1024 rows, a quarter of them visited
    assert quarter["read_bytes"] - q_reads == (dense["read_bytes"] - q_reads) // 4
    assert quarter["write_bytes"] == dense["write_bytes"]  # O and lse whatever the mask
    assert quarter["flops"] == dense["flops"] // 4
    with pytest.raises(ValueError, match="block_density=0"):
        flash_attention_cost(1, 1, 1, n, n, d, d, it, False, block_density=0)
    back = flash_attention_backward_cost(1, 1, 1, n, n, d, d, it, False,
                                         block_density=sympy.Rational(1, 2)).evaluate()
    full = flash_attention_backward_cost(1, 1, 1, n, n, d, d, it, False).evaluate()
    assert back["flops"] * 2 == full["flops"] and back["read_bytes"] < full["read_bytes"]


# ---------------------------------------------------------------------------------------
# op families not covered above


def test_baddbmm_adds_the_bias_once_per_output():
    bias, a, b = torch.randn(3, 8, 32), torch.randn(3, 8, 16), torch.randn(3, 16, 32)
    c = priced(torch.baddbmm, bias, a, b, target=aten.baddbmm.default)
    assert c["flops"] == 2 * 3 * 8 * 32 * 16 + 3 * 8 * 32  # batched 2MNK, then + bias
    assert c["read_bytes"] == 4 * 3 * (8 * 32 + 8 * 16 + 16 * 32)  # bias, A, B
    assert c["write_bytes"] == 4 * 3 * 8 * 32


def test_log_softmax_and_rms_norm():
    c = priced(lambda a: torch.log_softmax(a, -1), x, target=aten.log_softmax.int)
    assert (c["read_bytes"], c["write_bytes"]) == (4 * N, 4 * N)
    assert (c["flops"], c["transcendentals"]) == (5 * N, N)  # max, sub, exp, add, sub log
    w = torch.randn(64)
    gm = trace(lambda a, w: F.rms_norm(a, (64,), w), x, w)
    priced_nodes = [(n, node_cost(n)) for n in gm.graph.nodes if n.op == "call_function"]
    rms = [c for n, c in priced_nodes if "rms_norm" in str(n.target)]
    if rms:  # one fused node: read x and weight, write y; 4 FLOPs an element, 1 rsqrt a row
        c = rms[0].evaluate()
        assert (c["read_bytes"], c["write_bytes"]) == (4 * (N + 64), 4 * N)
        assert (c["flops"], c["transcendentals"]) == (4 * N, 4)
    else:  # decomposed into pow, mean, add, rsqrt, mul, mul: every node priced
        assert all(c is not None for _, c in priced_nodes)
        total = sum(c for _, c in priced_nodes).evaluate()
        assert total["transcendentals"] == 4  # the one rsqrt per row


def test_index_select_and_gather_read_the_indices_and_what_they_pick():
    table = torch.randn(100, 16)
    idx = torch.tensor([3, 5, 7])
    c = priced(lambda t, i: t.index_select(0, i), table, idx, target=aten.index_select.default)
    assert c["read_bytes"] == 8 * 3 + 4 * 3 * 16  # 3 int64 ids, 3 rows of 16 fp32
    assert c["write_bytes"] == 4 * 3 * 16
    where = torch.randint(0, 16, (100, 2))
    c = priced(lambda t, i: t.gather(1, i), table, where, target=aten.gather.default)
    assert c["read_bytes"] == 8 * 200 + 4 * 200  # 200 ids, 200 picked elements
    assert c["write_bytes"] == 4 * 200


def test_stack_reads_every_input_and_writes_them_side_by_side():
    c = priced(lambda a, b: torch.stack([a, b]), x, y, target=aten.stack.default)
    assert (c["read_bytes"], c["write_bytes"], c["flops"]) == (2 * 4 * N, 2 * 4 * N, 0)


def test_unary_with_broadcast_and_type_promotion():
    half = torch.randn(4, 64, dtype=torch.bfloat16)
    c = priced(torch.mul, half, torch.randn(64), target=aten.mul.Tensor)
    assert c["read_bytes"] == 2 * N + 4 * 64  # bf16 x, fp32 row once
    assert c["write_bytes"] == 4 * N  # promoted to fp32
    c = priced(torch.tanh, half, target=aten.tanh.default)
    assert (c["read_bytes"], c["write_bytes"], c["transcendentals"]) == (2 * N, 2 * N, N)


def test_selective_and_linear_scan_ops_are_priced_as_their_kernels():
    from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers the ops)

    bt, dc, length, n, g = 2, 4, 8, 3, 2
    u, delta, z = (torch.randn(bt, dc, length) for _ in range(3))
    a, d = -torch.rand(dc, n), torch.randn(dc)
    b, c = torch.randn(bt, g, length, n), torch.randn(bt, g, length, n)

    def scan(u, delta, a, b, c, d, z):
        return torch.ops.ioaware.selective_scan(u, delta, a, b, c, d, z, None, True, None)

    gm = trace(scan, u, delta, a, b, c, d, z)
    got = node_cost(the(gm, torch.ops.ioaware.selective_scan.default))
    assert got == selective_scan_cost(bt, dc, length, n, 4, groups=g, delta_softplus=True)
    h = torch.randn(3, 16, 5)
    gm = trace(lambda a, b: torch.ops.ioaware.linear_scan(a, b, None, False), h, h.clone())
    got = node_cost(the(gm, torch.ops.ioaware.linear_scan.default)).evaluate()
    assert got == linear_scan_cost(3, 16, 5, 4).evaluate()
    assert (got["read_bytes"], got["write_bytes"]) == (2 * 4 * 240, 4 * 240)  # a, b; h


def test_graph_cost_counts_the_unpriced_nodes():
    gm = trace(lambda a: torch.fft.rfft(a).abs() + torch.fft.rfft(a + 1).abs(), x)
    result = graph_cost(gm)
    total, per_node = result  # still unpacks as before
    assert result.num_unpriced == 2 and result.unpriced_ops() == {"aten.fft_rfft.default": 2}
    assert total == result.total and len(per_node) == len(gm.graph.nodes)


def test_formulas_print_the_expression_beside_its_value():
    b, h, n, d = sympy.symbols("B H N d", positive=True, integer=True)
    c = Cost(read_bytes=4 * b * h * n * d * 2, flops=FLOPS_PER_FMA * b * h * n * n * d)
    f = c.formulas({"B": 2, "H": 4, "N": 128, "d": 64})
    assert f["read_bytes"] == ("8*B*H*N*d", 8 * 2 * 4 * 128 * 64)
    assert f["flops"] == ("2*B*H*N**2*d", 2 * 2 * 4 * 128 * 128 * 64)
    assert f["hbm_bytes"][1] == f["read_bytes"][1]
    assert c.formulas()["read_bytes"][1] is None  # no hints: the value is unknown


# ---------------------------------------------------------------------------------------
# SRAM, L2 and the time model


def test_flash_attention_sram_matches_the_codegen_formula():
    # Q tile 128·64 and two stages of K/V tiles 64·(64 + 64), bf16
    c = flash_attention_cost(1, 1, 1, 1024, 1024, 64, 64, 2, False, 128, 64)
    assert c.evaluate()["sram_bytes"] == 2 * (128 * 64 + 2 * 64 * 128)
    # head dims are padded to a power of two: d = 80 is laid out as 128
    odd = flash_attention_cost(1, 1, 1, 64, 64, 80, 80, 2, False, 64, 32, num_stages=3)
    assert odd.evaluate()["sram_bytes"] == 2 * (64 * 128 + 3 * 32 * 256)
    # a sum of kernels keeps the largest footprint, not the sum
    assert (c + odd).evaluate()["sram_bytes"] == odd.evaluate()["sram_bytes"]


def test_flash_attention_rereads_are_everything_but_the_first_kv_pass():
    n, d, it = 1024, 64, 2
    c = flash_attention_cost(2, 3, 3, n, n, d, d, it, False, 128, 64).evaluate()
    # 8 query blocks each stream all of K/V; the first pass is compulsory
    assert c["l2_reread_bytes"] == 2 * 3 * (8 - 1) * n * (d + d) * it


def test_kv_rereads_hit_l2_while_the_heads_in_flight_fit():
    h100 = PROFILES["h100"]
    small = flash_attention_cost(4, 16, 16, 4096, 4096, 128, 128, 2, False)
    assert l2_hits(small, h100)
    c = ceilings(small, h100, "bf16")
    compulsory = small.evaluate()["hbm_bytes"] - small.evaluate()["l2_reread_bytes"]
    assert c["hbm"] == pytest.approx(compulsory / h100.bandwidth)
    assert bound(small, h100, "bf16") == "compute"  # what the GPU measures
    # 256k keys: one head's K/V (128 MB) cannot stay in L2 between waves of its programs
    huge = flash_attention_cost(1, 1, 1, 262144, 262144, 128, 128, 2, False)
    assert not l2_hits(huge, h100)
    assert ceilings(huge, h100, "bf16")["hbm"] == pytest.approx(
        huge.evaluate()["hbm_bytes"] / h100.bandwidth)


def test_a_measured_l2_rate_is_a_ceiling_of_its_own():
    import dataclasses

    slow_l2 = dataclasses.replace(PROFILES["h100"], l2_bandwidth=1e12)
    c = flash_attention_cost(4, 16, 16, 4096, 4096, 128, 128, 2, False)
    t = ceilings(c, slow_l2, "bf16")
    assert t["l2"] == pytest.approx(c.evaluate()["hbm_bytes"] / 1e12)
    assert modelled_time(c, slow_l2, "bf16") == t["l2"]
    assert bound(c, slow_l2, "bf16") == "memory"


def test_programs_in_flight_are_limited_by_sram_and_registers():
    h100 = PROFILES["h100"]
    assert programs_in_flight(h100, 0) == 132 * 2  # 64 K registers fit two programs
    assert programs_in_flight(h100, 150 * 1024) == 132  # one 150 KB program per SM
    assert programs_in_flight(PROFILES["cpu"], 0) == 16  # at least one per "SM"


# ---------------------------------------------------------------------------------------
# tiles from the SRAM budget


@pytest.mark.parametrize("profile", ["h100", "a100", "cpu"])
@pytest.mark.parametrize("d, itemsize", [(64, 2), (128, 2), (256, 2), (128, 4)])
def test_attention_tiles_fit_the_sram_and_the_registers(profile, d, itemsize):
    p = PROFILES[profile]
    tiles = attention_tile_candidates(p, d, d, itemsize, limit=None)
    assert tiles, "some tile always fits"
    for bm, bn, warps, stages in tiles:
        sram = attention_forward_sram_bytes(bm, bn, stages, d, d, itemsize)
        assert sram <= p.sram_per_block * 200 / 227
        assert bm * (max(d, 16) + bn) <= 168 * 32 * warps  # fp32 acc + scores per thread
        assert bm // warps in (16, 32)
    # the tallest query tile first: it has the least modelled K/V traffic
    assert tiles[0][0] == max(t[0] for t in tiles)
    assert attention_tile_candidates(p, d, d, itemsize)[:3] == tiles[:3]


def test_attention_tiles_on_the_h100_include_the_fa2_shapes():
    h100 = PROFILES["h100"]
    assert attention_tile_candidates(h100, 128, 128, 2)[0] == (128, 128, 8, 2)
    assert (128, 64, 8, 2) in attention_tile_candidates(h100, 128, 128, 2)
    # a smaller SRAM (A100) cannot take the 128 x 128 tile at d = 128: 160 KB
    assert all(t[:2] != (128, 128) for t in attention_tile_candidates(PROFILES["a100"],
                                                                      128, 128, 2, limit=None))
    with pytest.raises(ValueError, match="head_dim=0"):
        attention_tile_candidates(h100, 0, 64, 2)


def test_scan_tiles_fit_and_prefer_more_programs():
    for name in ("h100", "a100", "cpu"):
        p = PROFILES[name]
        for n in (16, 64, 128):
            tiles = scan_chunk_candidates(p, n, 2, limit=None)
            assert tiles
            for block_d, chunk, warps, stages in tiles:
                assert selective_scan_sram_bytes(block_d, chunk, stages, n, 2) <= (
                    p.sram_per_block * 200 / 227)
                assert block_d * n <= 84 * 32 * warps
            assert tiles[0][2] == 1  # one-warp programs: the scan is latency-bound
    # the H100's measured best at N = 16 (docs/kernels.md, double-buffered): 8 channels,
    # 16 steps, 1 warp, 4 states per thread (197 us); then 4 channels, 2 per thread (202)
    assert scan_chunk_candidates(PROFILES["h100"], 16, 2, limit=3) == [
        (8, 16, 1, 2), (8, 16, 1, 3), (4, 16, 1, 2)]
    assert scan_tile(PROFILES["h100"], 16, 2) == {
        "block_d": 8, "chunk": 16, "num_warps": 1, "num_stages": 2}
    assert scan_tile(PROFILES["h100"], sympy.Symbol("n"), 2) is None
    with pytest.raises(ValueError, match="d_state=-1"):
        scan_chunk_candidates(PROFILES["h100"], -1, 2)


def test_the_priced_attention_tile_is_the_best_candidate():
    # H100, d = 128, bf16: 128 x 128 on 8 warps, 2 stages (64 KB of K/V + 32 KB of Q);
    # A100, d = 256, fp32: only a 64-row query tile fits its 163 KB
    assert attention_tile(PROFILES["h100"], 128, 128, 2) == {
        "block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2}
    assert attention_tile(PROFILES["a100"], 256, 256, 4)["block_m"] == 64
    assert attention_tile(PROFILES["h100"], sympy.Symbol("d"), 128, 2) is None


def test_selective_scan_channel_blocks_reread_b_and_c():
    bt, dc, length, n, g, it = 2, 64, 16, 4, 2, 2
    once = selective_scan_cost(bt, dc, length, n, it, groups=g).evaluate()
    tiled = selective_scan_cost(bt, dc, length, n, it, groups=g, block_d=16).evaluate()
    bc = 2 * bt * g * length * n * it  # B and C bytes
    # 32 channels per group in blocks of 16: each group's B and C are read twice
    assert tiled["read_bytes"] == once["read_bytes"] + bc
    assert tiled["l2_reread_bytes"] == bc
    on_chip = selective_scan_cost(bt, dc, length, n, it, groups=g, block_d=16, chunk=8)
    # two stages of a chunk: B, C (8·4 each) and u, delta, z (16·8 each), bf16
    assert on_chip.evaluate()["sram_bytes"] == 2 * 8 * 2 * (2 * 4 + 3 * 16)
    back = selective_scan_cost(bt, dc, length, n, it, backward=True, chunk=4, has_h0=True)
    plain = selective_scan_cost(bt, dc, length, n, it, backward=True)
    state = bt * dc * n * 4  # fp32 [Bt, Dc, N]
    # h0 read, dh0 written; 4 chunk-start states written to scratch and read back
    assert back.evaluate()["read_bytes"] == plain.evaluate()["read_bytes"] + state + 4 * state
    assert back.evaluate()["write_bytes"] == plain.evaluate()["write_bytes"] + state + 4 * state


def test_in_place_ops_cost_what_their_out_of_place_forms_do():
    def fn(a, b):
        a = a.clone()
        a.add_(b)  # read a and b, write a
        a.copy_(b)  # read b only: a's old values are overwritten
        a.fill_(0.0)  # write only
        return a.detach_()  # free

    gm = trace(fn, x, y)
    add = node_cost(the(gm, aten.add_.Tensor)).evaluate()
    assert (add["read_bytes"], add["write_bytes"], add["flops"]) == (2 * 4 * N, 4 * N, N)
    copy = node_cost(the(gm, aten.copy_.default)).evaluate()
    assert (copy["read_bytes"], copy["write_bytes"]) == (4 * N, 4 * N)
    fill = node_cost(the(gm, aten.fill_.Scalar)).evaluate()
    assert (fill["read_bytes"], fill["write_bytes"]) == (0, 4 * N)
    assert node_cost(the(gm, aten.detach_.default)) == Cost()


def test_outer_and_convolution():
    c = priced(torch.outer, torch.randn(8), torch.randn(16), target=aten.outer.default)
    assert (c["read_bytes"], c["write_bytes"], c["flops"]) == (4 * 24, 4 * 128, 128)
    # Mamba's depthwise causal conv: 8 channels, groups 8, kernel 4, padding 3, L = 16
    inp, w, b = torch.randn(2, 8, 16), torch.randn(8, 1, 4), torch.randn(8)
    c = priced(lambda i, w, b: F.conv1d(i, w, b, padding=3, groups=8), inp, w, b,
               target=aten.conv1d.default)
    out = 2 * 8 * 19  # L + 2·3 - 4 + 1 = 19 positions
    assert c["flops"] == 2 * out * 1 * 4 + out  # C_in/groups = 1, kernel 4, then + bias
    assert c["read_bytes"] == 4 * (2 * 8 * 16 + 8 * 4 + 8)  # x, weight, bias
    assert c["write_bytes"] == 4 * out


def test_sort_topk_and_scatter_add():
    c = priced(lambda a: torch.sort(a, -1), x, target=aten.sort.default)
    assert c["write_bytes"] == 4 * N + 8 * N  # values fp32, indices int64
    assert c["flops"] == N * 6  # ceil(log2 64) compares per element
    c = priced(lambda a: torch.topk(a, 2), x, target=aten.topk.default)
    assert (c["read_bytes"], c["write_bytes"], c["flops"]) == (4 * N, (4 + 8) * 4 * 2, N)
    idx = torch.randint(0, 4, (4, 64))
    c = priced(lambda a, i, b: a.scatter_add(0, i, b), x, idx, y,
               target=aten.scatter_add.default)
    assert c["read_bytes"] == 4 * N + 8 * N + 4 * N  # self, index, src
    assert (c["write_bytes"], c["flops"]) == (4 * N, N)  # one add per source element


def test_batch_norm_in_inference_and_pooling():
    bn = torch.nn.BatchNorm1d(8).eval()
    inp = torch.randn(2, 8, 16)
    gm = trace(lambda t: bn(t), inp)
    node = next(n for n in gm.graph.nodes if "batch_norm" in str(n.target))
    c = node_cost(node).evaluate()
    assert c["flops"] == 4 * 2 * 8 * 16  # (x - mean)·rstd·w + b: sub, mul, FMA
    assert c["transcendentals"] == 8  # one rsqrt per channel
    assert c["read_bytes"] >= 4 * (2 * 8 * 16 + 4 * 8)  # x, weight, bias, running stats
    c = priced(lambda t: F.avg_pool1d(t, 4), inp, target=aten.avg_pool1d.default)
    assert (c["read_bytes"], c["write_bytes"]) == (4 * 256, 4 * 64)
    assert c["flops"] == 64 * 4  # one add per window element


def test_losses_read_only_what_they_pick():
    logits, target = torch.randn(4, 10), torch.randint(0, 10, (4,))
    gm = trace(lambda z, t: F.cross_entropy(z, t), logits, target)
    result = graph_cost(gm)
    assert result.num_unpriced == 0, result.unpriced_ops()
    total = result.total.evaluate()
    assert total["transcendentals"] >= 40  # an exp per logit
    assert total["read_bytes"] >= 4 * 40 + 8 * 4  # the logits and the int64 targets


@pytest.mark.parametrize("profile", ["h100", "a100", "cpu"])
@pytest.mark.parametrize("d, itemsize", [(64, 2), (128, 2), (256, 2), (256, 4)])
def test_backward_tiles_fit_the_sram(profile, d, itemsize):
    p = PROFILES[profile]
    budget = p.sram_per_block * 200 / 227
    dkdv = attention_dkdv_tile_candidates(p, d, d, itemsize, limit=None)
    dq = attention_dq_tile_candidates(p, d, d, itemsize, limit=None)
    assert dkdv and dq, "some tile always fits"
    for bm, bn, _, stages in dkdv:  # K_j, V_j resident, Q_i and dO_i streamed
        assert itemsize * 2 * d * (bn + stages * bm) <= budget
    for bm, bn, _, stages in dq:  # Q_i, dO_i resident, K_j and V_j streamed
        assert itemsize * 2 * d * (bm + stages * bn) <= budget
    # fewest re-reads first: the most resident rows
    assert dkdv[0][1] == max(t[1] for t in dkdv) and dq[0][0] == max(t[0] for t in dq)


def test_backward_tiles_on_the_h100_match_the_codegen_shapes():
    h100 = PROFILES["h100"]
    # d = 128 bf16: 128 key rows resident over narrow query tiles (more spills past 32)
    assert attention_dkdv_tile_candidates(h100, 128, 128, 2, limit=2) == [
        (32, 128, 8, 2), (32, 128, 8, 3)]
    assert attention_dq_tile_candidates(h100, 128, 128, 2, limit=1) == [(128, 64, 8, 2)]
    with pytest.raises(ValueError, match="itemsize=0"):
        attention_dq_tile_candidates(h100, 128, 128, 0)


# ---------------------------------------------------------------------------------------
# a matmul past L2, a softmax row per CTA


def _matmul_cost(n: int, itemsize: int = 2) -> Cost:
    spill, working_set = matmul_l2_spill(n, n, n, itemsize, itemsize)
    return Cost(read_bytes=2 * n * n * itemsize, write_bytes=n * n * itemsize,
                flops=2 * n**3, tensor_flops=2 * n**3, l2_spill_bytes=spill,
                l2_working_set=working_set)


def test_a_large_matmul_rereads_its_panels_wave_after_wave():
    # 8192³ bf16 on 132 SMs: 64 x 32 = 2048 tiles of 128 x 256, 16 waves. A wave is
    # g = ceil(sqrt(132·256/128)) = 17 tile rows by c = ceil(132/17) = 8 tile columns:
    # (17·128 + 8·256)·8192·2 = 69,206,016 bytes of panels. 16 waves read 1,107,296,256;
    # A and B (268 MB) miss the 25 MB of usable L2, so the DRAM sees those reads and C:
    # 1,107,296,256 + 134,217,728 = 1,241,513,984 (Nsight measured about 1.39 GB: 0.89).
    c = _matmul_cost(8192)
    assert dram_bytes(c, H100) == 16 * (17 * 128 + 8 * 256) * 8192 * 2 + 8192 * 8192 * 2
    assert dram_bytes(c, H100) == 1_241_513_984
    assert c.evaluate()["hbm_bytes"] == 3 * 8192 * 8192 * 2  # the IO model: one read each
    assert modelled_time(c, H100, "bf16") == pytest.approx(2 * 8192**3 / 790e12)


def test_a_matmul_whose_operands_fit_l2_reads_them_once():
    # 2048³ bf16: A and B are 16.8 MB, under half of the 50 MB L2: every re-read hits
    c = _matmul_cost(2048)
    assert dram_bytes(c, H100) == 3 * 2048 * 2048 * 2
    # on a device with a 20 MB L2 it misses, but its 16 x 8 = 128 tiles are one wave,
    # which reads each panel once: still the compulsory bytes
    small_l2 = dataclasses.replace(H100, l2_bytes=20 * 10**6, measured_l2_bytes=None)
    assert dram_bytes(c, small_l2) == 3 * 2048 * 2048 * 2
    # 4096³: 512 tiles, 4 waves of (17·128 + 8·256) rows and columns of panels
    assert dram_bytes(_matmul_cost(4096), H100) == (
        4 * (17 * 128 + 8 * 256) * 4096 * 2 + 4096 * 4096 * 2)


def test_one_program_per_wave_reads_each_tile_panels():
    # one SM: every one of the 8 tiles of a 512³ fp32 matmul is a wave and reads its A
    # panel (128 x 512) and B panel (512 x 256): 8·(128 + 256)·512·4 = 6,291,456
    spill, _ = matmul_l2_spill(512, 512, 512, 4, 4)
    one_sm = {NUM_SMS: 1}
    assert int(spill.xreplace(one_sm)) == 8 * (128 + 256) * 512 * 4 - 2 * 512 * 512 * 4


def test_the_matmul_rule_prices_tensor_flops_and_the_spill():
    a, b = torch.randn(96, 64), torch.randn(64, 48)
    gm = trace(torch.mm, a, b)
    c = node_cost(the(gm, aten.mm.default))
    assert c.evaluate()["tensor_flops"] == 2 * 96 * 48 * 64
    assert c.l2_working_set == (96 * 64 + 64 * 48) * 4  # A and B
    assert dram_bytes(c, H100) == (96 * 64 + 64 * 48 + 96 * 48) * 4  # fits: compulsory
    x = torch.randn(2, 3, 8, 16)
    c = node_cost(the(trace(lambda t: t.sum(), x), aten.sum.default))
    assert c.tensor_flops == 0  # a reduction runs on the CUDA cores


@pytest.mark.parametrize("cols, dtype, per_sm", [
    (4096, torch.bfloat16, 8), (2048, torch.bfloat16, 16), (8192, torch.float32, 4),
    (600, torch.float64, 8), (16384, torch.float32, 4),
])
def test_long_softmax_rows_run_one_cta_each_in_waves(cols, dtype, per_sm):
    # PyTorch gives rows over 1024 elements or 4 KB one CTA each, of `threads` = the power
    # of two at or above min(cols / ILP, 1024) / 2, ILP = 16 bytes / itemsize; an SM holds
    # 2048 threads: 4096 bf16 -> 256 threads, 8 CTAs; 2048 bf16 -> 128, 16; 8192 fp32 ->
    # 512, 4; 600 fp64 (4.8 KB, ILP 2) -> 256, 8; 16384 fp32 -> 512, 4 (its 64 KB row is
    # not staged in shared memory, so that does not bind)
    x = torch.randn(4, cols, dtype=dtype)
    c = node_cost(the(trace(lambda t: torch.softmax(t, -1), x), aten._softmax.default))
    assert c.exposed_round_trips == sympy.ceiling(4 / (NUM_SMS * per_sm))


def test_short_softmax_rows_share_a_cta_and_expose_nothing():
    x = torch.randn(4, 1024, dtype=torch.bfloat16)  # 2 KB rows: the warp-per-row kernel
    c = node_cost(the(trace(lambda t: torch.softmax(t, -1), x), aten._softmax.default))
    assert c.exposed_round_trips == 0
    assert softmax_row_waves(4, 1024, 4) == 0  # 4 KB fp32 rows too
    assert softmax_row_waves(4, 1024, 8) != 0  # 8 KB float64 rows: one CTA each


def test_exposed_round_trips_cost_the_profiles_memory_latency():
    # the acceptance shape: 65536 rows of 4096 bf16, 256-thread CTAs, 8 per SM: 1056
    # rows in flight, 63 waves. With a 1 us round trip: 537 MB / 3.0 TB/s = 357.9 us, + 63 us
    rows, cols = 65536, 4096
    c = Cost(read_bytes=rows * cols * 2, write_bytes=rows * cols * 2,
             flops=5 * rows * cols, transcendentals=rows * cols,
             exposed_round_trips=softmax_row_waves(rows, cols, 2))
    assert modelled_time(c, H100, "bf16") == pytest.approx(rows * cols * 4 / 3.0e12)
    timed = dataclasses.replace(H100, memory_latency=1e-6)
    assert ceilings(c, timed, "bf16")["latency"] == pytest.approx(63e-6)
    assert modelled_time(c, timed, "bf16") == pytest.approx(rows * cols * 4 / 3.0e12 + 63e-6)
    assert bound(c, timed, "bf16") == "memory"
