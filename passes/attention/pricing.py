"""Pricing an attention region: the modelled Cost of the eager region and of the kernel.

IO (per batch·head, unfused, N = Nq = Nk, fp16): write S (2N²), read/write it once per
pointwise step and softmax, read P (2N²) — Θ(N²) bytes — against FlashAttention's
Q, O (2Nd each) plus K, V once per query block: Θ(N²d²/M). See docs/cost-model.md.
"""

from __future__ import annotations

import sympy

from ioaware import cost, hardware
from ioaware.codegen.attention import tiles
from ioaware.codegen.attention.price import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, flash_attention_cost
from ioaware.hardware import DeviceProfile
from ioaware.passes.attention import masks
from ioaware.passes.attention.record import AttentionMatch, Source


def priced_tile(m: AttentionMatch, profile: DeviceProfile | None = None) -> dict[str, int]:
    """The forward tile the cost model prices: tiles.attention_tile on `profile` (the
    autotuner's first candidate), else the family's default tile."""
    tile = None if profile is None else tiles.attention_tile(
        profile, m.dims["D"], m.dims["Dv"], m.dtype.itemsize)
    return tile or {"block_m": DEFAULT_BLOCK_M, "block_n": DEFAULT_BLOCK_N, "num_stages": 2}


def region_costs(m: AttentionMatch, profile: DeviceProfile | None = None
                 ) -> tuple[cost.Cost, cost.Cost]:
    """Modelled cost of the eager region and of the generated kernel (forward), the
    kernel at `priced_tile`."""
    d = m.dims
    itemsize = m.dtype.itemsize
    density = mask_density(m, index_part=True)
    tile = priced_tile(m, profile)
    def kernel(**fp8_args) -> cost.Cost:
        return flash_attention_cost(
            d["B"], d["Hq"], d["Hkv"], d["Nq"], d["Nk"], d["D"], d["Dv"], itemsize,
            m.mods.causal, tile["block_m"], tile["block_n"], block_density=density or 1.0,
            num_stages=tile["num_stages"], **fp8_args)

    after = kernel(**fp8_pricing(m, profile))
    if m.source is Source.SDPA and not m.fp8:
        return after, after  # SDPA is already a fused kernel: same model either way
    before = cost.Cost.zero()
    if m.source is Source.SDPA:  # FP8: eager's dequantized copies, then 16-bit SDPA
        before = kernel()
    for n in m.region:
        if n is m.output and m.source is Source.SDPA:
            continue
        c = cost.node_cost(n)
        if c is not None:
            before = before + c
    return before, after


def fp8_pricing(m: AttentionMatch, profile: DeviceProfile | None) -> dict:
    """flash_attention_cost's FP8 arguments for `m`: one byte an FP8 operand element,
    and QKᵀ at the FP8 rate when both Q and K are FP8 (the rate ratio of `profile`,
    the present device's for None). Empty for a 16-bit region."""
    if not m.fp8:
        return {}
    sizes = tuple(1 if x in m.fp8 else m.dtype.itemsize for x in "qkv")
    weight = 1.0
    if "q" in m.fp8 and "k" in m.fp8:
        device = hardware.get_profile(profile)
        try:
            weight = device.peak_flops_for(m.dtype) / device.peak_flops_for("float8_e4m3fn")
        except (KeyError, ValueError):  # a device without an FP8 rate: the dtype's
            weight = 1.0
    return {"operand_itemsize": sizes, "qk_flop_weight": weight}


def mask_density(m: AttentionMatch, index_part: bool = False) -> float | None:
    """Block density of the mask at the hint sizes (None: data-dependent or unknown).

    index_part: of the index-only conjuncts alone (a sliding window with padding): an
    upper bound the cost model can use where the data decides the rest at runtime.
    """
    mask = m.mods.mask
    if mask is not None and index_part:
        kept = [c for c in masks.conjuncts(mask) if not c.atoms(sympy.Indexed)]
        mask = sympy.And(*kept) if kept else None
    if mask is None:
        return 1.0
    return masks.block_density(mask, m.mods.causal, m.dims["Nq"], m.dims["Nk"],
                               DEFAULT_BLOCK_M, DEFAULT_BLOCK_N)
