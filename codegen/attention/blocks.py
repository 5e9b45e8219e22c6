"""Block sparsity of a masked attention Spec: which tiles are empty, full or partial.

For a tile of queries [q_lo, q_hi] × keys [kv_lo, kv_hi] the mask (and `causal`) is
classified by interval reasoning (`expr.IntervalPrinter`):

    empty    the predicate can hold nowhere in the tile       -> never visited
    full     it surely holds everywhere (and the tile is whole) -> visited without masks
    partial  anything else                                    -> visited with the mask

Index-only predicates (causal, sliding window, prefix) are decided from the index
ranges alone. Loads of per-token vectors (document ids, padding flags) enter through
the vector's min and max over the tile's rows or columns, so a document mask gives
empty tiles between documents and full tiles inside one. Any other load is unknown and
makes its tiles partial, never wrong.

A small runtime kernel (`_block_map`, rendered per Spec) writes, for every outer tile
(a query block for the forward and dQ, a key block for dK/dV) and every (batch, head)
the mask depends on, two lists of inner block indices, full and partial, and their
lengths:

    full_cnt, part_cnt: int32 [B_map·H_map, T_outer]
    full_list, part_list: int32 [B_map·H_map, T_outer, T_inner]

The attention kernels loop over these lists, so empty tiles cost nothing. The map has
T_outer·T_inner = Nq·Nk / (BLOCK_M·BLOCK_N) entries per head: the per-token vectors
are read once per tile (Nq·Nk / BLOCK elements in all), and nothing of size Nq × Nk
exists. Cost: one scalar classification per tile, negligible next to the attention.
"""

from __future__ import annotations

import sympy

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import B_IDX, H_IDX

from ..expr import IntervalPrinter, TritonPrinter, input_params, uses
from ..render import reduction


def mask_uses_heads(spec: AttentionSpec) -> bool:
    return uses(spec.mask_expr(), H_IDX)


def map_is_static(spec: AttentionSpec) -> bool:
    """The mask reads no input tensor (causal, sliding window, prefix): its block map
    depends on the sizes and the tiles alone."""
    mask = spec.mask_expr()
    names = {t.name for t in spec.inputs}
    return mask is not None and not mask.atoms(sympy.Indexed) and not any(
        str(symbol) in names for symbol in mask.free_symbols)


def mask_uses_batch(spec: AttentionSpec) -> bool:
    mask = spec.mask_expr()
    return uses(mask, B_IDX) or bool(mask is not None and mask.atoms(sympy.Indexed))


def _vector_summary(printer: TritonPrinter, vec, interpret: bool, indent: str, axis: int
                    ) -> str:
    """Lines computing vec.lo / vec.hi: the min and max of a vector load over the rows
    (q axis) or columns (kv axis) of a tile (axis 0: one tile, 1-D indices; axis 1: a
    chunk of tiles, [CHUNK, BLOCK] indices)."""
    ptr, mask = printer.load_address(vec.load)
    dtype = "tl.int64"
    if "float" in str(printer.inputs[printer.input_index(str(vec.load.base))].dtype):
        dtype = "tl.float32"
    big = "3.0e38" if dtype == "tl.float32" else "9223372036854775807"
    red_min, red_max = (reduction(op, "{}", axis, interpret) for op in ("min", "max"))
    # The outer tile's bounds are scalars; they are spread over the chunk's [MAP_CHUNK]
    # inner tiles, so that every comparison printed on them is a vector like the inner
    # tiles' flags. Triton's interpreter gives a comparison of two scalars the operands'
    # dtype (fp32) instead of int1, and `&` with a vector then fails (triton 3.9).
    spread = f"tl.full([MAP_CHUNK], 0, dtype={dtype}) + " if axis == 0 else ""
    return "\n".join([
        # one name per vector: a loop-carried name must keep its shape
        f"{indent}{vec.lo}_v = tl.load({ptr}, mask={mask}, other=0).to({dtype})",
        f"{indent}{vec.lo} = {spread}"
        + red_min.format(f"tl.where({mask}, {vec.lo}_v, {big})"),
        f"{indent}{vec.hi} = {spread}"
        + red_max.format(f"tl.where({mask}, {vec.lo}_v, -{big})"),
    ])


