"""Properties of the cost model over random sizes (hypothesis).

- Fusion never increases modelled HBM bytes: FlashAttention (with the tiles the model
  picks) against the eager chain, and the fused scans against the eager loops they
  replace, traced with make_fx and priced node by node.
- Before the rewrite, attention traffic is quadratic in N; after it, the K/V traffic is
  N²·(d + dv)·it / block_m with block_m set by the SRAM size M (the paper's Θ(N²d²/M)),
  and linear in N·d once a head's K/V fit in one query tile.
- Block-sparse attention costs no more at a lower block density.
"""

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from ioaware.codegen.attention.price import (
    attention_unfused_cost,
    flash_attention_backward_cost,
    flash_attention_cost,
)
from ioaware.codegen.attention.tiles import (
    attention_forward_sram_bytes,
    attention_tile_candidates,
    largest_block_m,
)
from ioaware.codegen.scan import reference as scan_reference
from ioaware.codegen.scan.price import linear_scan_cost, selective_scan_cost
from ioaware.cost import dram_bytes, graph_cost, l2_hits
from ioaware.hardware import PROFILES

HEAD_DIMS = st.sampled_from([16, 32, 64, 80, 128, 256])
PROFILE = st.sampled_from(["h100", "h200", "a100", "cpu"])


def hbm(cost) -> int:
    return cost.evaluate()["hbm_bytes"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 16384), b=st.integers(1, 4), h=st.integers(1, 16), d=HEAD_DIMS,
       itemsize=st.sampled_from([2, 4]), causal=st.booleans(), upcast=st.booleans(),
       profile=PROFILE)
def test_flash_attention_never_moves_more_than_the_eager_chain(n, b, h, d, itemsize, causal,
                                                               upcast, profile):
    # The tile the model picks for this device. Its K/V re-reads, (T - 1)·N·2d·it with
    # T < N/block_m + 1, stay under the eager chain's 6·N² score elements while
    # d <= 3·block_m: every pick but d = 256 in fp32 on the A100, whose SRAM holds only
    # 64-row tiles. There L2 must serve the re-reads for the promise to hold, and
    # dram_bytes, what DRAM moves, counts only the compulsory bytes when it does.
    p = PROFILES[profile]
    bm, bn, _, stages = attention_tile_candidates(p, d, d, itemsize, limit=1)[0]
    eager = attention_unfused_cost(b, h, n, n, d, d, itemsize, causal,
                                   score_itemsize=4 if upcast else None)
    fused = flash_attention_cost(b, h, h, n, n, d, d, itemsize, causal, bm, bn,
                                 num_stages=stages)
    if d <= 3 * bm:
        assert hbm(fused) <= hbm(eager), (bm, bn)
        assert dram_bytes(fused, p) <= dram_bytes(eager, p) <= hbm(eager)
    else:
        assert (profile, d, itemsize, bm) == ("a100", 256, 4, 64)
        if l2_hits(fused, p):
            assert dram_bytes(fused, p) <= dram_bytes(eager, p)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4096), d=HEAD_DIMS, causal=st.booleans(),
       lo=st.integers(1, 100), hi=st.integers(1, 100))
def test_block_sparse_cost_is_monotone_in_density(n, d, causal, lo, hi):
    lo, hi = sorted((lo, hi))
    for price in (flash_attention_cost, flash_attention_backward_cost):
        sparse = price(2, 4, 2, n, n, d, d, 2, causal, block_density=sympy.Rational(lo, 100))
        dense = price(2, 4, 2, n, n, d, d, 2, causal, block_density=sympy.Rational(hi, 100))
        s, t = sparse.evaluate(), dense.evaluate()
        assert s["hbm_bytes"] <= t["hbm_bytes"] and s["flops"] <= t["flops"]
        assert s["l2_reread_bytes"] <= t["l2_reread_bytes"]
    full = flash_attention_cost(2, 4, 2, n, n, d, d, 2, causal)
    assert hbm(flash_attention_cost(2, 4, 2, n, n, d, d, 2, causal, block_density=1)) == hbm(full)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(1, 16), d=HEAD_DIMS, causal=st.booleans(),
       upcast=st.booleans(), n=st.integers(1, 10000), step=st.integers(1, 1000))
def test_eager_attention_traffic_is_quadratic_in_n(b, h, d, causal, upcast, n, step):
    # f(N) = a·N² + c·N: the second difference is 2·a·step², the same at every N, > 0
    def f(m):
        return hbm(attention_unfused_cost(b, h, m, m, d, d, 2, causal,
                                          score_itemsize=4 if upcast else None))

    second = f(n + 2 * step) - 2 * f(n + step) + f(n)
    assert second > 0
    assert second == f(2 * step + 1) - 2 * f(step + 1) + f(1)


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 64), d=st.sampled_from([32, 64, 128]),
       sram_kb=st.integers(64, 1024), itemsize=st.sampled_from([2, 4]))
