"""Time on a device: a Cost against a DeviceProfile's ceilings.

`ceilings` gives each part of the time (the tensor-core, CUDA-core and SFU pipes, DRAM,
L2 and the exposed round trips), `modelled_time` adds the pipes (a kernel's pipes wait on
each other), overlaps them with memory and adds the round trips nothing hides; `bound`
says which side is slower, `dram_bytes` what DRAM moves once L2 serves the re-reads, and
`rewrite_pays` compares a region before and after. Derivations: docs/cost-model.md.
"""

from __future__ import annotations

import sympy
import torch

from ioaware.cost.algebra import NUM_SMS, PROGRAMS_IN_FLIGHT, Cost, Hints, substitute, to_int
from ioaware.hardware import DeviceProfile, dtype_key

# Hopper and Ampere split L2 into two partitions, and data an SM reads from the far one
# may be kept in its near one too: only about half of L2 holds distinct lines.
L2_USABLE_FRACTION = 0.5
# Registers one program of a tiled kernel holds: 8 warps of 32 threads at 128 registers
# (the fp32 accumulator and score tiles); 64 K registers per SM then fit two programs.
REGISTERS_PER_PROGRAM = 8 * 32 * 128


def programs_in_flight(profile: DeviceProfile, sram_bytes: int) -> int:
    """Programs of one tiled kernel the device runs at once: each SM holds as many as
    both its shared memory (sram_per_sm // sram_bytes) and its registers
    (registers_per_sm // REGISTERS_PER_PROGRAM) fit, and at least one."""
    by_sram = profile.sram_per_sm // sram_bytes if sram_bytes > 0 else 1 << 30
    by_registers = profile.registers_per_sm // REGISTERS_PER_PROGRAM
    return profile.num_sms * max(1, min(by_sram, by_registers))


def l2_hits(cost: Cost, profile: DeviceProfile, hints: Hints | None = None) -> bool:
    """Whether the cost's re-reads are served by L2: its working set, with the device's
    programs in flight, fits in L2_USABLE_FRACTION of the profile's L2."""
    values = cost.evaluate(hints)
    return values["l2_reread_bytes"] > 0 and _fits_l2(cost, profile, hints, values)


def _device_value(expr: sympy.Expr, profile: DeviceProfile, hints: Hints | None,
                  sram_bytes: int, what: str) -> int:
    """A device-dependent field at `hints`, with the device's symbols replaced."""
    value = substitute(expr, hints or {}).xreplace({
        PROGRAMS_IN_FLIGHT: sympy.Integer(programs_in_flight(profile, sram_bytes)),
        NUM_SMS: sympy.Integer(profile.num_sms),
    })
    if value.free_symbols:
        names = sorted(str(s) for s in value.free_symbols)
        raise ValueError(f"{what} depends on {names} with no hint")
    return to_int(value)


def _fits_l2(cost: Cost, profile: DeviceProfile, hints: Hints | None,
             values: dict[str, int]) -> bool:
    working_set = _device_value(cost.l2_working_set, profile, hints, values["sram_bytes"],
                                "L2 working set")
    return working_set <= L2_USABLE_FRACTION * profile.l2


def dram_bytes(cost: Cost, profile: DeviceProfile, hints: Hints | None = None) -> int:
    """Bytes the device's DRAM moves for `cost`: its HBM bytes, less the re-reads L2
    serves, plus a library kernel's spill when its working set misses L2:
        hbm_bytes - (l2_reread_bytes if the working set fits)
                  + (l2_spill_bytes if it does not)
    Compare this, not `hbm_bytes`, with measured DRAM counters."""
    return _dram_bytes(cost, profile, hints, cost.evaluate(hints))


def _dram_bytes(cost: Cost, profile: DeviceProfile, hints: Hints | None,
                values: dict[str, int]) -> int:
    if not values["l2_reread_bytes"] and cost.l2_spill_bytes == 0:
        return values["hbm_bytes"]
    if _fits_l2(cost, profile, hints, values):
        return values["hbm_bytes"] - values["l2_reread_bytes"]
    return values["hbm_bytes"] + _device_value(cost.l2_spill_bytes, profile, hints,
                                               values["sram_bytes"], "L2 spill")


