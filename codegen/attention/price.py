"""The attention family's price: the closed forms of the eager attention chain and of
the FlashAttention kernels (forward and backward, causal and block-sparse), and the rules
that price the family's ops `ioaware::flash_attention` and `_backward` with them,
registered with the cost model on import as the ops' fakes are registered with torch.

The passes price a region before (its nodes, or `attention_unfused_cost`) and after
(`flash_attention_cost` at the tile codegen/attention/tiles.py picks from a profile's
SRAM). Derivations: docs/cost-model.md, "Attention, unfused" and "Attention, fused".
"""

from __future__ import annotations

import sympy
import torch
from torch import fx

from ioaware.codegen.attention.tiles import attention_forward_sram_bytes, padded_head_dim
from ioaware.cost import (
    Cost,
    Size,
    ceil_div,
    register_price,
    reread_working_set,
    sym,
)
from ioaware.cost.nodes import (
    distinct_numel,
    heads_and_batch,
    meta_val,
    numel,
    schema_arg,
    storage_root,
)

# Default FlashAttention tiles when an op does not say which it uses (FA2's forward tile
# for head_dim 128 on A100/H100: 128 query rows x 64 key rows).
DEFAULT_BLOCK_M = 128
DEFAULT_BLOCK_N = 64
LSE_ITEMSIZE = 4  # lse and delta rows are float32


def attention_unfused_cost(
    B: Size, H: Size, Nq: Size, Nk: Size, D: Size, Dv: Size, itemsize: int,
    causal: bool, score_itemsize: int | None = None,
) -> Cost:
    """The eager chain QKᵀ → scale → mask → softmax → PV, every Nq×Nk tensor through HBM.

    Per (batch, head), with S = Nq·Nk score elements, `it` = itemsize of Q/K/V/O and
    `st` = score_itemsize (the dtype scores are kept in; defaults to it):

        S  = Q @ Kᵀ          read Q, K (Nq·D + Nk·D)·it   write S·it     2·S·D FLOPs
        S  = S.float()       read S·it                    write S·st     (only if st != it)
        S  = S * scale       read S·st                    write S·st     S FLOPs
        S  = S.masked_fill   read S·st + mask Nq·Nk bool  write S·st     S FLOPs (causal only)
        P  = softmax(S)      read S·st                    write S·st     5·S FLOPs, S exps
        P  = P.to(dtype)     read S·st                    write S·it     (only if st != it)
        O  = P @ V           read P S·it, V Nk·Dv·it      write Nq·Dv·it 2·S·Dv FLOPs

    The causal mask is one bool Nq×Nk buffer broadcast over batch and heads, so it is
    read once per masked_fill, not per head. Eager computes every masked score anyway.
    """
    B, H, Nq, Nk, D, Dv = (sym(x) for x in (B, H, Nq, Nk, D, Dv))
    it = sympy.Integer(itemsize)
    st = sympy.Integer(score_itemsize or itemsize)
    bh = B * H
    s = bh * Nq * Nk  # score elements over all heads
    cost = Cost(read_bytes=bh * (Nq + Nk) * D * it, write_bytes=s * it, flops=2 * s * D,
                tensor_flops=2 * s * D)
    if st != it:
        cost += Cost(read_bytes=s * it, write_bytes=s * st)
    cost += Cost(read_bytes=s * st, write_bytes=s * st, flops=s)
    if causal:
        cost += Cost(read_bytes=s * st + Nq * Nk, write_bytes=s * st, flops=s)
    cost += Cost(read_bytes=s * st, write_bytes=s * st, flops=5 * s, transcendentals=s)
    if st != it:
        cost += Cost(read_bytes=s * st, write_bytes=s * it)
    cost += Cost(
        read_bytes=s * it + bh * Nk * Dv * it, write_bytes=bh * Nq * Dv * it,
        flops=2 * s * Dv, tensor_flops=2 * s * Dv,
    )
    return cost


def _check_tiles(block_m: int, block_n: int) -> None:
    if block_m <= 0 or block_n <= 0 or (block_m % block_n and block_n % block_m):
        raise ValueError(
            f"{block_m=} and {block_n=} must be positive and one must divide the other"
        )


def _sum_ceil_multiples(F: sympy.Expr, k: int) -> sympy.Expr:
    """Σ_{i=1..F} ceil(i / k), with F = q·k + r: k·q(q+1)/2 + r·(q+1)."""
    q = sympy.floor(F / k)
    r = F - k * q
    return k * q * (q + 1) / 2 + r * (q + 1)


