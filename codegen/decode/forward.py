"""Render the split-KV decode kernels (FlashDecoding) for a DecodeSpec.

`render_decode(spec)` returns the text of a module with the `@triton.jit` kernels below
and a launcher `forward(q, k, v, out, lse, inputs, splits, config, block_table=None,
n_k=None)`:

    _decode_split  grid (S, B·Hkv): program (s, b, g) holds the GROUP·Nq query rows that
                   read KV head g (all query heads of the GQA group, packed into one
                   tile: K/V read once per group) and folds keys [s·C, (s+1)·C) into
                   (acc, l, m) by the online softmax (FlashAttention-2, Algorithm 1),
                   writing the partial o_s = acc / l with its m_s and l_s (fp32, log2);
                   with one split it writes out and lse itself (no merge launch)
    _decode_merge  grid (B·Hkv,): with m = max_s m_s, w_s = 2^(m_s − m)·l_s:
                   out = Σ_s w_s o_s / Σ_s w_s, lse = (m + log2 Σ_s w_s)·ln 2 (the
                   log-sum-exp merge of FlashDecoding), then the mask semantics of
                   rows that saw no visible key, as the prefill kernels give them;
                   paged, one more program reduces the split programs' out-of-pool
                   flags to one scalar (_pool_check; `_pool_check_kernel` when S = 1)

Masks and score modifications are the attention family's: the AttentionSpec's
predicate and score expressions printed by codegen/expr.py, evaluated per element
with h and q_idx the packed row's own. Where the Spec masks anything, a key tile with no
visible element is skipped before K or V is loaded (sliding windows, padding and the
unused pages of a paged cache cost no traffic). Paged: key n of batch b is read at
slot n % PAGE of page block_table[b, n // PAGE]; a table entry outside [0, num_pages)
is never dereferenced (the key reads as masked-out zeros, the launcher returns the
flag, and the op asserts it).

IO per (batch, KV head): K and V once, Nk·(d + dv) elements; Q and out once; fp32
partials S·R·(dv + 1) each way (price.py). The floor is reading K and V once.
"""

from __future__ import annotations

import string

from ioaware.codegen.attention.header import (
    GENERAL_IMPORTS,
    drops_masked,
    general_substitutions,
)
from ioaware.hardware import DeviceProfile

from ..render import module_preamble
from .spec import DecodeSpec