def ceilings(
    cost: Cost, profile: DeviceProfile, dtype: str | torch.dtype, hints: Hints | None = None
) -> dict[str, float]:
    """Seconds each part of the time takes on `profile`:

        tensor  = tensor_flops / peak[dtype]                   (measured peak where known)
        vector  = (flops - tensor_flops) / peak[float32]       (the CUDA cores)
        sfu     = transcendentals / SFU rate
        compute = (tensor + vector + sfu) / kernel_efficiency[kernel]
        hbm     = dram_bytes / bandwidth
        l2      = hbm_bytes / l2_bandwidth                    (0 while no L2 rate is known)
        latency = exposed_round_trips · memory_latency        (0 while none is known)

    The three pipes add, not overlap: a kernel that does not specialise warps issues a
    tile's matmul, then the softmax's exps that depend on it, then the next matmul that
    depends on them (FlashAttention-3, §3.1); for one pipe alone the sum is that pipe.
    """
    values = cost.evaluate(hints)
    l2_rate = profile.l2_bandwidth
    tensor = values["tensor_flops"] / profile.peak_flops_for(dtype)
    vector = (values["flops"] - values["tensor_flops"]) / profile.peak_flops_for("float32")
    sfu = values["transcendentals"] / profile.transcendentals_per_s
    efficiency = profile.kernel_efficiency.get(cost.kernel, 1.0) if cost.kernel else 1.0
    latency = 0.0
    if profile.memory_latency and cost.exposed_round_trips != 0:
        latency = profile.memory_latency * _device_value(
            cost.exposed_round_trips, profile, hints, values["sram_bytes"], "round trips")
    return {
        "tensor": tensor,
        "vector": vector,
        "sfu": sfu,
        "compute": (tensor + vector + sfu) / efficiency,
        "hbm": _dram_bytes(cost, profile, hints, values) / profile.bandwidth,
        "l2": values["hbm_bytes"] / l2_rate if l2_rate else 0.0,
        "latency": latency,
    }


def modelled_time(
    cost: Cost, profile: DeviceProfile, dtype: str | torch.dtype, hints: Hints | None = None
) -> float:
    """Seconds on `profile`: the slower of computing and moving the bytes, plus the
    memory round trips nothing hides (`ceilings` gives each part):

        max(compute, hbm, l2) + latency

    with the profile's measured ceilings where it has them. Memory and compute overlap
    (the loads of one tile run under the arithmetic of another); an exposed round trip
    is by definition one that nothing overlaps.

    A chain of separate kernels takes at least the sum of each one's time, so pricing an
    unfused region as one sum understates it (which makes `rewrite_pays` conservative).
    """
    c = ceilings(cost, profile, dtype, hints)
    return max(c["compute"], c["hbm"], c["l2"]) + c["latency"]


def bound(
    cost: Cost, profile: DeviceProfile, dtype: str | torch.dtype, hints: Hints | None = None
) -> str:
    """"memory" if moving the bytes (HBM or L2, with the exposed latency) takes at least
    as long as the arithmetic, else "compute"."""
    c = ceilings(cost, profile, dtype, hints)
    return "memory" if max(c["hbm"], c["l2"]) + c["latency"] >= c["compute"] else "compute"


def rewrite_pays(
    before: Cost, after: Cost, profile: DeviceProfile, dtype: str | torch.dtype,
    hints: Hints | None = None,
) -> tuple[bool, str]:
    """Whether replacing `before` by `after` is modelled faster (or as fast with fewer
    bytes) on `profile`, and a reason that states both times and both byte counts."""
    t_before, t_after = (modelled_time(c, profile, dtype, hints) for c in (before, after))
    b_before, b_after = (c.evaluate(hints)["hbm_bytes"] for c in (before, after))
    pays = t_after < t_before or (t_after == t_before and b_after < b_before)
    reason = (
        f"{'pays' if pays else 'does not pay'} on {profile.name} ({dtype_key(dtype)}): "
        f"modelled {_seconds(t_after)} after vs {_seconds(t_before)} before, "
        f"HBM {b_after:,} bytes after vs {b_before:,} bytes before"
    )
    return pays, reason


def _seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"