def causal_forward_blocks(
    Nq: Size, Nk: Size, block_m: int, block_n: int
) -> tuple[sympy.Expr, sympy.Expr]:
    """(key rows streamed, score pairs computed) by a causal forward, per (batch, head).

    Query block i (1-based, rows (i-1)·bm .. i·bm-1, top-left aligned: key j is visible
    to row r iff j <= r) loops over key blocks up to its diagonal, so it loads
        c_i = min(Nk, ceil(i·bm / bn)·bn)
    key rows (whole blocks, clipped to Nk). With T = ceil(Nq / bm):
      bn | bm:  c_i = min(Nk, i·bm); with F = min(T, floor(Nk/bm)) blocks below the cap,
                Σ c_i = bm·F(F+1)/2 + (T - F)·Nk
      bm | bn:  c_i = min(Nk, ceil(i/k)·bn), k = bn/bm; F = min(T, k·floor(Nk/bn)),
                Σ c_i = bn·Σ_{i<=F} ceil(i/k) + (T - F)·Nk
    Pairs: every visited block is computed whole (the diagonal is masked after the
    matmul), over the real query rows: bm·Σ c_i - (T·bm - Nq)·c_T.
    """
    _check_tiles(block_m, block_n)
    Nq, Nk = sym(Nq), sym(Nk)
    T = ceil_div(Nq, block_m)
    # With Nq = Nk the cap is never below T (floor <= ceil); saying so keeps the
    # expression readable, since sympy cannot prove it for a symbol.
    if block_m % block_n == 0:
        F = sympy.floor(Nk / block_m)
        F = F if Nq == Nk else sympy.Min(T, F)
        key_rows = block_m * F * (F + 1) / 2 + (T - F) * Nk
    else:
        k = block_n // block_m
        F = k * sympy.floor(Nk / block_n)
        F = F if Nq == Nk else sympy.Min(T, F)
        key_rows = block_n * _sum_ceil_multiples(F, k) + (T - F) * Nk
    last = sympy.Min(Nk, ceil_div(T * block_m, block_n) * block_n)
    pairs = block_m * key_rows - (T * block_m - Nq) * last
    return key_rows, pairs