_DECODE_TEMPLATE = string.Template('''\
${preamble}

${spec_header}
${general_header}
PAGED = tl.constexpr(${paged})
# skip key tiles the mask empties before loading them (masked logits drop out)
SKIP_TILES = tl.constexpr(${skip_tiles})
LN2 = tl.constexpr(0.6931471805599453)
INTERPRET = ${interpret}
TUNE_MIN_SCORES = 0


${general_functions}


@triton.jit
def _pages(BT, b, cols, stride_btb, stride_btn, PAGE: tl.constexpr, N_PAGES, N_K):
    """(page, slot, ok, bad) of key rows `cols` of batch b: row n is slot `slot` (int32)
    of page `page` (int64), each [len(cols)]; ok: read it (n < N_K and, paged, its page
    in the pool); bad: n < N_K but its table entry is outside [0, N_PAGES) (never
    dereferenced).
    Dense: page b, slot n. Paged: page block_table[b, n // PAGE], slot n % PAGE, with
    PAGE a constexpr (a shift and a mask for powers of two, not a division per row)."""
    ok = cols < N_K
    if PAGED:
        page = tl.load(BT + b * stride_btb + (cols // PAGE).to(tl.int64) * stride_btn,
                       mask=ok, other=0).to(tl.int64)
        inside = (page >= 0) & (page < N_PAGES)
        bad = ok & ~inside
        ok = ok & inside
        return tl.where(ok, page, 0), cols % PAGE, ok, bad
    return b + 0 * cols.to(tl.int64), cols, ok, cols < 0


@triton.jit
def _load_kv(X, page, slot, ok, h_kv, offs, stride_xb, stride_xh, stride_xn, stride_xd,
             N_COLS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """Key (or value) rows at (page, slot) of KV head h_kv: [len(page), len(offs)], zeros
    where not ok. Dense: X [B, Hkv, Nk, d] (strides b, h, n, d). Paged: X [num_pages,
    PAGE, Hkv, d] (strides page, h, slot, d)."""
    if PAGED:  # slot < PAGE: its offset stays in int32, only the page's is int64
        row = page * stride_xb + slot * stride_xn
    else:
        row = page * stride_xb + slot.to(tl.int64) * stride_xn
    ptrs = X + row[:, None] + h_kv * stride_xh + offs[None, :] * stride_xd
    if EVEN_COLS:
        return tl.load(ptrs, mask=ok[:, None], other=0.0)
    return tl.load(ptrs, mask=ok[:, None] & (offs[None, :] < N_COLS), other=0.0)


@triton.jit
def _finish(out, m, l, Out, Lse, V, BT, b, h_kv, rows, offs_dv,
            stride_ob, stride_oh, stride_om, stride_od,
            stride_vb, stride_vh, stride_vn, stride_vd, stride_btb, stride_btn,
            H_Q, GROUP, N_Q, N_K, N_PAGES, BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    """Store out [B, Hq, Nq, dv] and lse [B, Hq, Nq] = (m + log2 l)·ln 2 of the packed
    rows, rows with no visible key (l = 0) and tie rows as the prefill kernels give them."""
    empty = l == 0.0
    lse = (m + tl.math.log2(tl.where(empty, 1.0, l))) * LN2
    lse = tl.where(empty, float("-inf"), lse)
    if TIE_ROWS:
        tie = (m == MIN_Z) & (l > 0.0)  # every visible logit at fp32's minimum: count kept
        lse = tl.where(tie, TIE_BASE + tl.minimum(l, TIE_MAX_COUNT) * TIE_STEP, lse)
    if FIX_EMPTY:
        # fill / add semantics (UNIFORM_EMPTY): eager's softmax over every key's equal
        # masked logit is the mean of V; its lse is mask_fill + ln Nk (prefill's form)
        if _any(empty):
            offs_n = tl.arange(0, BLOCK_N)
            mean = tl.full([DV_PAD], 0.0, dtype=tl.float32)
            for start_n in range(0, N_K, BLOCK_N):
                page, slot, ok, _ = _pages(BT, b, start_n + offs_n, stride_btb, stride_btn,
                                           PAGE, N_PAGES, N_K)
                v = _load_kv(V, page, slot, ok, h_kv, offs_dv, stride_vb, stride_vh,
                             stride_vn, stride_vd, HEAD_DIM_V, EVEN_DV)
                mean += _sum_axis(v.to(tl.float32), 0)
            mean = mean / N_K
            out = tl.where(empty[:, None], mean[None, :], out)
            lse = tl.where(empty, tl.math.log2(N_K * 1.0) * LN2 + MASK_FILL, lse)
    elif SAFE:
        out = tl.where(empty[:, None], 0.0, out)  # SDPA: a row with no visible key is 0
    else:
        out = tl.where(empty[:, None], float("nan"), out)  # eager softmax: 0/0
    n_rows = GROUP * N_Q
    r = tl.minimum(rows, n_rows - 1)
    h = h_kv * GROUP + r // N_Q
    q_i = r % N_Q
    row_ok = rows < n_rows
    o_ptrs = (Out + b * stride_ob + h[:, None] * stride_oh + q_i[:, None] * stride_om
              + offs_dv[None, :] * stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + (b * H_Q + h) * N_Q + q_i, lse, mask=row_ok)


@triton.jit
def _parts(Part, PART_ROWS):
    """(o, m, l) partials' bases in the one fp32 buffer: o [PART_ROWS, DV_PAD] first, then
    m and l [PART_ROWS] (see forward: one allocation, not three, per call)."""
    m_part = Part + PART_ROWS.to(tl.int64) * DV_PAD
    return Part, m_part, m_part + PART_ROWS


@triton.jit
def _decode_split(Q, K, V, BT, Part, Out, Lse, Bad${inputs},
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_ob, stride_oh, stride_om, stride_od,
                  stride_btb, stride_btn,
                  H_Q, H_KV, GROUP, N_Q, N_K, N_PAGES, SPLIT_LEN, N_SPLITS, PART_ROWS,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
                  FINAL: tl.constexpr):
    """Program (s, b·Hkv + g): keys [s·SPLIT_LEN, (s+1)·SPLIT_LEN) against the packed
    rows of KV head g. Part: the fp32 partials, one buffer (_parts): o = acc / l
    [B·Hkv, S, BLOCK_M, DV_PAD], then the running max m (log2 units) and the sum l, each
    [B·Hkv, S, BLOCK_M]; PART_ROWS = B·Hkv·S·BLOCK_M.
    Packed row r is query head g·GROUP + r // Nq, query row r % Nq. FINAL (one split):
    write out and lse directly, no merge launch. Paged: Bad [B·Hkv·S] int32, whether
    this program met a table entry outside the pool (every program writes its own)."""
    split = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // H_KV).to(tl.int64)
    h_kv = (pid % H_KV).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    n_rows = GROUP * N_Q
    r = tl.minimum(rows, n_rows - 1)  # padding rows repeat the last row: loads stay in range
    h = h_kv * GROUP + r // N_Q
    q_i = (r % N_Q)[:, None]
    h_col = h[:, None]
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q_ptrs = (Q + b * stride_qb + h_col * stride_qh + q_i * stride_qm
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)
    bad = tl.full([BLOCK_N], 0, dtype=tl.int32)
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, N_K)
    if CAUSAL and DROP_MASKED:
        hi = tl.minimum(hi, N_Q)  # top-left causal: no row sees a key at or past Nq
    # The page ids of a tile are loaded before its K and V (which they address): Triton's
    # pipeliner splits num_stages between the two levels of that chain, so a paged
    # config carries about twice a dense one's stages (tiles.paged_stages) to keep as
    # many K/V tiles in flight.
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_i = cols[None, :]
        page, slot, ok, out_of_pool = _pages(BT, b, cols, stride_btb, stride_btn, PAGE,
                                             N_PAGES, hi)
        if PAGED:
            bad = bad | out_of_pool.to(tl.int32)
        live = True
        if SKIP_TILES:
            seen = (kv_i < hi) & _visible(b, h_col, q_i, kv_i, N_Q, N_K${inputs})
            if CAUSAL:
                seen = seen & (kv_i <= q_i)
            live = _any(_sum_axis(seen.to(tl.int32), 1) > 0)
        if live:
            k = _load_kv(K, page, slot, ok, h_kv, offs_d, stride_kb, stride_kh, stride_kn,
                         stride_kd, HEAD_DIM, EVEN_D)
            s = _mm(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
            z, visible, nat = _logits(s, b, h_col, q_i, kv_i, N_Q, N_K${inputs}, True,
                                      False)
            z = tl.where(kv_i < hi, z, float("-inf"))  # this split's keys only
            # online softmax; a row that has seen only dropped keys keeps m = -inf
            m_new = tl.maximum(m_i, _row_max(z))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(z - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + _row_sum(p)
            v = _load_kv(V, page, slot, ok, h_kv, offs_dv, stride_vb, stride_vh, stride_vn,
                         stride_vd, HEAD_DIM_V, EVEN_DV)
            acc = _mma(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    if PAGED:
        tl.store(Bad + pid.to(tl.int64) * N_SPLITS + split, _sum_axis(bad, 0))
    if FINAL:
        _finish(o, m_i, l_i, Out, Lse, V, BT, b, h_kv, rows,
                offs_dv, stride_ob, stride_oh, stride_om, stride_od, stride_vb, stride_vh,
                stride_vn, stride_vd, stride_btb, stride_btn, H_Q, GROUP, N_Q, N_K,
                N_PAGES, BLOCK_N, PAGE)
    else:
        OPart, MPart, LPart = _parts(Part, PART_ROWS)
        part = pid.to(tl.int64) * N_SPLITS + split
        tl.store(OPart + (part * BLOCK_M + rows[:, None]) * DV_PAD + offs_dv[None, :], o)
        tl.store(MPart + part * BLOCK_M + rows, m_i)
        tl.store(LPart + part * BLOCK_M + rows, l_i)


@triton.jit
def _pool_check(Bad, Ok, N_BAD, CHECK_BLOCK: tl.constexpr):
    """Ok = 1 when every flag Bad[0:N_BAD] is 0 (no table entry outside the pool was
    met), else 0: the one value the host's assert reads, with no host sync."""
    offs = tl.arange(0, CHECK_BLOCK)
    seen = tl.full([CHECK_BLOCK], 0, dtype=tl.int32)
    for start in range(0, N_BAD, CHECK_BLOCK):
        seen = seen | tl.load(Bad + start + offs, mask=start + offs < N_BAD, other=0)
    tl.store(Ok, (_sum_axis(seen, 0) == 0).to(tl.int32))


@triton.jit
def _decode_merge(Part, Out, Lse, V, BT, Bad, Ok,
                  stride_ob, stride_oh, stride_om, stride_od,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_btb, stride_btn,
                  H_Q, H_KV, GROUP, N_Q, N_K, N_PAGES, N_SPLITS, N_PAIRS, PART_ROWS,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    """Program b·Hkv + g: merge its S partials (FlashDecoding's log-sum-exp merge, kept
    as (m, l) pairs so ties at fp32's minimum keep their counts) and write out
    [B, Hq, Nq, dv] and lse [B, Hq, Nq] (natural log), as the prefill kernel writes
    them, empty rows included. Paged: one more program (pid = B·Hkv) reduces the split
    programs' Bad flags into Ok (_pool_check), so the check costs no launch of its own."""
    pid = tl.program_id(0)
    if PAGED and pid == N_PAIRS:
        _pool_check(Bad, Ok, N_PAIRS * N_SPLITS, 1024)
    else:
        OPart, MPart, LPart = _parts(Part, PART_ROWS)
        b = (pid // H_KV).to(tl.int64)
        h_kv = (pid % H_KV).to(tl.int64)
        rows = tl.arange(0, BLOCK_M)
        offs_dv = tl.arange(0, DV_PAD)
        base = pid.to(tl.int64) * N_SPLITS
        m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        for s in range(0, N_SPLITS):
            m = tl.maximum(m, tl.load(MPart + (base + s) * BLOCK_M + rows))
        m_use = tl.where(m == float("-inf"), 0.0, m)
        total = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        acc = tl.full([BLOCK_M, DV_PAD], 0.0, dtype=tl.float32)
        for s in range(0, N_SPLITS):
            w = tl.math.exp2(tl.load(MPart + (base + s) * BLOCK_M + rows) - m_use)
            w = w * tl.load(LPart + (base + s) * BLOCK_M + rows)  # 2^(m_s - m)·l_s
            o = tl.load(OPart + ((base + s) * BLOCK_M + rows[:, None]) * DV_PAD
                        + offs_dv[None, :])
            acc += w[:, None] * o
            total += w
        out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
        _finish(out, m, total, Out, Lse, V, BT, b, h_kv, rows, offs_dv, stride_ob,
                stride_oh, stride_om, stride_od, stride_vb, stride_vh, stride_vn,
                stride_vd, stride_btb, stride_btn, H_Q, GROUP, N_Q, N_K, N_PAGES,
                BLOCK_N, PAGE)


@triton.jit
def _pool_check_kernel(Bad, Ok, N_BAD, CHECK_BLOCK: tl.constexpr):
    """One program: _pool_check where there is no merge launch (one split)."""
    _pool_check(Bad, Ok, N_BAD, CHECK_BLOCK)


def forward(q, k, v, out, lse, inputs, splits, config, block_table=None, n_k=None):
    """Launch: q [B,Hq,Nq,d]; k, v dense [B,Hkv,Nk,d] or paged [num_pages,PAGE,Hkv,d]
    with block_table [B, max_pages] and n_k keys; out [B,Hq,Nq,dv], lse [B,Hq,Nq] fp32
    contiguous. splits: programs per (batch, KV head); config: (BLOCK_M, BLOCK_N,
    num_warps, num_stages), BLOCK_M >= Hq/Hkv·Nq. Returns None (dense) or, paged, an
    int32 scalar on the device: 1 when every table entry read named a page of the pool
    (the op asserts it asynchronously)."""
    bm, bn, warps, stages = config
    batch, h_q, n_q, _ = q.shape
    if PAGED:
        page, h_kv, n_pages = k.shape[1], k.shape[2], k.shape[0]
        # paged caches: (page, slot, head, dim) strides as (b, n, h, d) of the dense form
        ks = (k.stride(0), k.stride(2), k.stride(1), k.stride(3))
        vs = (v.stride(0), v.stride(2), v.stride(1), v.stride(3))
        bt, bts = block_table, block_table.stride()
    else:
        h_kv, n_k, page, n_pages = k.shape[1], k.shape[2], 1, 1
        ks, vs = k.stride(), v.stride()
        bt, bts = lse, (0, 0)
    group = h_q // h_kv
    pairs = batch * h_kv
    split_len = _cdiv(_cdiv(n_k, splits), bn) * bn
    splits = _cdiv(n_k, split_len)
    final = splits == 1
    part_rows = pairs * splits * bm
    if final:  # one split writes out and lse itself
        part = lse
    else:
        # the partials o, m, l in one allocation, split by offsets in the kernels (_parts):
        # an allocation is a few µs of a decode step's host time, a caching-allocator call
        # and a profiler event each, and a launch plan (codegen/plan.py) replays
        # allocations, never views of one
        part = torch.empty(part_rows * (DV_PAD + 2), dtype=torch.float32, device=q.device)
    bad = ok = lse
    if PAGED:  # two allocations, not one sliced: Ok's pointer stays 16-byte aligned, as
        # the binary was specialised (a misaligned one would compile another)
        bad = torch.empty(pairs * splits, dtype=torch.int32, device=q.device)
        ok = torch.empty(1, dtype=torch.int32, device=q.device)
    extra = [s for x in inputs for s in (x, *x.stride())]
    launch(_decode_split, (splits, pairs),
           q, k, v, bt, part, out, lse, bad, *extra, *q.stride(), *ks,
           *vs, *out.stride(), *bts, h_q, h_kv, group, n_q, n_k, n_pages, split_len,
           splits, part_rows, BLOCK_M=bm, BLOCK_N=bn, PAGE=page, FINAL=final, num_warps=warps,
           num_stages=stages)
    if final:
        if PAGED:
            launch(_pool_check_kernel, (1,), bad, ok, pairs, CHECK_BLOCK=1024,
                   num_warps=4, num_stages=1)
    else:
        launch(_decode_merge, (pairs + int(PAGED),),
               part, out, lse, v, bt, bad, ok, *out.stride(), *vs, *bts,
               h_q, h_kv, group, n_q, n_k, n_pages, splits, pairs, part_rows,
               BLOCK_M=bm, BLOCK_N=bn, PAGE=page, num_warps=4, num_stages=1)
    return ok if PAGED else None
''')


def skips_tiles(spec: DecodeSpec) -> bool:
    """Whether the split kernel tests each key tile's visibility before loading it:
    where the Spec has a mask and masked logits drop out (contribute exactly 0)."""
    att = spec.attention
    return att.mask is not None and drops_masked(att)


def render_decode(spec: DecodeSpec, *, interpret: bool = False,
                  profile: DeviceProfile | None = None) -> str:
    """Python source of the decode module for `spec`. Tiles and split counts are the
    launcher's arguments (the op chooses them from the profile, tiles.py, price.py), so
    one module serves every size; `profile` is accepted as every renderer's is."""
    return _DECODE_TEMPLATE.substitute(
        general_substitutions(spec.attention, interpret),
        # the attention Spec's fields one per line (the DecodeSpec adds only PAGED below)
        preamble=module_preamble(f"{__name__} (DecodeSpec, paged={spec.paged})",
                                 spec.attention, GENERAL_IMPORTS),
        paged=str(spec.paged),
        skip_tiles=str(skips_tiles(spec)),
    )
