"""The decode family's price: the closed form of split-KV decode, the split count the
cost model picks from a device's SM count, and the rules that price the family's ops.

Floor. Decode does 2·B·Hq·Nq·Nk·(d + dv) FLOPs on B·Hkv·Nk·(d + dv)·it bytes of K and V:
below one FLOP per byte at Nq·GROUP ≤ 16, so the floor is reading K and V once,

    t_floor = B·Hkv·Nk_read·(d + dv)·it / HBM bandwidth

(on an H100 at 3.0 TB/s measured copy bandwidth: B=8, Hkv=8, Nk=32k, d=128, bf16 is
1.07 GB, 358 µs; B=1 at 128k is 537 MB, 179 µs). Everything else is small beside it:

    read   Q      B·Hq·Nq·d·it               block table  B·⌈Nk/page⌉·8 (paged)
    write  out    B·Hq·Nq·dv·it              lse          B·Hq·Nq·4
    split partials (S > 1), fp32, written by the split kernel and read by the merge:
                  B·Hkv·S·R·(DV_PAD + 1)·4 each way, R the packed rows (tiles.py)
"""

from __future__ import annotations

import functools
import math

import sympy
from torch import fx

from ioaware.codegen.attention.tiles import padded_head_dim
from ioaware.cost import Cost, Size, register_price, sym
from ioaware.cost.nodes import meta_val
from ioaware.hardware import DeviceProfile
from ioaware.tiles import plain_int

from .tiles import PROGRAMS_PER_SM, packed_rows

PARTIAL_ITEMSIZE = 4  # split partials and lse rows are fp32
TABLE_ITEMSIZE = 8  # block-table entries as the kernel reads them (int32 or int64)
# Host-to-device time of one more kernel launch (the merge), seconds: what a split count
# above 1 must win back. A launch costs 2-5 µs on an H100 through the cached binaries.
LAUNCH_SECONDS = 3e-6
MAX_SPLITS = 128


def _bandwidth(profile: DeviceProfile) -> float:
    return profile.measured_hbm_bandwidth or profile.hbm_bandwidth