def render_block_map(spec: AttentionSpec, interpret: bool) -> str:
    """Source of the `_block_map` kernel and its launcher `block_map(...)` for `spec`."""
    mask = spec.mask_expr()
    iv = IntervalPrinter(spec.inputs)
    must, may = iv.truth(mask) if mask is not None else ("True", "True")
    printer = TritonPrinter(spec.inputs)
    q_vecs = [v for v in iv.vector_loads.values() if v.axis == "q"]
    kv_vecs = [v for v in iv.vector_loads.values() if v.axis == "kv"]

    def summaries(vecs, depth: int, axis: int) -> str:
        indent = " " * (4 * depth)
        return ("\n".join(_vector_summary(printer, v, interpret, indent, axis) for v in vecs)
                or f"{indent}pass")

    # Printed before the template so that every load they bind is known: scalar loads
    # (runtime sizes) are read once at the top of the kernel.
    kv_outer, q_inner = summaries(kv_vecs, 2, 0), summaries(q_vecs, 3, 1)
    q_outer, kv_inner = summaries(q_vecs, 2, 0), summaries(kv_vecs, 3, 1)
    scalars = "\n".join(x for x in (iv.printer.statements(), printer.statements()) if x)
    # Either order, a chunk of inner tiles is classified alike once its bounds are set.
    classify = f'''\
            live = tiles < T_INNER
            whole = (q_lo + BLOCK_M <= N_Q) & (kv_lo + BLOCK_N <= N_K)
            must = ({must}) & whole & live
            may = ({may}) & live
            if CAUSAL:
                must = must & (kv_hi <= q_lo)
                may = may & (kv_lo <= q_hi)
            n_full = _append(FullList, row, n_full, tiles, must)
            n_part = _append(PartList, row, n_part, tiles, may & (must == 0))'''

    # The outer tile is one block of rows (q) or columns (kv), its bounds scalars; the
    # inner tiles are classified CHUNK at a time, their bounds [CHUNK] vectors, so the
    # same printed predicate evaluates a whole chunk at once. `q_i` / `kv_i` are the
    # index vectors the vector loads read ([BLOCK] outer, [CHUNK, BLOCK] inner).
    return f'''
MAP_CHUNK = tl.constexpr(16)  # inner tiles classified per step


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _append(List, row, count, tiles, keep):
    """Append tiles[keep] to List[row + count:], in order; the new count."""
    k = keep.to(tl.int32)
    slot = count + tl.associative_scan(k, 0, _add) - k
    tl.store(List + row + slot, tiles, mask=k != 0)
    return count + _sum_axis(k, 0)


@triton.jit
def _block_map(FullCnt, FullList, PartCnt, PartList,
               {input_params(spec).removeprefix(", ") + "," if spec.inputs else ""}
               H_MAP, N_Q, N_K, T_OUTER, T_INNER,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KV_MAJOR: tl.constexpr):
    """One program per (outer tile, batch·map head): the full and partial inner tiles."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_MAP).to(tl.int64)
    h = (pid_bh % H_MAP).to(tl.int64)
    row = (pid_bh.to(tl.int64) * T_OUTER + pid) * T_INNER
{scalars}
    n_full = tl.full([], 0, dtype=tl.int32)
    n_part = tl.full([], 0, dtype=tl.int32)
    if KV_MAJOR:
        kv_lo = pid * BLOCK_N
        kv_hi = tl.minimum(kv_lo + BLOCK_N, N_K) - 1
        kv_i = kv_lo + tl.arange(0, BLOCK_N)
{kv_outer}
        for c in range(0, T_INNER, MAP_CHUNK):
            tiles = c + tl.arange(0, MAP_CHUNK)
            q_lo = tiles * BLOCK_M
            q_hi = tl.minimum(q_lo + BLOCK_M, N_Q) - 1
            q_i = q_lo[:, None] + tl.arange(0, BLOCK_M)[None, :]
{q_inner}
{classify}
    else:
        q_lo = pid * BLOCK_M
        q_hi = tl.minimum(q_lo + BLOCK_M, N_Q) - 1
        q_i = q_lo + tl.arange(0, BLOCK_M)
{q_outer}
        for c in range(0, T_INNER, MAP_CHUNK):
            tiles = c + tl.arange(0, MAP_CHUNK)
            kv_lo = tiles * BLOCK_N
            kv_hi = tl.minimum(kv_lo + BLOCK_N, N_K) - 1
            kv_i = kv_lo[:, None] + tl.arange(0, BLOCK_N)[None, :]
{kv_inner}
{classify}
    tl.store(FullCnt + pid_bh.to(tl.int64) * T_OUTER + pid, n_full)
    tl.store(PartCnt + pid_bh.to(tl.int64) * T_OUTER + pid, n_part)


MAP_USES_HEADS = {mask_uses_heads(spec)}
MAP_USES_BATCH = {mask_uses_batch(spec)}
# The mask reads no tensor: its map is a function of the sizes and tiles alone.
MAP_STATIC = {map_is_static(spec)}
_STATIC_MAPS = {{}}  # (b_map, h_map, n_q, n_k, block_m, block_n, kv_major, device) -> map


def block_map(inputs, batch, h_q, n_q, n_k, block_m, block_n, kv_major, device):
    """(full_cnt, full_list, part_cnt, part_list, map_heads, map_batch) for tiles of
    block_m query rows × block_n keys; outer tiles are key blocks when kv_major.

    A static map is built once per (sizes, tiles, device) and kept for the process: no
    launch and no allocation per call, and a CUDA graph that captured a launch reading
    it can rely on it staying alive. Maps are not built inside a capture (a map made
    there would live in the graph's memory pool)."""
    h_map = h_q if MAP_USES_HEADS else 1
    b_map = batch if MAP_USES_BATCH else 1
    if not MAP_STATIC:
        return _build_map(inputs, b_map, h_map, n_q, n_k, block_m, block_n, kv_major, device)
    key = (b_map, h_map, n_q, n_k, block_m, block_n, kv_major, device)
    found = _STATIC_MAPS.get(key)
    if found is None:
        found = _build_map(inputs, b_map, h_map, n_q, n_k, block_m, block_n, kv_major,
                           device)
        if getattr(device, "type", None) != "cuda" or not (
                torch.cuda.is_current_stream_capturing()):
            _STATIC_MAPS[key] = found
    return found


def _build_map(inputs, b_map, h_map, n_q, n_k, block_m, block_n, kv_major, device):
    t_q, t_k = -(-n_q // block_m), -(-n_k // block_n)
    t_outer, t_inner = (t_k, t_q) if kv_major else (t_q, t_k)
    full_cnt = torch.empty((b_map * h_map, t_outer), dtype=torch.int32, device=device)
    part_cnt = torch.empty_like(full_cnt)
    full_list = torch.empty((b_map * h_map, t_outer, t_inner), dtype=torch.int32,
                            device=device)
    part_list = torch.empty_like(full_list)
    strides = [s for x in inputs for s in (x, *x.stride())]
    launch(
        _block_map, (t_outer, b_map * h_map),
        full_cnt, full_list, part_cnt, part_list, *strides, h_map, n_q, n_k, t_outer,
        t_inner, BLOCK_M=block_m, BLOCK_N=block_n, KV_MAJOR=kv_major)
    return full_cnt, full_list, part_cnt, part_list, h_map, b_map
'''