def test_flash_kv_traffic_is_n_squared_d_squared_over_m(blocks, d, sram_kb, itemsize):
    m = sram_kb * 1024
    bm = largest_block_m(m, d, d, itemsize, max_block_m=1024)
    n = blocks * 1024  # a multiple of every tile height
    c = flash_attention_cost(1, 1, 1, n, n, d, d, itemsize, False, bm, 16).evaluate()
    kv = c["read_bytes"] - n * d * itemsize  # all but the one read of Q
    assert kv * bm == n * n * 2 * d * itemsize  # N²·(d + dv)·it / block_m, exactly
    # block_m is the tallest power of two that fits, it·(bm·d + 2·16·2d) <= M <
    # it·(2·bm·d + 2·16·2d), so kv·M / (N²·d²·it²) = 2·M / (bm·d·it) lies in
    # [2·(1 + 64/bm), 2·(2 + 64/bm)): constant factors once the query tile outgrows the
    # K/V stages (the paper's Θ(N²d²/M))
    assert attention_forward_sram_bytes(bm, 16, 2, d, d, itemsize) <= m
    if bm < 1024:
        assert attention_forward_sram_bytes(2 * bm, 16, 2, d, d, itemsize) > m
        ratio = kv * m / (n * n * d * d * itemsize * itemsize)
        assert 2 * (1 + 64 / bm) <= ratio < 2 * (2 + 64 / bm)
        if bm >= 64:
            assert 2 <= ratio < 6


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 256), d=HEAD_DIMS, b=st.integers(1, 3), h=st.integers(1, 4),
       causal=st.booleans())
def test_flash_traffic_is_linear_in_n_d_when_one_tile_holds_a_head(n, d, b, h, causal):
    # block_m >= N: one query tile per head, K/V streamed once; every byte is a
    # compulsory one (Q, K, V read, O written, lse 4 bytes a row)
    c = flash_attention_cost(b, h, h, n, n, d, d, 2, causal, 256, 16).evaluate()
    assert c["read_bytes"] == b * h * n * 3 * d * 2
    assert c["write_bytes"] == b * h * n * (d * 2 + 4)
    assert c["l2_reread_bytes"] == 0


def eager_selective_scan(u, delta, a, b, c, d, z):
    return scan_reference.selective_scan(u, delta, a, b, c, d, z, None, True, None)


@settings(max_examples=8, deadline=None)
@given(bt=st.integers(1, 3), dc=st.sampled_from([2, 4]), length=st.integers(1, 6),
       n=st.integers(1, 8), grouped=st.booleans(), has_d=st.booleans(), has_z=st.booleans())
def test_the_fused_selective_scan_moves_no_more_than_the_eager_loop(bt, dc, length, n,
                                                                    grouped, has_d, has_z):
    g = dc if grouped else 1
    u, delta, z = (torch.randn(bt, dc, length) for _ in range(3))
    a, d = -torch.rand(dc, n), torch.randn(dc)
    b, c = torch.randn(bt, g, length, n), torch.randn(bt, g, length, n)
    d, z = (d if has_d else None), (z if has_z else None)
    gm = make_fx(lambda *t: eager_selective_scan(*t, d, z))(u, delta, a, b, c)
    eager = graph_cost(gm)
    assert eager.num_unpriced == 0, eager.unpriced_ops()
    fused = selective_scan_cost(bt, dc, length, n, 4, groups=g, has_D=has_d, has_z=has_z,
                                delta_softplus=True)
    assert hbm(fused) <= hbm(eager.total)


def eager_linear_scan(a, b):
    """The loop as models write it (and the scan pass matches it): h starts at zero."""
    h, states = torch.zeros_like(b[:, 0]), []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    return torch.stack(states, 1)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 4), length=st.integers(1, 12), features=st.integers(1, 16))
def test_the_fused_linear_scan_moves_no_more_than_the_eager_loop(rows, length, features):
    a, b = torch.rand(rows, length, features), torch.randn(rows, length, features)
    eager = graph_cost(make_fx(eager_linear_scan)(a, b))
    assert eager.num_unpriced == 0, eager.unpriced_ops()
    fused = linear_scan_cost(rows, length, features, 4)
    assert hbm(fused) <= hbm(eager.total)
    # the loop writes every state once, as the kernel does, plus the stack's copy
    assert eager.total.evaluate()["write_bytes"] >= 2 * rows * length * features * 4


def test_largest_block_m_rejects_an_sram_too_small_for_any_tile():
    with pytest.raises(ValueError, match="holds no 16-row tile"):
        largest_block_m(1024, 128, 128, 2)