def causal_backward_query_rows(Nq: Size, Nk: Size, block_m: int, block_n: int) -> sympy.Expr:
    """Query rows the dK/dV pass streams, summed over key blocks, per (batch, head).

    Key block j (0-based, keys j·bn ..) is seen by query rows r >= j·bn; the pass starts
    at the query block holding row j·bn, so it reads max(0, Nq - floor(j·bn/bm)·bm) rows.
    With Tn = ceil(Nk/bn), k = max(bm/bn, 1), and G = min(Tn, k·ceil(Nq/max(bm, bn)))
    key blocks that see any row:  Σ = G·Nq - step·Σ_{j<G} floor(j/k)
    where step = max(bm, bn) (bm | bn: k = 1, each key block starts bn rows later).
    """
    _check_tiles(block_m, block_n)
    Nq, Nk = sym(Nq), sym(Nk)
    Tn = ceil_div(Nk, block_n)
    k = max(block_m // block_n, 1)
    step = max(block_m, block_n)
    G = sympy.Min(Tn, k * ceil_div(Nq, step))
    q = sympy.floor(G / k)
    r = G - k * q
    return G * Nq - step * (k * q * (q - 1) / 2 + r * q)


def _forward_blocks(Nq: sympy.Expr, Nk: sympy.Expr, causal: bool, block_m: int,
                    block_n: int) -> tuple[sympy.Expr, sympy.Expr]:
    """(key rows streamed, score pairs computed) per (batch, head) by the forward, and by
    the backward's dQ pass, which streams K and V as the forward does: every query block
    reads all of K and V, ceil(Nq / block_m)·Nk rows and Nq·Nk pairs, or for causal the
    whole blocks up to each diagonal (`causal_forward_blocks`)."""
    if causal:
        return causal_forward_blocks(Nq, Nk, block_m, block_n)
    _check_tiles(block_m, block_n)
    return ceil_div(Nq, block_m) * Nk, Nq * Nk


def _check_heads(Hq: sympy.Expr, Hkv: sympy.Expr) -> None:
    if Hq.is_Integer and Hkv.is_Integer and int(Hq) % int(Hkv):
        raise ValueError(f"Hq={Hq} must be a multiple of Hkv={Hkv}")


def _block_density(block_density: float | sympy.Expr) -> sympy.Expr:
    """The density as an exact sympy number (0.25 -> 1/4), checked to lie in (0, 1]."""
    if isinstance(block_density, float):
        density = sympy.Rational(str(block_density))
    else:
        density = sympy.sympify(block_density)
    if density.is_number and not 0 < density <= 1:
        raise ValueError(f"block_density={block_density!r} must be in (0, 1]")
    return density


def flash_attention_cost(
    B: Size, Hq: Size, Hkv: Size, Nq: Size, Nk: Size, D: Size, Dv: Size, itemsize: int,
    causal: bool, block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N,
    block_density: float | sympy.Expr = 1.0, num_stages: int = 2,
    operand_itemsize: tuple[int, int, int] | None = None, qk_flop_weight: float = 1.0,
) -> Cost:
    """FlashAttention forward: one program per (batch, query head, query block).

    Per (batch, query head), T = ceil(Nq / block_m) query blocks:
        load Q block once                   read Nq·D·it
        stream K, V blocks through SRAM     read R·(D + Dv)·it    R = key rows loaded
        store O and the row log-sum-exp     write Nq·Dv·it + Nq·4
    Non-causal: R = T·Nk (every query block reads all of K and V: FlashAttention's
    Θ(N²·d / block_m), i.e. Θ(N²d²/M) with the real tile). Causal: R counts whole key
    blocks up to each diagonal (`causal_forward_blocks`), about half.
    Heads of a GQA group each stream their own copy of K/V (reuse between them is left
    to L2, below), so Hkv is only checked here.

    FLOPs: 2·(D + Dv) per computed score pair (QKᵀ and PV; 4·Nq·Nk·D when Dv = D), over
    Nq·Nk pairs, or for causal the pairs of every visited block. Softmax's few FLOPs per
    score are left out, as FlashAttention's papers count; its one exp per score is in
    `transcendentals` (the running-max rescale, one per row per key block, is not).

    Block-sparse: `block_density` is the fraction of the blocks above (all of them, or
    those up to the diagonal for causal) that the kernel visits; key rows loaded and
    score pairs computed both scale by it, Q, O and lse do not.

    On chip, per program (`attention_forward_sram_bytes`): the Q tile and `num_stages`
    K/V tiles, it·(block_m·d + num_stages·block_n·(d + dv)) at padded head dims.
    L2: every K/V row past the first read of it is a re-read,
        l2_reread_bytes = B·Hq·max(0, R - Nk)·(D + Dv)·it        ((T - 1)·Nk rows dense)
    served by L2 while what they re-read stays there (`reread_working_set`).

    FP8 operands (AttentionSpec.fp8): `operand_itemsize` = (q, k, v) bytes an element
    (1 for each FP8 one; `itemsize` stays O's), so Q reads Nq·D·it_q and each key row
    D·it_k + Dv·it_v. QKᵀ on FP8 operands runs at the FP8 tensor rate: the roofline
    prices every tensor FLOP at the output dtype's rate, so its 2·pairs·D FLOPs count
    `qk_flop_weight` = peak(dtype) / peak(float8_e4m3fn) each (0.5 on an H100) in
    `flops` and `tensor_flops`: FLOPs at the dtype's rate, not a count of operations.
    The on-chip tiles are priced at `itemsize` (an FP8 tile is smaller: conservative).
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = (sym(x) for x in (B, Hq, Hkv, Nq, Nk, D, Dv))
    _check_heads(Hq, Hkv)
    density = _block_density(block_density)
    it = sympy.Integer(itemsize)
    it_q, it_k, it_v = (sympy.Integer(x) for x in operand_itemsize or (itemsize,) * 3)
    key_row = D * it_k + Dv * it_v  # bytes of one K row and one V row
    key_rows, pairs = _forward_blocks(Nq, Nk, causal, block_m, block_n)
    key_rows, pairs = density * key_rows, density * pairs
    bh = B * Hq
    dense_rows = not causal and density == 1
    rereads = key_rows - Nk if dense_rows else sympy.Max(0, key_rows - Nk)
    weight = sympy.S.One if qk_flop_weight == 1 else sympy.Float(qk_flop_weight)
    matmul_flops = bh * 2 * pairs * (D * weight + Dv)
    return Cost(
        read_bytes=bh * (Nq * D * it_q + key_rows * key_row),
        write_bytes=bh * (Nq * Dv * it + Nq * LSE_ITEMSIZE),
        flops=matmul_flops,
        tensor_flops=matmul_flops,
        transcendentals=bh * pairs,
        sram_bytes=attention_forward_sram_bytes(block_m, block_n, num_stages, D, Dv, itemsize),
        l2_reread_bytes=bh * rereads * key_row,
        l2_working_set=reread_working_set(
            bh, ceil_div(Nq, block_m), Nk * key_row, num_stages * block_n * key_row,
        ),
    )


def flash_attention_backward_cost(
    B: Size, Hq: Size, Hkv: Size, Nq: Size, Nk: Size, D: Size, Dv: Size, itemsize: int,
    causal: bool, block_m: int = DEFAULT_BLOCK_M, block_n: int = DEFAULT_BLOCK_N,
    block_density: float | sympy.Expr = 1.0, num_stages: int = 2,
) -> Cost:
    """FlashAttention-2 backward as three passes (the Triton tutorial's structure).

    Per batch, with it = itemsize, lse/delta rows float32 (4 bytes):
      1. delta = rowsum(dO·O)    read O, dO: 2·Hq·Nq·Dv·it            write Hq·Nq·4
      2. dK, dV: one program per (kv head, key block) keeps K_j, V_j in SRAM and loops
         over the group's query heads and their query blocks:
           read K, V once: Hkv·Nk·(D+Dv)·it;  read Q, dO: Hq·Rq·(D+Dv)·it;
           read lse, delta: Hq·Rq·8;          write dK, dV: Hkv·Nk·(D+Dv)·it
         Rq = query rows streamed: ceil(Nk/block_n)·Nq, or for causal
         `causal_backward_query_rows` (only blocks at or below each diagonal).
      3. dQ: one program per (query head, query block) keeps Q_i, dO_i, lse_i, delta_i and
         streams K, V as the forward does:
           read Q, dO: Hq·Nq·(D+Dv)·it + lse, delta Hq·Nq·8;  read K, V: Hq·R·(D+Dv)·it;
           write dQ: Hq·Nq·D·it            (R as in flash_attention_cost)
    FLOPs: FlashAttention-2's five matmuls per score pair (S = QKᵀ, dP = dO·Vᵀ, dV += Pᵀ·dO,
    dK += dSᵀ·Q, dQ += dS·K): 2·(3·D + 2·Dv) per pair, which is 2.5x the forward when
    Dv = D, over the forward's pairs. The dQ pass's recomputation of S and dP is not
    counted, matching how backward TFLOP/s are reported. One exp per pair (P = exp(S-lse)).
    Block-sparse: R, Rq and the pairs scale by `block_density`, as in the forward.
    On chip: the larger of the two passes' tiles, it·(d + dv)·(resident + num_stages·
    streamed) rows (dK/dV: block_n resident, block_m streamed; dQ: the other way).
    L2: the dQ pass re-reads K/V as the forward does, the dK/dV pass re-reads Q, dO, lse
    and delta, Hq·max(0, Rq - Nq) rows; the passes run one after the other, so the
    working set is the larger of theirs (`reread_working_set`, a kv head for the dK/dV pass).
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = (sym(x) for x in (B, Hq, Hkv, Nq, Nk, D, Dv))
    _check_heads(Hq, Hkv)
    density = _block_density(block_density)
    it = sympy.Integer(itemsize)
    key_rows, pairs = _forward_blocks(Nq, Nk, causal, block_m, block_n)
    if causal:
        query_rows = causal_backward_query_rows(Nq, Nk, block_m, block_n)
    else:
        query_rows = ceil_div(Nk, block_n) * Nq
    key_rows, pairs, query_rows = (density * x for x in (key_rows, pairs, query_rows))
    row_stats = 2 * LSE_ITEMSIZE  # lse and delta
    kv = Hkv * Nk * (D + Dv) * it
    preprocess = Cost(read_bytes=2 * Hq * Nq * Dv * it, write_bytes=Hq * Nq * LSE_ITEMSIZE)
    dkdv = Cost(
        read_bytes=kv + Hq * query_rows * ((D + Dv) * it + row_stats), write_bytes=kv
    )
    dq = Cost(
        read_bytes=Hq * Nq * ((D + Dv) * it + row_stats) + Hq * key_rows * (D + Dv) * it,
        write_bytes=Hq * Nq * D * it,
    )
    matmuls = Hq * 2 * pairs * (3 * D + 2 * Dv)
    compute = Cost(flops=matmuls, tensor_flops=matmuls, transcendentals=Hq * pairs)
    dense_rows = not causal and density == 1
    kv_rereads = key_rows - Nk if dense_rows else sympy.Max(0, key_rows - Nk)
    q_rereads = query_rows - Nq if dense_rows else sympy.Max(0, query_rows - Nq)
    q_row_bytes = (D + Dv) * it + row_stats
    rereads = Hq * (kv_rereads * (D + Dv) * it + q_rereads * q_row_bytes)
    width = padded_head_dim(D) + padded_head_dim(Dv)
    sram = itemsize * width * sympy.Max(block_n + num_stages * block_m,
                                        block_m + num_stages * block_n)
    working_set = sympy.Max(  # the dQ pass re-reads K/V, the dK/dV pass Q, dO, lse, delta
        reread_working_set(B * Hq, ceil_div(Nq, block_m), Nk * (D + Dv) * it,
                        num_stages * block_n * (D + Dv) * it),
        reread_working_set(B * Hkv, ceil_div(Nk, block_n), Nq * q_row_bytes,
                        num_stages * block_m * q_row_bytes),
    )
    on_chip = Cost(sram_bytes=sram, l2_working_set=working_set)
    return B * (preprocess + dkdv + dq + compute + Cost(l2_reread_bytes=rereads)) + on_chip

