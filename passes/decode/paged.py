"""Paged caches: K and V gathered from pages through a block table, then attended.

A paged cache is a pool `[num_pages, page, Hkv, d]` (vLLM's layout) and an int block
table `[B, M]`: key n of batch b lives at slot n % page of page table[b, n // page].
Eager code reads it by gathering the pages into a dense copy and reshaping it:

    pool[table]                                   advanced indexing  -> [B, M, page, Hkv, d]
    pool.index_select(0, table.view(-1))          index_select       -> [B·M, page, Hkv, d]
    pool.gather(0, table.view(-1, 1, 1, 1).expand(-1, page, Hkv, d))      (the same rows)

then `.view(B, M·page, Hkv, d).transpose(1, 2)` (any chain of views, a slice of the
first n keys included). Every spelling gives a copy whose elements are the pool's rows
in (b, m) order, so one test covers them all: replaying the view chain after the gather
on a contiguous meta tensor of the copy's shape must give [B, Hkv, N, d] with strides
(M·page·Hkv·d, d, Hkv·d, 1) and offset 0, N ≤ M·page, i.e. k[b, h, n] = copy row
(b, n // page), slot n % page, head h. The decode kernels then read the pool in place
through the table, and the copy (its write and its second read) never happens.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
from torch import fx

from ioaware.passes import views
from ioaware.passes.driver import PassContext

aten = torch.ops.aten

# ops that may sit between the gather and attention: views, and a slice of the keys
CHAIN_OPS = views.LAYOUT_OPS | {aten.slice.Tensor}
INT_DTYPES = (torch.int32, torch.int64)


@dataclasses.dataclass
class PagedSource:
    """Where a paged plan reads K and V: the pools, the block table, the page size and
    the number of keys attended (an int, or how to compute it in the graph)."""

    k_cache: fx.Node
    v_cache: fx.Node
    table: fx.Node  # [B, M] int
    page_size: int
    n_k: object  # int, or the SymInt of k's length (= table.size(1) · page_size)
    removed: list  # the gathers and view chains that become dead (priced as the before)

    def call(self, g: fx.Graph, plan) -> fx.Node:
        n_k = self.n_k
        if not isinstance(n_k, int):  # M·page at run time, from the table that stays
            width = g.call_function(aten.sym_size.int, (self.table, 1))
            n_k = g.call_function(operator.mul, (width, self.page_size))
        return g.call_function(torch.ops.ioaware.paged_decode_attention.default,
                               (plan.q, self.k_cache, self.v_cache, self.table, n_k,
                                plan.inputs, plan.spec.to_json()))


def _val(node: fx.Node):
    return node.meta.get("val")


def _is_int_cast(node: fx.Node) -> bool:
    """`table.long()` and the like: an integer tensor copied to another integer dtype
    (the values, hence the pages named, unchanged)."""
    if node.op != "call_function" or node.target is not aten._to_copy.default:
        return False
    src, out = _val(node.args[0]), _val(node)
    return all(isinstance(t, torch.Tensor) and t.dtype in INT_DTYPES for t in (src, out))


def _walk_chain(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """(the first non-chain node above `node`, the chain ops from it down to `node`);
    integer casts of an index are stepped over (they move no element)."""
    chain = []
    while node.op == "call_function" and (node.target in CHAIN_OPS or _is_int_cast(node)):
        if node.target in CHAIN_OPS:
            chain.append(node)
        node = node.args[0]
    return node, chain[::-1]


def _gather_nodes(node: fx.Node) -> list[fx.Node]:
    """The gather and the view chain feeding attention from `node` up (what the paged
    rewrite removes), for pricing the region before it."""
    gather, chain = _walk_chain(node)
    return [gather, *chain]


def _flat_table(index: fx.Node) -> fx.Node | None:
    """The [B, M] table whose row-major flattening `index` is (a 1-D view of it)."""
    table, chain = _walk_chain(index)
    t = _val(table)
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in INT_DTYPES:
        return None
    out = views.replay(chain, views.hinted_shape(table))
    if out is None or out.dim() != 1 or not out.is_contiguous() or out.storage_offset():
        return None
    return table if out.numel() == views.hinted_shape(table)[0] * views.hinted_shape(table)[1] \
        else None


def _gather_index_table(index: fx.Node) -> fx.Node | None:
    """The [B, M] table of a torch.gather index `table.view(B·M, 1, 1, 1).expand(...)`:
    the index's element (r, s, h, d) must be table element r (row-major)."""
    table, chain = _walk_chain(index)
    t = _val(table)
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in INT_DTYPES:
        return None
    out = views.replay(chain, views.hinted_shape(table))
    if out is None or out.dim() != 4 or out.storage_offset():
        return None
    b, m = views.hinted_shape(table)
    if out.shape[0] != b * m or out.stride()[0] != 1 or any(out.stride()[1:]):
        return None
    return table


def _source(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(pool, table) when `node` (K or V as attention reads it, [B, Hkv, N, d]) is a view
    chain of a page gather; None otherwise."""
    gather, chain = _walk_chain(node)
    if gather.op != "call_function":
        return None
    pool = gather.args[0] if gather.args else None
    if not isinstance(pool, fx.Node) or not isinstance(_val(pool), torch.Tensor) or \
            _val(pool).dim() != 4:
        return None
    table = None
    if gather.target is aten.index.Tensor:
        indices = gather.args[1]
        if len(indices) == 1 and isinstance(indices[0], fx.Node):
            t = _val(indices[0])
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.dtype in INT_DTYPES:
                table = indices[0]
    elif gather.target is aten.index_select.default and gather.args[1] == 0:
        table = _flat_table(gather.args[2])
    elif gather.target is aten.gather.default and gather.args[1] == 0:
        table = _gather_index_table(gather.args[2])
    if table is None:
        return None
    b, m = views.hinted_shape(table)
    _, page, h_kv, d = views.hinted_shape(pool)
    copy_shape = views.hinted_shape(gather)
    if copy_shape not in ((b, m, page, h_kv, d), (b * m, page, h_kv, d)):
        return None
    out = views.replay(chain, copy_shape)
    if out is None or out.dim() != 4 or out.storage_offset():
        return None
    expected = (m * page * h_kv * d, d, h_kv * d, 1)
    if tuple(out.shape[:2]) != (b, h_kv) or out.shape[3] != d or out.shape[2] > m * page:
        return None
    if tuple(out.stride()) != expected:
        return None
    return pool, table


def find(k: fx.Node, v: fx.Node, ctx: PassContext) -> PagedSource | None:
    """The paged source of K and V as attention reads them (the same table, page size
    and length for both), or None: K/V are dense (or gathered in a way not recognised,
    which then stays a gather feeding the dense decode kernels)."""
    if not isinstance(v, fx.Node):
        return None
    k_src, v_src = _source(k), _source(v)
    if k_src is None or v_src is None or k_src[1] is not v_src[1]:
        return None
    page = views.hinted_shape(k_src[0])[1]
    if views.hinted_shape(v_src[0])[1] != page:
        return None
    n_k = _val(k).shape[2]
    if isinstance(n_k, torch.SymInt):
        width = _val(k_src[1]).shape[1]
        same = isinstance(width, torch.SymInt) and (n_k.node.expr - width.node.expr * page) == 0
        if not same:
            return None  # a symbolic slice of the keys: not addressed here
    else:
        n_k = int(n_k)
    return PagedSource(k_cache=k_src[0], v_cache=v_src[0], table=k_src[1], page_size=page,
                       n_k=n_k, removed=_gather_nodes(k) + _gather_nodes(v))
