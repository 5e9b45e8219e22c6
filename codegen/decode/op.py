"""Split-KV decode attention as torch ops (registered as codegen/library.py says: each
a kernel op `..._forward` and the differentiable op).

    ioaware::decode_attention(q, k, v, inputs, spec, num_splits=0) -> (out, lse)
    ioaware::paged_decode_attention(q, k_cache, v_cache, block_table, n_k, inputs, spec,
                                    num_splits=0) -> (out, lse)

spec: an AttentionSpec as JSON (the region's semantics: scale, causal, mask, score mod,
inputs), exactly what `ioaware::attention` takes; out, lse are what it returns.
q [B, Hq, Nq, d]; dense k, v [B, Hkv, Nk, d]; paged caches [num_pages, page, Hkv, d]
(vLLM's layout) read through block_table [B, max_pages] (int32/int64) for n_k keys.
num_splits: programs per (batch, KV head) along the keys; 0 lets the cost model choose
from the device's SM count and the sizes (price.choose_splits).

Dispatch per call: the decode kernels when the packed rows Hq/Hkv·Nq fit a decode tile
(tiles.MAX_ROWS) and the Spec's semantics are ones they give exactly (`decode_supports`);
else the prefill kernels (`ioaware::attention`; a paged cache is gathered first). On the
CPU without the interpreter, the torch reference. The dense op's gradient is the prefill
backward's (`ioaware::attention_backward` on the same out and lse), so a decode region
under autograd is exact; the paged op is inference only and says so if differentiated.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ioaware.codegen.attention import op as attention_op  # (imported: registers its ops)
from ioaware.codegen.attention.header import FLOAT32_MAX, drops_masked
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.hardware import device_profile

from ..library import differentiable_op, kernel_op
from ..plan import planned
from ..runtime import backend_name, device_context, kernel_module
from . import reference
from .price import choose_splits
from .spec import DecodeSpec
from .tiles import INTERPRET_BLOCK_N, MAX_ROWS, decode_tile, packed_rows, paged_stages

__all__ = ["decode_attention", "decode_supports", "paged_decode_attention"]

_parse = functools.lru_cache(maxsize=256)(AttentionSpec.from_json)


def decode_supports(spec: AttentionSpec) -> str | None:
    """None when the decode kernels give `spec`'s semantics exactly; else why not."""
    if spec.dropout_p > 0:
        return f"dropout_p={spec.dropout_p}: decode kernels do not drop out"
    fix_empty = (drops_masked(spec) and spec.mask is not None
                 and spec.mask_semantics in ("fill", "add"))
    uniform_empty = (spec.mask_semantics == "fill"
                     or spec.mask_fill * math.log2(math.e) <= -FLOAT32_MAX)
    if fix_empty and not uniform_empty:
        return ("rows with no visible key take a non-uniform softmax of masked logits "
                "(a mild additive fill): prefill kernels")
    return None