def _split_time(profile: DeviceProfile, pairs: int, n_k: int, rows: int, width: int,
                itemsize: int, splits: int) -> float:
    """Modelled seconds of the split and merge kernels with `splits` (choose_splits)."""
    bandwidth = _bandwidth(profile)
    slots = profile.num_sms * PROGRAMS_PER_SM
    chunk = -(-n_k // splits)
    waves = -(-pairs * splits // slots)
    t = waves * chunk * width * itemsize * slots / bandwidth
    if splits > 1:
        t += 2 * pairs * splits * rows * (width / 2 + 1) * PARTIAL_ITEMSIZE / bandwidth
        t += LAUNCH_SECONDS
    return t


@functools.lru_cache(maxsize=4096)
def choose_splits(profile: DeviceProfile, pairs: int, n_k: int, rows: int, width: int,
                  itemsize: int, block_n: int) -> int:
    """How many programs split each (batch, KV head)'s key range: the S minimising

        t(S) = waves(S) · (Nk/S)·width·it / (bandwidth / slots)       K/V, by waves
             + 2·pairs·S·rows·(width/2 + 1)·4 / bandwidth               the partials
             + LAUNCH_SECONDS · [S > 1]                                  the merge launch

    with slots = num_sms·PROGRAMS_PER_SM programs in flight, waves(S) =
    ⌈pairs·S / slots⌉, width = d + dv, pairs = B·Hkv; S ranges over
    1 … min(⌈Nk/block_n⌉, MAX_SPLITS). A wave of fewer programs than slots still takes
    a full program's time: that is why one program per (batch, KV head) leaves most of
    an H100 idle at small batch (B=1, Hkv=8: 8 of 264 slots busy).
    """
    best, best_t = 1, math.inf
    for splits in range(1, min(-(-n_k // block_n), MAX_SPLITS) + 1):
        t = _split_time(profile, pairs, n_k, rows, width, itemsize, splits)
        if t < best_t * (1 - 1e-9):
            best, best_t = splits, t
    return best


def decode_time(profile: DeviceProfile, B: int, Hq: int, Hkv: int, Nq: int, Nk: int,
                D: int, Dv: int, itemsize: int, block_n: int = 64) -> tuple[float, int]:
    """(modelled seconds, split count) of the decode kernels at these sizes."""
    rows = packed_rows(Hq // Hkv, Nq)
    splits = choose_splits(profile, B * Hkv, Nk, rows, D + Dv, itemsize, block_n)
    return _split_time(profile, B * Hkv, Nk, rows, D + Dv, itemsize, splits), splits


def prefill_time(profile: DeviceProfile, B: int, Hq: int, Hkv: int, Nq: int, Nk: int,
                 D: int, Dv: int, itemsize: int, block_m: int = 128) -> float:
    """Modelled seconds of the prefill kernel on a decode shape, by the same waves
    model: B·Hq·⌈Nq/block_m⌉ programs, each streaming all Nk keys of its head."""
    programs = B * Hq * -(-Nq // block_m)
    slots = profile.num_sms * PROGRAMS_PER_SM
    waves = -(-programs // slots)
    return waves * Nk * (D + Dv) * itemsize * slots / _bandwidth(profile)


def decode_cost(B: Size, Hq: Size, Hkv: Size, Nq: Size, Nk: Size, D: int, Dv: int,
                itemsize: int, splits: int = 1, page_size: Size | None = None) -> Cost:
    """Cost of split-KV decode (split kernel + merge), in the sizes (see the module
    docstring): K and V read once per KV head, Q once, out and lse written once, the
    fp32 partials written and read back when splits > 1; paged adds the block table."""
    B, Hq, Hkv, Nq, Nk = (sym(x) for x in (B, Hq, Hkv, Nq, Nk))
    it = sympy.Integer(itemsize)
    read = B * Hkv * Nk * (D + Dv) * it + B * Hq * Nq * D * it
    write = B * Hq * Nq * Dv * it + B * Hq * Nq * PARTIAL_ITEMSIZE
    if splits > 1:
        dv_pad = padded_head_dim(Dv)
        group = Hq / Hkv
        rows = packed_rows(int(group), int(Nq)) if group.is_Integer and Nq.is_Integer \
            else group * Nq
        partial = B * Hkv * splits * rows * (dv_pad + 1) * PARTIAL_ITEMSIZE
        read += partial
        write += partial
    if page_size is not None:
        read += B * sympy.ceiling(Nk / sym(page_size)) * TABLE_ITEMSIZE
    flops = 2 * B * Hq * Nq * Nk * (D + Dv)
    return Cost(read_bytes=read, write_bytes=write, flops=flops, tensor_flops=flops,
                transcendentals=B * Hq * Nq * Nk, kernel="decode")


def _sizes(q, k, v, paged: bool, block_table=None, n_k=None):
    batch, hq, nq, d = q.shape
    if paged:
        hkv, page = k.shape[2], k.shape[1]
        return batch, hq, hkv, nq, n_k, d, v.shape[-1], page
    return batch, hq, k.shape[1], nq, k.shape[2], d, v.shape[-1], None


def _hinted(x: Size) -> int | None:
    """A size as a plain int where it is one (a SymInt with no hint stays None)."""
    return plain_int(x) if not hasattr(x, "node") else None


@register_price("decode_attention", "decode_attention_forward", namespace="ioaware")
def _ioaware_decode_attention(node: fx.Node) -> Cost:
    """ioaware::decode_attention(q, k, v, inputs, spec) -> (out, lse), priced unsplit
    (the split count is a runtime choice; its partials are a small correction)."""
    q, k, v = (meta_val(node.args[i]) for i in range(3))
    b, hq, hkv, nq, nk, d, dv, _ = _sizes(q, k, v, False)
    return decode_cost(b, hq, hkv, nq, nk, d, dv, q.dtype.itemsize)


@register_price("paged_decode_attention", "paged_decode_attention_forward",
                namespace="ioaware")
def _ioaware_paged_decode_attention(node: fx.Node) -> Cost:
    """ioaware::paged_decode_attention(q, k_cache, v_cache, block_table, n_k, inputs,
    spec) -> (out, lse): the pages the table addresses (up to n_k keys) read once."""
    q, k, v = (meta_val(node.args[i]) for i in range(3))
    n_k = node.args[4]
    n_k = meta_val(n_k) if isinstance(n_k, fx.Node) else n_k
    b, hq, hkv, nq, nk, d, dv, page = _sizes(q, k, v, True, n_k=n_k)
    return decode_cost(b, hq, hkv, nq, nk, d, dv, q.dtype.itemsize, page_size=page)
