"""The Cost algebra: HBM bytes, FLOPs and on-chip footprint as sympy expressions in the
sizes, added over the kernels of a region and scaled by repeats.

A Cost may hold the device symbols PROGRAMS_IN_FLIGHT and NUM_SMS, which only the
roofline (ioaware/cost/roofline.py) replaces; `evaluate` gives numbers for the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import sympy
import torch

Size = int | sympy.Expr | torch.SymInt
Hints = Mapping[str | sympy.Symbol, int]


def sym(size: Size | float) -> sympy.Expr:
    """A size as a sympy expression: SymInts become their symbolic expression."""
    if isinstance(size, torch.SymInt):
        return sympy.sympify(size.node.expr)
    return sympy.sympify(size)


# Fields that add up over the kernels of a region, and fields that are a peak over them.
_SUMMED = ("read_bytes", "write_bytes", "flops", "transcendentals", "l2_reread_bytes",
           "tensor_flops", "l2_spill_bytes", "exposed_round_trips")
_PEAK = ("sram_bytes", "l2_working_set")
_FIELDS = ("read_bytes", "write_bytes", "flops", "transcendentals")  # what evaluate() sums
# Summed fields that may hold the device symbols below: priced per device, not evaluated.
_DEVICE_FIELDS = ("l2_spill_bytes", "exposed_round_trips")

# How many programs of one kernel a device runs at once. The L2 working set of a tiled
# kernel depends on it, so costs keep it as a symbol and `modelled_time` substitutes
# the device's number (`programs_in_flight`: SMs times the programs one SM holds).
PROGRAMS_IN_FLIGHT = sympy.Symbol("programs_in_flight", positive=True, integer=True)
# The device's SM count, for costs whose waves of library kernels depend on it (a matmul's
# L2 spill, a row-per-block softmax's waves); `ceilings` and `dram_bytes` substitute it.
NUM_SMS = sympy.Symbol("num_sms", positive=True, integer=True)
_DEVICE_SYMBOLS = (PROGRAMS_IN_FLIGHT, NUM_SMS)

# A fused multiply-add counts this many FLOPs, in every formula here and in every report.
FLOPS_PER_FMA = 2


@dataclasses.dataclass(frozen=True)
class Cost:
    """HBM bytes, FLOPs, transcendentals and on-chip footprint of an op or a region.

    Every field is a sympy expression in the graph's symbolic sizes (plain ints become
    sympy Integers). Costs add with `+` (also `sum(costs)`) and scale with `k * cost`.

    read_bytes, write_bytes: HBM traffic. flops: a fused multiply-add counts 2.
    transcendentals: exp, log, tanh, ... (each also 1 FLOP), priced against the SFUs.
    sram_bytes: shared memory one program of a generated kernel holds (0 for eager ops);
      a sum of costs keeps the largest, since kernels run one after another.
    l2_reread_bytes: the part of read_bytes that re-reads data the same kernel read
      before (FlashAttention's K/V after the first query block); it is served by L2
      when l2_working_set, the bytes those re-reads keep live, fits in the device's L2.
      l2_working_set may contain PROGRAMS_IN_FLIGHT; a sum keeps the largest.
    tensor_flops: the part of `flops` that runs on tensor cores (matmuls, convolutions,
      the attention kernels' two or five matmuls); the rest runs on the CUDA cores.
    l2_spill_bytes: reads a library kernel repeats from DRAM when l2_working_set does not
      fit in L2 (cuBLAS re-reading operand panels wave after wave); not in read_bytes,
      which keeps the IO model's one read per input. May contain NUM_SMS.
    exposed_round_trips: memory round trips on a kernel's critical path that no other
      program hides (waves of a row-per-block softmax); each costs the profile's
      `memory_latency`. May contain NUM_SMS.
    kernel: the generated-kernel family ("selective_scan", ...) whose measured efficiency
      (`DeviceProfile.kernel_efficiency`) scales its compute time; "" for none. A sum
      keeps it where only one side names one.
    """

    read_bytes: sympy.Expr = sympy.S.Zero
    write_bytes: sympy.Expr = sympy.S.Zero
    flops: sympy.Expr = sympy.S.Zero
    transcendentals: sympy.Expr = sympy.S.Zero
    sram_bytes: sympy.Expr = sympy.S.Zero
    l2_reread_bytes: sympy.Expr = sympy.S.Zero
    l2_working_set: sympy.Expr = sympy.S.Zero
    tensor_flops: sympy.Expr = sympy.S.Zero
    l2_spill_bytes: sympy.Expr = sympy.S.Zero
    exposed_round_trips: sympy.Expr = sympy.S.Zero
    kernel: str = ""

    def __post_init__(self) -> None:
        for name in _SUMMED + _PEAK:
            object.__setattr__(self, name, sym(getattr(self, name)))

    @classmethod
    def zero(cls) -> Cost:
        return cls()

    @property
    def hbm_bytes(self) -> sympy.Expr:
        """Bytes read plus bytes written."""
        return self.read_bytes + self.write_bytes

    @property
    def free_symbols(self) -> set[sympy.Symbol]:
        """Size symbols of the fields `evaluate` reports (not the device's symbols)."""
        fields = (*_SUMMED, "sram_bytes")
        found = set().union(*(getattr(self, name).free_symbols for name in fields))
        return found - set(_DEVICE_SYMBOLS)

    def __add__(self, other: Cost) -> Cost:
        if isinstance(other, int) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, Cost):
            return NotImplemented
        summed = {n: getattr(self, n) + getattr(other, n) for n in _SUMMED}
        peaks = {n: _peak(getattr(self, n), getattr(other, n)) for n in _PEAK}
        kernels = {self.kernel, other.kernel} - {""}
        return Cost(**summed, **peaks, kernel=kernels.pop() if len(kernels) == 1 else "")

    __radd__ = __add__

    def __mul__(self, factor: Size) -> Cost:
        """`factor` runs of the same kernels: traffic and work scale, footprints do not."""
        k = sym(factor)
        summed = {n: k * getattr(self, n) for n in _SUMMED}
        return Cost(**summed, **{n: getattr(self, n) for n in _PEAK}, kernel=self.kernel)

    __rmul__ = __mul__

    def subs(self, hints: Hints) -> Cost:
        """The same cost with symbols replaced by `hints` (keys: Symbols or their names)."""
        return Cost(**{n: substitute(getattr(self, n), hints) for n in _SUMMED + _PEAK},
                    kernel=self.kernel)

    def evaluate(self, hints: Hints | None = None) -> dict[str, int]:
        """Numbers for every summed field, `hbm_bytes` and `sram_bytes`; raises if a size
        symbol has no hint. (l2_working_set, l2_spill_bytes and exposed_round_trips need a
        device: see `ceilings` and `dram_bytes`.)"""
        concrete = self.subs(hints or {})
        missing = concrete.free_symbols
        if missing:
            names = sorted(str(s) for s in missing)
            raise ValueError(f"cost depends on {names} with no hint; pass hints={{name: size}}")
        values = {n: to_int(getattr(concrete, n)) for n in _FIELDS}
        values["hbm_bytes"] = values["read_bytes"] + values["write_bytes"]
        values["sram_bytes"] = to_int(concrete.sram_bytes)
        values["l2_reread_bytes"] = to_int(concrete.l2_reread_bytes)
        values["tensor_flops"] = to_int(concrete.tensor_flops)
        return values

    def formulas(self, hints: Hints | None = None) -> dict[str, tuple[str, int | None]]:
        """Each field as printable text beside its value at `hints` (None when a symbol
        has no hint): {"read_bytes": ("8*B*H*N*d", 524288), ...}, simplified."""
        fields = {n: getattr(self, n) for n in (*_FIELDS, "sram_bytes", "l2_reread_bytes")}
        fields["hbm_bytes"] = self.hbm_bytes
        out: dict[str, tuple[str, int | None]] = {}
        for name, expr in fields.items():
            # simplify is slow on floor/ceiling/Min chains and gains nothing there
            rounded = expr.has(sympy.floor, sympy.ceiling, sympy.Min, sympy.Max)
            simple = sympy.factor_terms(expr if rounded else sympy.simplify(expr))
            value = substitute(expr, hints or {})
            out[name] = (str(simple), to_int(value) if not value.free_symbols else None)
        return out


def _peak(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if a == 0:
        return b
    if b == 0 or a == b:
        return a
    return sympy.Max(a, b)


def substitute(expr: sympy.Expr, hints: Hints) -> sympy.Expr:
    """`expr` with its symbols replaced by `hints` (keys: Symbols or their names)."""
    by_name = {str(k): v for k, v in hints.items()}
    mapping = {s: by_name[s.name] for s in expr.free_symbols if s.name in by_name}
    return expr.xreplace({s: sympy.Integer(int(v)) for s, v in mapping.items()})


def to_int(expr: sympy.Expr) -> int:
    """A number of bytes or FLOPs as an int, rounded up where the expression is not whole."""
    return int(expr) if expr.is_Integer else int(sympy.ceiling(expr))


def ceil_div(a: sympy.Expr, b: int) -> sympy.Expr:
    """ceil(a / b): the blocks of `b` that cover `a` (tiles, chunks, waves)."""
    return sympy.ceiling(a / b)