def _rows_fit(q: Tensor, h_kv: int) -> bool:
    return h_kv > 0 and (q.shape[1] // h_kv) * q.shape[2] <= MAX_ROWS


def _config(spec: AttentionSpec, q: Tensor, h_kv: int, paged: bool
            ) -> tuple[int, int, int, int]:
    block_m = packed_rows(q.shape[1] // h_kv, q.shape[2])
    if backend_name(q.device) == "triton-interpret":
        return block_m, INTERPRET_BLOCK_N, 4, 1
    block_m, block_n, warps, stages = _gpu_tile(
        device_profile(q.device), spec.head_dim, spec.head_dim_v, q.dtype.itemsize, block_m)
    return block_m, block_n, warps, paged_stages(stages) if paged else stages


_gpu_tile = functools.lru_cache(maxsize=256)(decode_tile)


def _splits(q: Tensor, dv: int, h_kv: int, n_k: int, config, num_splits: int) -> int:
    if num_splits > 0:
        return num_splits
    width = q.shape[-1] + dv
    return choose_splits(device_profile(q.device), q.shape[0] * h_kv, n_k, config[0],
                         width, q.dtype.itemsize, config[1])


def _launch(dspec: DecodeSpec, q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor],
            h_kv: int, n_k: int, num_splits: int, block_table: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
    out = q.new_empty((*q.shape[:3], v.shape[-1]))
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    config = _config(dspec.attention, q, h_kv, dspec.paged)
    splits = _splits(q, v.shape[-1], h_kv, n_k, config, num_splits)
    module = kernel_module("decode", dspec, q.device)
    with device_context(q.device):
        in_pool = module.forward(q, k, v, out, lse, inputs, splits, config, block_table,
                                 n_k)
        if in_pool is not None and q.device.type == "cuda":
            # the kernel met a block_table entry outside the pool (and read it as masked
            # zeros): a device-side assert, as eager's out-of-range index gives, with no
            # host sync (the CPU path raised ValueError before launching)
            torch._assert_async(in_pool, "block_table entries must be in [0, num_pages)")
    return out, lse


def _check_paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, inputs: list[Tensor],
                 spec: AttentionSpec) -> None:
    """The paged op's operands, by the prefill op's checks on a dense-shaped view of one
    page per batch row ([B, Hkv, page, d], free): ranks, dtypes, devices, GQA, head
    dims, the Spec's inputs; then that the two pools agree."""
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 4 or t.shape[0] == 0:
            raise ValueError(f"{name} must be [num_pages >= 1, page, Hkv, d]; got "
                             f"{tuple(t.shape)}")
    batch = q.shape[0] if q.dim() == 4 else 1
    attention_op._check_spec_inputs(
        q, *(t[:1].permute(0, 2, 1, 3).expand(batch, -1, -1, -1) for t in (k_cache, v_cache)),
        inputs, spec, None)
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache "
                         f"{tuple(v_cache.shape)} must agree on pages, page size and heads")


@kernel_op("ioaware::decode_attention_forward")
@planned
def decode_attention_forward_op(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor], spec: str,
                        num_splits: int = 0) -> tuple[Tensor, Tensor]:
    """(out, lse) of AttentionSpec `spec` (JSON) on a dense cache; see the module doc."""
    aspec = _parse(spec)
    # the prefill op's checks: ranks, dtypes, devices, GQA, head dims, the Spec's inputs
    attention_op._check_spec_inputs(q, k, v, inputs, aspec, None)
    h_kv, n_k = k.shape[1], k.shape[2]
    usable = (backend_name(q.device) != "reference" and decode_supports(aspec) is None
              and _rows_fit(q, h_kv) and q.numel() > 0 and n_k > 0
              and k.shape[0] == q.shape[0] and q.shape[1] % h_kv == 0)
    if not usable:  # the prefill op: its checks, its empty-problem rules, its reference
        out, lse = torch.ops.ioaware.attention_forward(q, k, v, inputs, spec)
        return out, lse
    return _launch(DecodeSpec(aspec), q, k, v, inputs, h_kv, n_k, num_splits)


@decode_attention_forward_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor], spec: str,
      num_splits: int = 0) -> tuple[Tensor, Tensor]:
    return (q.new_empty((*q.shape[:3], v.shape[-1])),
            q.new_empty(q.shape[:3], dtype=torch.float32))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, extra, spec = inputs[:5]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *extra)
    ctx.spec = spec
    ctx.set_materialize_grads(False)


def _backward(ctx, dout: Tensor | None, dlse: Tensor | None):
    """The prefill backward on the decode forward's out and lse (the same values)."""
    q, k, v, out, lse, *extra = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dgrads = torch.ops.ioaware.attention_backward(
        dout, q, k, v, out, lse, list(extra), ctx.spec, None, dlse)
    it = iter(dgrads)
    dextra = [next(it) if t.requires_grad else None for t in _parse(ctx.spec).inputs]
    return (dq, dk, dv, dextra, None, None)[:len(ctx.needs_input_grad)]


decode_attention_op = differentiable_op("ioaware::decode_attention", decode_attention_forward_op,
                                        _backward, _setup_context)