# --------------------------------------------------------------------------------------
# The family's ops, priced as its kernels.


@register_price("flash_attention", "flash_attention_forward", namespace="ioaware")
def _ioaware_flash_attention(node: fx.Node) -> Cost:
    """ioaware.flash_attention(q, k, v, scale, causal) -> (out, lse)."""
    q, k, v = (meta_val(node.args[i]) for i in range(3))
    batch, hq = heads_and_batch(q)
    _, hkv = heads_and_batch(k)
    causal = bool(schema_arg(node, "causal", node.args[4] if len(node.args) > 4 else False))
    return flash_attention_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
        block_m=node.kwargs.get("block_m", DEFAULT_BLOCK_M),
        block_n=node.kwargs.get("block_n", DEFAULT_BLOCK_N),
    )


@register_price("flash_attention_backward", namespace="ioaware")
def _ioaware_flash_attention_backward(node: fx.Node) -> Cost:
    """ioaware.flash_attention_backward(dout, q, k, v, out, lse, scale, causal, dlse)
    -> (dq, dk, dv); an incoming dlse (fp32, one per query row) is read once more."""
    q, k, v = (meta_val(node.args[i]) for i in (1, 2, 3))
    batch, hq = heads_and_batch(q)
    _, hkv = heads_and_batch(k)
    causal = bool(schema_arg(node, "causal", node.args[7] if len(node.args) > 7 else False))
    cost = flash_attention_backward_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
        block_m=node.kwargs.get("block_m", DEFAULT_BLOCK_M),
        block_n=node.kwargs.get("block_n", DEFAULT_BLOCK_N),
    )
    dlse = schema_arg(node, "dlse")
    if isinstance(dlse, fx.Node) and isinstance(meta_val(dlse), torch.Tensor):
        cost += Cost(read_bytes=numel(meta_val(dlse)) * LSE_ITEMSIZE)
    return cost


# PyTorch's fused SDPA runs FlashAttention: it costs what the kernel's closed form says.
@register_price(
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)
def _sdpa(node: fx.Node) -> Cost | None:
    """The fused kernel's traffic (flash_attention_cost with the default tiles), plus one
    read of attn_mask/attn_bias at its own (broadcast) size when there is one. Registered
    by this family, so SDPA is unpriced until the family is imported."""
    q, k, v = (meta_val(node.args[i]) for i in range(3))
    batch, hq = heads_and_batch(q)
    _, hkv = heads_and_batch(k)
    causal = bool(schema_arg(node, "is_causal", False))
    cost = flash_attention_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
    )
    mask = schema_arg(node, "attn_mask")
    if mask is None:
        mask = schema_arg(node, "attn_bias")
    if isinstance(mask, fx.Node) and isinstance(meta_val(mask), torch.Tensor):
        m = meta_val(storage_root(mask))
        cost += Cost(read_bytes=distinct_numel(m) * m.dtype.itemsize)
    return cost