def check_block_table(block_table: Tensor, n_pages: int, page: int, n_k: int,
                      batch: int, entries: bool = True) -> None:
    """Raise ValueError naming `block_table` when it cannot address n_k keys of every
    batch row inside the cache. `entries`: also check the entries it uses are in
    [0, n_pages) (on the GPU an asynchronous device assert, as eager's out-of-range
    index gives, with no host sync). The decode kernels check them as they read them
    (one flag per program, reduced by the merge launch; _launch asserts it): on the GPU
    they are not checked here, six small launches fewer under CUDA graphs."""
    if n_k < 0:
        raise ValueError(f"n_k={n_k}: the number of keys the block table addresses must be "
                         ">= 0")
    if block_table.dim() != 2 or block_table.shape[0] != batch:
        raise ValueError(f"block_table must be [B={batch}, max_pages]; got "
                         f"{tuple(block_table.shape)}")
    if block_table.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_table.dtype={block_table.dtype} must be int32 or int64")
    if n_k > block_table.shape[1] * page:
        raise ValueError(f"block_table addresses {block_table.shape[1]} pages of {page} "
                         f"keys = {block_table.shape[1] * page}, fewer than n_k={n_k}")
    used = block_table[:, :-(-n_k // page)]
    if used.numel() == 0 or not entries:
        return
    if block_table.device.type == "cuda":
        ok = (used >= 0).all() & (used < n_pages).all()
        torch._assert_async(ok, "block_table entries must be in [0, num_pages)")
        return
    lo, hi = int(used.min()), int(used.max())
    if lo < 0 or hi >= n_pages:
        raise ValueError(f"block_table entries must be in [0, num_pages={n_pages}); "
                         f"found {lo if lo < 0 else hi}")


@kernel_op("ioaware::paged_decode_attention_forward")
def paged_decode_attention_forward_op(q: Tensor, k_cache: Tensor, v_cache: Tensor,
                              block_table: Tensor, n_k: int, inputs: list[Tensor], spec: str,
                              num_splits: int = 0) -> tuple[Tensor, Tensor]:
    """(out, lse) of AttentionSpec `spec` over the first n_k keys a block table
    addresses in paged caches; see the module doc."""
    aspec = _parse(spec)
    _check_paged(q, k_cache, v_cache, inputs, aspec)
    n_pages, page, h_kv = k_cache.shape[:3]
    usable = (backend_name(q.device) != "reference" and decode_supports(aspec) is None
              and _rows_fit(q, h_kv) and q.numel() > 0 and n_k > 0
              and q.shape[1] % h_kv == 0)
    # the kernels check the entries they read on the GPU; elsewhere, and before a
    # gather (where a negative entry would wrap around), they are checked here
    check_block_table(block_table, n_pages, page, n_k, q.shape[0],
                      entries=not usable or q.device.type != "cuda")
    if not usable:
        k = reference.gather_pages(k_cache, block_table, n_k)
        v = reference.gather_pages(v_cache, block_table, n_k)
        out, lse = torch.ops.ioaware.attention_forward(q, k, v, inputs, spec)
        return out, lse
    return _launch(DecodeSpec(aspec, paged=True), q, k_cache, v_cache, inputs, h_kv, n_k,
                   num_splits, block_table)


@paged_decode_attention_forward_op.register_fake
def _(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, n_k: int,
      inputs: list[Tensor], spec: str, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    return (q.new_empty((*q.shape[:3], v_cache.shape[-1])),
            q.new_empty(q.shape[:3], dtype=torch.float32))


def _paged_backward(ctx, dout, dlse):
    raise RuntimeError("ioaware::paged_decode_attention is inference only: differentiate "
                       "the gathered (dense) attention instead")


paged_decode_attention_op = differentiable_op(
    "ioaware::paged_decode_attention", paged_decode_attention_forward_op, _paged_backward,
    lambda ctx, inputs, output: None)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec,
                     inputs=(), num_splits: int = 0) -> Tensor:
    """Attention of a few query rows against a dense cache k, v [B, Hkv, Nk, d] by the
    split-KV kernels: out [B, Hq, Nq, dv] in q.dtype (see the module doc)."""
    out, _ = torch.ops.ioaware.decode_attention(q, k, v, list(inputs), spec.to_json(),
                                                num_splits)
    return out


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                           n_k: int, spec: AttentionSpec, inputs=(),
                           num_splits: int = 0) -> Tensor:
    """Attention of a few query rows against the first n_k keys of paged caches
    [num_pages, page, Hkv, d] addressed by block_table [B, max_pages]; out
    [B, Hq, Nq, dv] in q.dtype, no gathered copy made."""
    out, _ = torch.ops.ioaware.paged_decode_attention(
        q, k_cache, v_cache, block_table, n_k, list(inputs), spec.to_json(), num_splits)
    return out
