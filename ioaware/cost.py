"""The cost model: HBM bytes, FLOPs and on-chip footprint of every op, as sympy
expressions in the sizes.

`node_cost` prices one node of the canonical ATen graph, `graph_cost` a whole graph
(with its unpriced nodes); the closed forms `attention_unfused_cost`,
`flash_attention_cost`, `flash_attention_backward_cost`, `selective_scan_cost` and
`linear_scan_cost` price the regions the passes rewrite, before and after (at the
tiles ioaware/tiles.py picks from a profile's SRAM); `ceilings`, `modelled_time`,
`bound`, `dram_bytes` and `rewrite_pays` compare a Cost with a DeviceProfile: time is
the tensor-core, CUDA-core and SFU pipes added (a kernel's pipes wait on each other),
overlapped with memory, plus the round trips nothing hides; `matmul_l2_spill` and
`softmax_row_waves` model what the library kernels do past L2 and per row.
Derivations and conventions: docs/cost-model.md.

Conventions, everywhere in this file:
- Bytes are HBM traffic in the FlashAttention IO model: an op reads each distinct input
  tensor once, at the size of the memory it covers (a broadcast or `expand`ed input
  counts its own, smaller, size), and writes each output once; a tiled kernel counts
  every tile it loads. Which of those loads are re-reads that L2 may serve is a separate
  field, priced per device.
- A fused multiply-add counts 2 FLOPs (FLOPS_PER_FMA); every other arithmetic op,
  compare or select counts 1 per element. A transcendental (exp, log, tanh, erf, rsqrt,
  sqrt, sin, ...) counts 1 FLOP and also 1 in `transcendentals`, which the model prices
  against the special-function units.
- Views, layout changes and `detach`/`alias` cost nothing. A node the model does not know
  is unpriced (`None`), never silently free.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import sympy
import torch
from torch import fx

from ioaware.hardware import DeviceProfile, dtype_key
from ioaware.tiles import (
    attention_forward_sram_bytes,
    padded_head_dim,
    selective_scan_sram_bytes,
)

Size = int | sympy.Expr | torch.SymInt
Hints = Mapping[str | sympy.Symbol, int]

# Default FlashAttention tiles when an op does not say which it uses (FA2's forward tile
# for head_dim 128 on A100/H100: 128 query rows x 64 key rows).
DEFAULT_BLOCK_M = 128
DEFAULT_BLOCK_N = 64
LSE_ITEMSIZE = 4  # lse and delta rows are float32


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
        return Cost(**{n: _subs(getattr(self, n), hints) for n in _SUMMED + _PEAK},
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
        values = {n: _to_int(getattr(concrete, n)) for n in _FIELDS}
        values["hbm_bytes"] = values["read_bytes"] + values["write_bytes"]
        values["sram_bytes"] = _to_int(concrete.sram_bytes)
        values["l2_reread_bytes"] = _to_int(concrete.l2_reread_bytes)
        values["tensor_flops"] = _to_int(concrete.tensor_flops)
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
            value = _subs(expr, hints or {})
            out[name] = (str(simple), _to_int(value) if not value.free_symbols else None)
        return out


def _peak(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if a == 0:
        return b
    if b == 0 or a == b:
        return a
    return sympy.Max(a, b)


def _subs(expr: sympy.Expr, hints: Hints) -> sympy.Expr:
    by_name = {str(k): v for k, v in hints.items()}
    mapping = {s: by_name[s.name] for s in expr.free_symbols if s.name in by_name}
    return expr.xreplace({s: sympy.Integer(int(v)) for s, v in mapping.items()})


def _to_int(expr: sympy.Expr) -> int:
    return int(expr) if expr.is_Integer else int(sympy.ceiling(expr))


# --------------------------------------------------------------------------------------
# Sizes of tensors in node.meta["val"]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _numel(t: torch.Tensor) -> sympy.Expr:
    return sympy.Mul(*(sym(s) for s in t.shape))


def _distinct_numel(t: torch.Tensor) -> sympy.Expr:
    """Elements of memory a tensor covers: an `expand`ed dim (stride 0) covers one."""
    return sympy.Mul(
        *(sym(size) for size, stride in zip(t.shape, t.stride())
          if not (isinstance(stride, int) and stride == 0))
    )


def _nbytes(t: torch.Tensor) -> sympy.Expr:
    return _numel(t) * t.dtype.itemsize


def _val(node: fx.Node) -> Any:
    return node.meta.get("val")


def _out(node: fx.Node) -> torch.Tensor:
    return _tensors(_val(node))[0]


def _write_bytes(node: fx.Node) -> sympy.Expr:
    return sympy.Add(*(_nbytes(t) for t in _tensors(_val(node))))


# Ops that always return a view of all of their input: reading through one reads the input.
_WHOLE_VIEWS = {
    "view", "_unsafe_view", "expand", "expand_as", "view_as", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "alias", "detach", "unflatten", "movedim", "swapaxes",
    "lift_fresh",
}
# Ops that return a view when they can and a copy when they must.
_MAYBE_VIEWS = {"reshape", "flatten", "contiguous", "to", "type_as"}


def _is_alias(node: fx.Node) -> bool:
    """True if the node's output shares memory with its first input (a view, no copy)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    out, inp = _val(node), _val(node.args[0])
    if not isinstance(out, torch.Tensor) or not isinstance(inp, torch.Tensor):
        return False
    if torch._C._is_alias_of(out, inp):
        return True
    return _would_alias(_op_name(node.target), inp, out)


def _would_alias(name: str, inp: torch.Tensor, out: torch.Tensor) -> bool:
    """Decide from static sizes and strides whether `name` could return a view.

    make_fx in "real" mode fakeifies each output on its own, so its meta values carry no
    aliasing; symbolic and fake traces answer through `_is_alias_of` above instead.
    """
    if inp.dtype != out.dtype or inp.device != out.device:
        return False
    sizes = (*inp.shape, *inp.stride(), *out.shape)
    if not all(isinstance(s, int) for s in sizes):
        return False
    probe = torch.empty_strided(inp.shape, inp.stride(), device="meta")
    if name == "contiguous":
        return probe.is_contiguous()
    if name in ("to", "type_as"):
        return True  # same dtype and device: `to` returns self
    try:
        probe.view(out.shape)  # reshape and flatten view exactly when `view` would work
    except RuntimeError:
        return False
    return True


def _storage_root(node: fx.Node) -> fx.Node:
    """Walk back through views that cover their whole input; that node's memory is read."""
    while node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
        name = _op_name(node.target)
        if getattr(node.target, "_overloadname", "") == "dtype":
            break  # view.dtype reinterprets the bytes: a different tensor to read
        if name in _WHOLE_VIEWS or (name in _MAYBE_VIEWS and _is_alias(node)):
            node = node.args[0]
        else:
            break
    return node


def _read_bytes(node: fx.Node) -> sympy.Expr:
    """Bytes of the distinct tensors the node reads, each counted once.

    Inputs that are views of the same memory (x and x.t(), or x and x.expand(...)) are
    one tensor: `mul(x, x.t())` reads x once. Disjoint slices of one tensor stay separate.
    """
    seen: dict[fx.Node, sympy.Expr] = {}
    for inp in node.all_input_nodes:
        if not isinstance(_val(inp), torch.Tensor):
            continue  # SymInt size arguments
        root = _storage_root(inp)
        t = _val(root)
        seen[root] = _distinct_numel(t) * t.dtype.itemsize
    return sympy.Add(*seen.values())


def _reads_and_writes(node: fx.Node) -> Cost:
    return Cost(read_bytes=_read_bytes(node), write_bytes=_write_bytes(node))


# --------------------------------------------------------------------------------------
# Per-op rules. A rule takes the node and returns its Cost (or None when it cannot price
# this particular call). Rules are keyed by the op's name without namespace or overload.

Rule = Callable[[fx.Node], Cost | None]
_RULES: dict[tuple[str, str], Rule] = {}


def _op_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    return schema.name.split("::")[-1] if schema is not None else ""


def _prices(*names: str, namespace: str = "aten") -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for name in names:
            _RULES[(namespace, name)] = rule
        return rule

    return register


def _free(node: fx.Node) -> Cost:
    return Cost()


# Views and metadata. reshape/contiguous/to copy when they must: priced as copies then.
_prices(
    "view", "_unsafe_view", "expand", "expand_as", "view_as", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "alias", "detach", "slice", "select", "narrow", "as_strided",
    "unflatten", "movedim", "swapaxes", "split", "split_with_sizes", "chunk",
    "unbind", "diagonal", "unfold", "lift_fresh", "real", "view_as_real", "view_as_complex",
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "_functional_assert_async",
    "sym_constrain_range", "sym_constrain_range_for_size", "_functional_sym_constrain_range",
)(_free)


@_prices(*_MAYBE_VIEWS)
def _maybe_copy(node: fx.Node) -> Cost:
    # read MN, write MN when the result cannot alias the input; nothing when it can.
    return Cost() if _is_alias(node) else _reads_and_writes(node)


_prices(
    "clone", "_to_copy", "lift_fresh_copy", "repeat", "repeat_interleave", "roll",
    "flip", "constant_pad_nd", "pad", "cat", "stack", "tril", "triu", "_unsafe_index",
    "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter", "index_copy",
    "masked_scatter", "masked_select", "nonzero", "one_hot", "index_put", "_unsafe_index_put",
    "_index_put_impl", "scatter", "upsample_nearest1d", "upsample_nearest2d",
)(_reads_and_writes)  # read every input once, write the output; no arithmetic


@_prices("copy")
def _copy(node: fx.Node) -> Cost:
    # copy(self, src) and copy_: read src (at its own, broadcast, size), write self's size;
    # self's old values are overwritten, never read
    src = _val(_storage_root(node.args[1]))
    return Cost(read_bytes=_distinct_numel(src) * src.dtype.itemsize,
                write_bytes=_write_bytes(node))


@_prices("fill", "zero")
def _fill(node: fx.Node) -> Cost:
    # fill(self, value) / zero_: write N; a tensor `value` is one element, read once
    value = node.args[1] if len(node.args) > 1 else None
    read = _val(value).dtype.itemsize if isinstance(value, fx.Node) else 0
    return Cost(read_bytes=read, write_bytes=_write_bytes(node))


@_prices(
    "ones", "zeros", "full", "arange", "ones_like", "zeros_like", "full_like", "new_ones",
    "new_zeros", "new_full", "scalar_tensor", "linspace", "eye", "rand", "randn", "randint",
    "rand_like", "randn_like", "randint_like", "bernoulli", "uniform", "normal", "randperm",
    "tril_indices", "triu_indices", "exponential",
)
def _factory(node: fx.Node) -> Cost:
    # write N, read nothing (the *_like ops only read shapes). Random numbers are priced
    # by their write alone: generation is cheap next to the store.
    return Cost(write_bytes=_write_bytes(node))


# FLOPs and transcendentals per output element of pointwise ops (default 1 and 0).
_POINTWISE_FLOPS: dict[str, tuple[int, int]] = {
    **{op: (1, 1) for op in (
        "exp", "exp2", "log", "log2", "log10", "log1p", "expm1", "tanh", "erf", "erfc",
        "sqrt", "rsqrt", "sin", "cos", "tan", "atan", "asin", "acos", "sinh", "cosh",
    )},
    "sigmoid": (4, 1),  # neg, exp, add, reciprocal
    "silu": (4, 1),  # x / (1 + exp(-x)): neg, exp, add, div
    "softplus": (3, 2),  # log1p(exp(x)) with a compare for the linear region
    "mish": (6, 3),  # x * tanh(softplus(x))
    "elu": (3, 1),
    "addcmul": (2, 0),
    "addcdiv": (2, 0),
    "lerp": (2, 0),
    "hardswish": (4, 0),
    "hardsigmoid": (3, 0),
    "atan2": (1, 1),
    "erfinv": (1, 1),
    "logit": (3, 1),  # log(x / (1 - x)): sub, div, log
    "log_sigmoid_forward": (4, 2),  # -softplus(-x): neg, exp, log1p, neg (and a buffer)
    "outer": (1, 0),  # a_i · b_j
    "ger": (1, 0),
}
_POINTWISE = {
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "reciprocal", "square", "sign",
    "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder", "clamp", "clamp_min",
    "clamp_max", "clip", "maximum", "minimum", "fmax", "fmin", "where", "masked_fill",
    "relu", "leaky_relu", "hardtanh", "threshold", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_not", "logical_and", "logical_or", "logical_xor", "bitwise_and",
    "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__", "__xor__",
    "__invert__", "isnan", "isinf", "isfinite", "nan_to_num", "copysign", "signbit",
    "heaviside", "xlogy", *_POINTWISE_FLOPS,
}


def _per_element(node: fx.Node, flops: int, transcendentals: int) -> Cost:
    n = _numel(_out(node))
    return _reads_and_writes(node) + Cost(flops=flops * n, transcendentals=transcendentals * n)


@_prices(*_POINTWISE)
def _pointwise(node: fx.Node) -> Cost:
    # read each distinct input (its own broadcast size), write the output
    flops, transcendentals = _POINTWISE_FLOPS.get(_op_name(node.target), (1, 0))
    return _per_element(node, flops, transcendentals)


@_prices("gelu")
def _gelu(node: fx.Node) -> Cost:
    if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
        # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): x^3 (2), mul, add, mul, tanh, add, mul, mul
        return _per_element(node, 9, 1)
    return _per_element(node, 5, 1)  # 0.5 x (1 + erf(x / sqrt 2)): mul, erf, add, mul, mul


@_prices("pow")
def _pow(node: fx.Node) -> Cost:
    exponent = node.args[1] if len(node.args) > 1 else None
    if isinstance(exponent, (int, float)) and float(exponent).is_integer() and exponent >= 0:
        return _per_element(node, max(int(exponent) - 1, 1), 0)  # repeated multiplies
    return _per_element(node, 1, 1)  # exp2(y * log2(x))


# Reductions: FLOPs per input element (a compare or an add each; var needs sub, mul, add).
_REDUCTION_FLOPS: dict[str, tuple[int, int]] = {
    "sum": (1, 0), "mean": (1, 0), "amax": (1, 0), "amin": (1, 0), "argmax": (1, 0),
    "argmin": (1, 0), "prod": (1, 0), "any": (1, 0), "all": (1, 0), "max": (1, 0),
    "min": (1, 0), "nansum": (1, 0), "var": (3, 0), "std": (3, 0), "var_mean": (3, 0),
    "count_nonzero": (1, 0), "aminmax": (2, 0), "logcumsumexp": (4, 1),
    "std_mean": (3, 0), "logsumexp": (4, 1), "linalg_vector_norm": (2, 0),
    "norm": (2, 0), "cumsum": (1, 0), "cumprod": (1, 0), "cummax": (1, 0), "cummin": (1, 0),
}


@_prices(*_REDUCTION_FLOPS)
def _reduction(node: fx.Node) -> Cost:
    # read N, write the reduced output (cumsum: write N)
    flops, transcendentals = _REDUCTION_FLOPS[_op_name(node.target)]
    n = _numel(_val(node.args[0]))
    return _reads_and_writes(node) + Cost(flops=flops * n, transcendentals=transcendentals * n)


@_prices("max", "min")  # registered after _reduction: overrides it
def _max_min(node: fx.Node) -> Cost:
    if node.target._overloadname == "other":  # max(a, b): pointwise
        return _per_element(node, 1, 0)
    return _reduction(node)


@_prices("_softmax", "softmax", "_log_softmax", "log_softmax", "_safe_softmax")
def _softmax(node: fx.Node) -> Cost:
    """read N, write N; per element: max, sub, exp, add, and a mul by 1/sum (log_softmax:
    a sub of log(sum)): 5 FLOPs and 1 transcendental. The per-row reciprocal or log (one
    per row, not per element) is not counted. Rows too long for PyTorch's warp-per-row
    kernel run one per CTA: `softmax_row_waves` of exposed round trips."""
    x = _val(node.args[0])
    n = _numel(x)
    dim = node.args[1] if len(node.args) > 1 else -1
    waves = sympy.S.Zero
    if isinstance(dim, int) and x.dim() > 0 and dim % x.dim() == x.dim() - 1:
        waves = softmax_row_waves(n / sym(x.shape[-1]), x.shape[-1], x.dtype.itemsize)
    return _reads_and_writes(node) + Cost(flops=5 * n, transcendentals=n,
                                          exposed_round_trips=waves)


# PyTorch's CUDA softmax over a contiguous last dim (aten/src/ATen/native/cuda/SoftMax.cu):
# rows of at most 1024 elements and 4 KB go to a warp-per-row kernel that packs many rows
# into a CTA; longer rows get one CTA each (SoftMax_getBlockSize: ILP = 16 bytes / itemsize
# elements a thread loads at once; threads = min(cols / ILP, 1024), halved when ILP > 1,
# rounded up to a power of two, at least a warp). A row that fits is staged in shared
# memory. An SM holds 2048 threads and 32 CTAs (sm80, sm90) and ~227 KB of shared memory.
SOFTMAX_WARP_ROW_LIMIT = (1024, 4096)  # (elements, bytes)
SOFTMAX_MAX_THREADS, THREADS_PER_SM, CTAS_PER_SM = 1024, 2048, 32
SHARED_MEMORY_PER_SM = 227 * 1024
SOFTMAX_STAGED_ROW_LIMIT = 48 * 1024  # rows up to the default dynamic shared memory


def softmax_threads(cols: int, itemsize: int) -> int:
    """Threads of PyTorch's one-CTA-per-row softmax for rows of `cols` elements."""
    ilp = max(1, 16 // itemsize)
    most = min(cols // ilp, SOFTMAX_MAX_THREADS)
    if ilp > 1:
        most //= 2
    threads = 1
    while threads < most:
        threads *= 2
    return max(threads, 32)


def softmax_row_waves(rows: Size, cols: Size, itemsize: int) -> sympy.Expr:
    """Exposed memory round trips of PyTorch's one-CTA-per-row softmax, 0 for rows its
    warp-per-row kernel takes (or a symbolic row length, which the model cannot place).

    A CTA loads its row, reduces it twice (max, then sum of exp) and writes it; nothing
    else runs in it while the load is in flight, and only NUM_SMS·k rows are in flight,
        k = min(2048 // threads, 32, 227 KB // row bytes)      (threads: softmax_threads;
                                           the last term only for rows staged, <= 48 KB)
    so each wave of rows waits one round trip the others do not hide:
        waves = ceil(rows / (NUM_SMS·k))
    Each costs the profile's `memory_latency` on top of the bandwidth time."""
    cols = sym(cols)
    if not cols.is_number:
        return sympy.S.Zero
    elements, nbytes = SOFTMAX_WARP_ROW_LIMIT
    if int(cols) <= elements and int(cols) * itemsize <= nbytes:
        return sympy.S.Zero
    threads = softmax_threads(int(cols), itemsize)
    row_bytes = int(cols) * itemsize
    staged = row_bytes if row_bytes <= SOFTMAX_STAGED_ROW_LIMIT else 0
    per_sm = max(1, min(THREADS_PER_SM // threads, CTAS_PER_SM,
                        SHARED_MEMORY_PER_SM // max(staged, 1)))
    return sympy.ceiling(sym(rows) / (NUM_SMS * per_sm))


@_prices("native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm",
         "native_group_norm", "group_norm")
def _norm(node: fx.Node) -> Cost:
    """read x, weight, bias; write y (and mean/rstd where the op returns them).
    layer/group norm: 8 FLOPs per element (mean: add; variance: sub, mul, add; normalise:
    sub, mul; affine: mul, add); RMS norm: 4 (square, add, mul by rstd, mul by weight).
    One rsqrt per normalised row."""
    name = _op_name(node.target)
    x = _val(node.args[0])
    n = _numel(x)
    if name in ("native_group_norm", "group_norm"):
        groups = node.args[6] if name == "native_group_norm" else node.args[1]
        rows = sym(x.shape[0]) * sym(groups)
    else:
        normalized = node.args[1]
        rows = n / sympy.Mul(*(sym(s) for s in normalized))
    per_element = 4 if "rms" in name else 8
    return _reads_and_writes(node) + Cost(flops=per_element * n, transcendentals=rows)


@_prices("native_dropout")
def _dropout(node: fx.Node) -> Cost:
    # read N, write N + N (the output and the bool mask); a compare and a scale per element
    return _per_element(node, 2, 0)


@_prices("embedding", "index_select", "gather", "index", "take_along_dim")
def _gather(node: fx.Node) -> Cost:
    """read the indices and only the rows they pick (not the whole table), write them."""
    source = node.args[0]
    index_nodes = [n for n in node.all_input_nodes if n is not source]
    out = _out(node)
    index_bytes = sum(
        (_distinct_numel(_val(n)) * _val(n).dtype.itemsize for n in index_nodes
         if isinstance(_val(n), torch.Tensor)),
        sympy.Integer(0),
    )
    picked = _numel(out) * _val(source).dtype.itemsize
    return Cost(read_bytes=index_bytes + picked, write_bytes=_nbytes(out))


@_prices("scatter_add", "index_add", "scatter_reduce", "index_reduce")
def _scatter_add(node: fx.Node) -> Cost:
    """Out of place: read self, index and src, write self's size; one add (or reduce)
    per source element."""
    src = node.args[3] if len(node.args) > 3 else node.kwargs.get("src")
    n = _numel(_val(src)) if isinstance(src, fx.Node) else sympy.S.Zero
    return _reads_and_writes(node) + Cost(flops=n)


@_prices("sort", "argsort", "topk", "kthvalue", "median", "mode", "msort")
def _selection(node: fx.Node) -> Cost:
    """read N, write the values and indices kept; sort/argsort/msort compare N·ceil(log2 n)
    times along a dim of n (a comparison sort's bound), topk and the order statistics N."""
    x = _val(node.args[0])
    n_all = _numel(x)
    name = _op_name(node.target)
    flops = n_all
    if name in ("sort", "argsort", "msort") and x.dim() > 0:
        dim = _schema_arg(node, "dim", -1)
        length = sym(x.shape[dim if isinstance(dim, int) else -1])
        flops = n_all * sympy.ceiling(sympy.log(sympy.Max(length, 2), 2))
    return _reads_and_writes(node) + Cost(flops=flops)


@_prices("convolution", "_convolution", "conv1d", "conv2d", "conv3d",
         "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _convolution(node: fx.Node) -> Cost:
    """read x, weight (and bias), write y: 2·numel(y)·(C_in / groups)·prod(kernel) FLOPs,
    plus numel(y) for a bias. The weight [C_out, C_in/groups, k...] carries
    C_in/groups and the kernel, so 2·numel(y)·numel(weight)/C_out; a transposed
    convolution's weight is [C_in, C_out/groups, k...] and does 2·numel(x)·numel(w)/C_in."""
    x, w = _val(node.args[0]), _val(node.args[1])
    name = _op_name(node.target)
    transposed = "transpose" in name or (
        name in ("convolution", "_convolution") and bool(_schema_arg(node, "transposed"))
    )
    if transposed:
        flops = 2 * _numel(x) * _numel(w) / sym(w.shape[0])
    else:
        flops = 2 * _numel(_out(node)) * _numel(w) / sym(w.shape[0])
    tensor_flops = flops
    bias = node.args[2] if len(node.args) > 2 else None
    if isinstance(bias, fx.Node):
        flops += _numel(_out(node))
    return _reads_and_writes(node) + Cost(flops=flops, tensor_flops=tensor_flops)


@_prices("_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
         "native_batch_norm", "batch_norm", "instance_norm")
def _batch_norm(node: fx.Node) -> Cost:
    """read x, weight, bias, running mean and var, write y (and saved stats). Inference:
    (x - mean)·rstd·w + b is 4 FLOPs an element; training adds the batch statistics'
    4 (mean 1, variance 3). One rsqrt per channel."""
    x = _val(node.args[0])
    n = _numel(x)
    channels = sym(x.shape[1]) if x.dim() > 1 else sympy.Integer(1)
    training = _op_name(node.target) == "instance_norm" or bool(
        _schema_arg(node, "training", _op_name(node.target) == "_native_batch_norm_legit")
    )
    return _reads_and_writes(node) + Cost(flops=(8 if training else 4) * n,
                                          transcendentals=channels)


@_prices("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
         "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
         "adaptive_max_pool2d")
def _pool(node: fx.Node) -> Cost:
    """read x, write y (and indices): one add or compare per window element,
    numel(y)·prod(kernel); adaptive pools, whose windows tile x, numel(x)."""
    kernel = _schema_arg(node, "kernel_size")
    if isinstance(kernel, (list, tuple)) and all(isinstance(k, int) for k in kernel):
        flops = _numel(_out(node)) * math.prod(kernel)
    elif isinstance(kernel, int):
        flops = _numel(_out(node)) * kernel
    else:
        flops = _numel(_val(node.args[0]))
    return _reads_and_writes(node) + Cost(flops=flops)


@_prices("nll_loss_forward", "nll_loss", "nll_loss_nd", "nll_loss2d_forward")
def _nll_loss(node: fx.Node) -> Cost:
    """read the targets and only the log-probabilities they pick (and their weights),
    write the loss (and total weight): a gather and a sum, 1 FLOP per picked element."""
    target = _val(node.args[1])
    picked = _numel(target)
    logp = _val(node.args[0])
    weight = _schema_arg(node, "weight")
    weight_bytes = picked * _val(weight).dtype.itemsize if isinstance(weight, fx.Node) else 0
    return Cost(
        read_bytes=_distinct_numel(target) * target.dtype.itemsize
        + picked * logp.dtype.itemsize + weight_bytes,
        write_bytes=_write_bytes(node), flops=picked,
    )


@_prices("cross_entropy_loss")
def _cross_entropy(node: fx.Node) -> Cost:
    """log_softmax and nll_loss in one op: read logits and targets, write the loss;
    5 FLOPs and 1 exp per logit (as `_softmax`) and 1 per target."""
    logits, target = _val(node.args[0]), _val(node.args[1])
    n = _numel(logits)
    return _reads_and_writes(node) + Cost(flops=5 * n + _numel(target), transcendentals=n)


@_prices("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
def _pointwise_loss(node: fx.Node) -> Cost:
    # read both, write the (reduced) loss: sub, square or abs, add per element
    return _reads_and_writes(node) + Cost(flops=3 * _numel(_val(node.args[0])))


@_prices("binary_cross_entropy", "binary_cross_entropy_with_logits")
def _bce(node: fx.Node) -> Cost:
    # -(y·log p + (1-y)·log(1-p)): 2 logs and 5 FLOPs an element (with logits: a softplus)
    return _reads_and_writes(node) + Cost(flops=7 * _numel(_val(node.args[0])),
                                          transcendentals=2 * _numel(_val(node.args[0])))


@_prices("bucketize", "searchsorted")
def _bucketize(node: fx.Node) -> Cost:
    """read the values and the boundaries, write the indices: a binary search,
    ceil(log2 n) compares per value for n boundaries."""
    name = _op_name(node.target)
    values = node.args[1] if name == "searchsorted" else node.args[0]
    bounds = node.args[0] if name == "searchsorted" else node.args[1]
    n = _numel(_val(values)) if isinstance(values, fx.Node) else sympy.Integer(1)
    length = sym(_val(bounds).shape[-1])
    return _reads_and_writes(node) + Cost(
        flops=n * sympy.ceiling(sympy.log(sympy.Max(length, 2), 2))
    )


@_prices("_local_scalar_dense", "item")
def _scalar_read(node: fx.Node) -> Cost:
    return Cost(read_bytes=_val(node.args[0]).dtype.itemsize)


# Matmuls: FLOPs = 2 * (output elements) * K, plus one add per output element for a bias.
# out numel carries M, N and every batch dim, so one formula covers mm/bmm/matmul/linear.
_MATMUL_OPERAND = {"mm": 0, "bmm": 0, "matmul": 0, "mv": 0, "dot": 0, "vdot": 0,
                   "linear": 0, "addmm": 1, "baddbmm": 1, "addmv": 1}


# The output tile one CTA of cuBLAS's large 16-bit GEMMs computes on Hopper (128 x 256,
# or 256 x 128: the wave footprint below is the same for either), one CTA per SM.
MATMUL_TILE = (128, 256)


@_prices(*_MATMUL_OPERAND)
def _matmul(node: fx.Node) -> Cost:
    """read A (M x K) and B (K x N) (and the bias), write C (M x N): 2 M N K FLOPs, on
    tensor cores (not mv/dot); the bias add on CUDA cores. Past L2: `matmul_l2_spill`."""
    name = _op_name(node.target)
    a = _val(node.args[_MATMUL_OPERAND[name]])
    out = _out(node)
    out_elements = _numel(out)
    flops = 2 * out_elements * sym(a.shape[-1])
    tensor_flops = flops if name not in ("mv", "dot", "vdot", "addmv") else sympy.S.Zero
    has_bias = name in ("addmm", "baddbmm", "addmv") or (
        name == "linear" and len(node.args) > 2 and node.args[2] is not None
    )
    if has_bias:
        flops += out_elements
    cost = _reads_and_writes(node) + Cost(flops=flops, tensor_flops=tensor_flops)
    b = _val(node.args[_MATMUL_OPERAND[name] + 1])
    if tensor_flops == 0 or out.dim() < 2 or not isinstance(b, torch.Tensor) or b.dim() < 2:
        return cost
    N, K = sym(out.shape[-1]), sym(a.shape[-1])
    if b.dim() == 2:  # one weight: every leading dim of A is more rows of C
        batch, M = sympy.S.One, out_elements / N
    else:
        batch, M = out_elements / (sym(out.shape[-2]) * N), sym(out.shape[-2])
    spill, working_set = matmul_l2_spill(M, N, K, a.dtype.itemsize, b.dtype.itemsize)
    return cost + Cost(l2_spill_bytes=batch * spill, l2_working_set=working_set)


def matmul_l2_spill(
    M: Size, N: Size, K: Size, itemsize_a: int, itemsize_b: int,
    tile: tuple[int, int] = MATMUL_TILE,
) -> tuple[sympy.Expr, sympy.Expr]:
    """DRAM reads a tiled GEMM C = A·B repeats when A and B do not stay in L2, and the
    working set (A and B) that L2 must hold for it not to: (spill, working_set).

    The library runs C in waves of P = NUM_SMS output tiles of Tm x Tn (`tile`, one CTA
    per SM). Within a wave the CTAs walk K together, so L2 serves each A row-panel
    (Tm x K) and B column-panel (K x Tn) to every CTA of the wave that shares it: a wave
    reads from DRAM the distinct panels it touches. Its P tiles form a block of g tile
    rows by c tile columns, as square in elements as the tile allows (the tile
    scheduler's swizzle keeps a wave compact), g = min(P, ceil(sqrt(P·Tn/Tm))) (near
    the minimum of g·Tm + (P/g)·Tn), c = ceil(P/g), both clipped to the grid:
        per wave  (min(g·Tm, M)·K·it_a + min(c·Tn, N)·K·it_b)
        reads     ceil(ceil(M/Tm)·ceil(N/Tn) / P) waves of it
        spill     max(0, reads - (M·K·it_a + K·N·it_b))
    Nothing survives from one wave to the next unless all of A and B stay in L2, which
    is the working set: when it fits, L2 serves the re-reads and only the compulsory
    bytes reach DRAM. Derivation and the 8192³ check: docs/cost-model.md.
    """
    M, N, K = sym(M), sym(N), sym(K)
    tm, tn = tile
    P = NUM_SMS
    rows, cols = _ceil_div(M, tm), _ceil_div(N, tn)
    g = sympy.Min(rows, P, sympy.ceiling(sympy.sqrt(P * tn / tm)))
    c = sympy.Min(cols, sympy.ceiling(P / g))
    per_wave = (sympy.Min(g * tm, M) * itemsize_a + sympy.Min(c * tn, N) * itemsize_b) * K
    waves = sympy.ceiling(rows * cols / P)
    compulsory = M * K * itemsize_a + K * N * itemsize_b
    return sympy.Max(0, waves * per_wave - compulsory), compulsory


# --------------------------------------------------------------------------------------
# Attention ops: priced as the fused, IO-aware kernel (flash_attention_cost).


def _schema_arg(node: fx.Node, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    for i, argument in enumerate(node.target._schema.arguments):
        if argument.name == name:
            return node.args[i] if i < len(node.args) else default
    return default


def _heads_and_batch(t: torch.Tensor) -> tuple[sympy.Expr, sympy.Expr]:
    batch = sympy.Mul(*(sym(s) for s in t.shape[:-3]))
    heads = sym(t.shape[-3]) if t.dim() >= 3 else sympy.Integer(1)
    return batch, heads


@_prices(
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)
def _sdpa(node: fx.Node) -> Cost:
    """The fused kernel's traffic (flash_attention_cost with the default tiles), plus one
    read of attn_mask/attn_bias at its own (broadcast) size when there is one."""
    q, k, v = (_val(node.args[i]) for i in range(3))
    batch, hq = _heads_and_batch(q)
    _, hkv = _heads_and_batch(k)
    causal = bool(_schema_arg(node, "is_causal", False))
    cost = flash_attention_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
    )
    mask = _schema_arg(node, "attn_mask")
    if mask is None:
        mask = _schema_arg(node, "attn_bias")
    if isinstance(mask, fx.Node) and isinstance(_val(mask), torch.Tensor):
        m = _val(_storage_root(mask))
        cost += Cost(read_bytes=_distinct_numel(m) * m.dtype.itemsize)
    return cost


@_prices("flash_attention", namespace="ioaware")
def _ioaware_flash_attention(node: fx.Node) -> Cost:
    """ioaware.flash_attention(q, k, v, scale, causal) -> (out, lse)."""
    q, k, v = (_val(node.args[i]) for i in range(3))
    batch, hq = _heads_and_batch(q)
    _, hkv = _heads_and_batch(k)
    causal = bool(_schema_arg(node, "causal", node.args[4] if len(node.args) > 4 else False))
    return flash_attention_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
        block_m=node.kwargs.get("block_m", DEFAULT_BLOCK_M),
        block_n=node.kwargs.get("block_n", DEFAULT_BLOCK_N),
    )


@_prices("flash_attention_backward", namespace="ioaware")
def _ioaware_flash_attention_backward(node: fx.Node) -> Cost:
    """ioaware.flash_attention_backward(dout, q, k, v, out, lse, scale, causal, dlse)
    -> (dq, dk, dv); an incoming dlse (fp32, one per query row) is read once more."""
    q, k, v = (_val(node.args[i]) for i in (1, 2, 3))
    batch, hq = _heads_and_batch(q)
    _, hkv = _heads_and_batch(k)
    causal = bool(_schema_arg(node, "causal", node.args[7] if len(node.args) > 7 else False))
    cost = flash_attention_backward_cost(
        batch, hq, hkv, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1],
        q.dtype.itemsize, causal,
        block_m=node.kwargs.get("block_m", DEFAULT_BLOCK_M),
        block_n=node.kwargs.get("block_n", DEFAULT_BLOCK_N),
    )
    dlse = _schema_arg(node, "dlse")
    if isinstance(dlse, fx.Node) and isinstance(_val(dlse), torch.Tensor):
        cost += Cost(read_bytes=_numel(_val(dlse)) * LSE_ITEMSIZE)
    return cost


def _tensor_arg(node: fx.Node, name: str) -> torch.Tensor | None:
    value = _schema_arg(node, name)
    if isinstance(value, fx.Node) and isinstance(_val(value), torch.Tensor):
        return _val(value)
    return None


@_prices("selective_scan", "selective_scan_backward", namespace="ioaware")
def _ioaware_selective_scan(node: fx.Node) -> Cost | None:
    """ioaware.selective_scan(u, delta, A, B, C, D?, z?, delta_bias?, delta_softplus, h0?)
    -> (y, h_last), and its _backward (dy, dh_last, the same inputs) -> the gradients:
    `selective_scan_cost` at the op's shapes; None (unpriced) if the schema does not
    name u, delta, A, B (u: [Bt, Dc, L], B: [Bt, G, L, N])."""
    u, b, a = (_tensor_arg(node, n) for n in ("u", "B", "A"))
    if u is None or b is None or a is None or _tensor_arg(node, "delta") is None:
        return None
    if u.dim() != 3 or b.dim() != 4:
        return None
    return selective_scan_cost(
        u.shape[0], u.shape[1], u.shape[2], a.shape[-1], u.dtype.itemsize,
        groups=b.shape[1], has_D=_tensor_arg(node, "D") is not None,
        has_z=_tensor_arg(node, "z") is not None,
        has_delta_bias=_tensor_arg(node, "delta_bias") is not None,
        delta_softplus=bool(_schema_arg(node, "delta_softplus", False)),
        has_h0=_tensor_arg(node, "h0") is not None,
        backward=_op_name(node.target) == "selective_scan_backward",
    )


@_prices("linear_scan", namespace="ioaware")
def _ioaware_linear_scan(node: fx.Node) -> Cost | None:
    """ioaware.linear_scan(a, b, h0?) -> h, a and b [R, L, F]: `linear_scan_cost`."""
    a = _tensor_arg(node, "a")
    if a is None or a.dim() != 3:
        return None
    return linear_scan_cost(a.shape[0], a.shape[1], a.shape[2], a.dtype.itemsize,
                            has_h0=_tensor_arg(node, "h0") is not None)


# Python-level calls make_fx leaves for size arithmetic (s0 * s1, s0 // 2, ...).
_SIZE_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.pow, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge, operator.getitem, math.ceil, math.floor,
    torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not,
}


def node_cost(node: fx.Node) -> Cost | None:
    """The HBM bytes, FLOPs and transcendentals of one node; None if the model has no rule.

    placeholder / get_attr / output nodes move nothing themselves (their consumers read).
    """
    if node.op in ("placeholder", "get_attr", "output"):
        return Cost()
    if node.op != "call_function":
        return None
    if node.target in _SIZE_ARITHMETIC:
        return Cost()
    namespace = getattr(node.target, "namespace", None)
    name = _op_name(node.target)
    rule = _RULES.get((namespace, name))
    if rule is None and name.endswith("_") and not name.endswith("__"):
        # an in-place op (add_, copy_, detach_) moves what its out-of-place form does:
        # it reads its inputs, self included, and writes self
        rule = _RULES.get((namespace, name[:-1]))
    return rule(node) if rule is not None else None


class GraphCost(NamedTuple):
    """A graph's total and each node's cost; unpacks as `total, per_node`.

    The total leaves out unpriced nodes, so read it with `num_unpriced` beside it."""

    total: Cost
    per_node: list[tuple[fx.Node, Cost | None]]

    @property
    def unpriced(self) -> list[fx.Node]:
        """Nodes the model has no rule for (not counted in `total`)."""
        return [node for node, c in self.per_node if c is None]

    @property
    def num_unpriced(self) -> int:
        return len(self.unpriced)

    def unpriced_ops(self) -> dict[str, int]:
        """How many nodes of each unpriced op, by the op's name: {"aten.foo.default": 2}."""
        counts: dict[str, int] = {}
        for node in self.unpriced:
            name = str(node.target) if node.op == "call_function" else node.op
            counts[name] = counts.get(name, 0) + 1
        return counts


def graph_cost(gm: fx.GraphModule) -> GraphCost:
    """Sum of every priced node's cost, and each node with its cost (None: unpriced)."""
    per_node = [(node, node_cost(node)) for node in gm.graph.nodes]
    total = sum((c for _, c in per_node if c is not None), Cost())
    return GraphCost(total, per_node)


def size_hints(gm: fx.GraphModule) -> dict[sympy.Symbol, int]:
    """The example value of every size symbol in the graph (from its ShapeEnv)."""
    for node in gm.graph.nodes:
        for value in _flat(_val(node)):
            shape_env = None
            if isinstance(value, torch.SymInt):
                shape_env = value.node.shape_env
            elif isinstance(value, torch.Tensor):
                shape_env = getattr(getattr(value, "fake_mode", None), "shape_env", None)
            if shape_env is not None:
                # torch 2.13 renamed var_to_val (still there, deprecated) to backed_var_to_val
                values = (shape_env.backed_var_to_val if hasattr(shape_env, "backed_var_to_val")
                          else shape_env.var_to_val)
                if values:
                    return {s: int(v) for s, v in values.items()}
    return {}


def _flat(value: Any) -> Iterable[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flat(v)
    elif value is not None:
        yield value


# --------------------------------------------------------------------------------------
# Attention regions in closed form.


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


def _ceil_div(a: sympy.Expr, b: int) -> sympy.Expr:
    return sympy.ceiling(a / b)


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
    T = _ceil_div(Nq, block_m)
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
    last = sympy.Min(Nk, _ceil_div(T * block_m, block_n) * block_n)
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
    Tn = _ceil_div(Nk, block_n)
    k = max(block_m // block_n, 1)
    step = max(block_m, block_n)
    G = sympy.Min(Tn, k * _ceil_div(Nq, step))
    q = sympy.floor(G / k)
    r = G - k * q
    return G * Nq - step * (k * q * (q - 1) / 2 + r * q)


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
    served by L2 while what they re-read stays there (`_kv_working_set`).
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = (sym(x) for x in (B, Hq, Hkv, Nq, Nk, D, Dv))
    _check_heads(Hq, Hkv)
    density = _block_density(block_density)
    it = sympy.Integer(itemsize)
    if causal:
        key_rows, pairs = causal_forward_blocks(Nq, Nk, block_m, block_n)
    else:
        _check_tiles(block_m, block_n)
        key_rows, pairs = _ceil_div(Nq, block_m) * Nk, Nq * Nk
    key_rows, pairs = density * key_rows, density * pairs
    bh = B * Hq
    dense_rows = not causal and density == 1
    rereads = key_rows - Nk if dense_rows else sympy.Max(0, key_rows - Nk)
    return Cost(
        read_bytes=bh * (Nq * D + key_rows * (D + Dv)) * it,
        write_bytes=bh * (Nq * Dv * it + Nq * LSE_ITEMSIZE),
        flops=bh * 2 * pairs * (D + Dv),
        tensor_flops=bh * 2 * pairs * (D + Dv),
        transcendentals=bh * pairs,
        sram_bytes=attention_forward_sram_bytes(block_m, block_n, num_stages, D, Dv, itemsize),
        l2_reread_bytes=bh * rereads * (D + Dv) * it,
        l2_working_set=_kv_working_set(
            bh, _ceil_div(Nq, block_m), Nk * (D + Dv) * it,
            num_stages * block_n * (D + Dv) * it,
        ),
    )


def _kv_working_set(
    heads: sympy.Expr, blocks_per_head: sympy.Expr, head_bytes: sympy.Expr,
    window_bytes: sympy.Expr,
) -> sympy.Expr:
    """Bytes L2 must keep for a tiled attention kernel's re-reads to hit it.

    Programs start in grid order, the T blocks of one head side by side, and each
    streams its head's K/V from the first block to the last. With P programs in flight:
    - T <= P: a head's programs run together, in lockstep, so a K/V block one of them
      loads is re-read by the others while it is still in flight: only the pipeline
      windows (`window_bytes` per head) of the min(heads, ceil(P/T) + 1) heads in flight
      are live.
    - T > P: a head's programs run in successive waves, and each wave re-reads all of
      the head's K/V (`head_bytes`) after the last wave streamed it; at a change of head
      two heads are live.
    """
    P = PROGRAMS_IN_FLIGHT
    lockstep = sympy.Min(heads, sympy.ceiling(P / blocks_per_head) + 1) * window_bytes
    waves = sympy.Min(heads, 2) * head_bytes
    return sympy.Piecewise((waves, blocks_per_head > P), (lockstep, True))


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
    working set is the larger of theirs (`_kv_working_set`, a kv head for the dK/dV pass).
    """
    B, Hq, Hkv, Nq, Nk, D, Dv = (sym(x) for x in (B, Hq, Hkv, Nq, Nk, D, Dv))
    _check_heads(Hq, Hkv)
    density = _block_density(block_density)
    it = sympy.Integer(itemsize)
    if causal:
        key_rows, pairs = causal_forward_blocks(Nq, Nk, block_m, block_n)
        query_rows = causal_backward_query_rows(Nq, Nk, block_m, block_n)
    else:
        _check_tiles(block_m, block_n)
        key_rows, pairs = _ceil_div(Nq, block_m) * Nk, Nq * Nk
        query_rows = _ceil_div(Nk, block_n) * Nq
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
        _kv_working_set(B * Hq, _ceil_div(Nq, block_m), Nk * (D + Dv) * it,
                        num_stages * block_n * (D + Dv) * it),
        _kv_working_set(B * Hkv, _ceil_div(Nk, block_n), Nq * q_row_bytes,
                        num_stages * block_m * q_row_bytes),
    )
    on_chip = Cost(sram_bytes=sram, l2_working_set=working_set)
    return B * (preprocess + dkdv + dq + compute + Cost(l2_reread_bytes=rereads)) + on_chip


# --------------------------------------------------------------------------------------
# Recurrences (scans) in closed form: the fused kernels of ioaware::selective_scan and
# ioaware::linear_scan. A scan's state never leaves the chip, so each kernel reads its
# inputs once and writes its outputs once; the unfused loop writes the state every step.

PARAM_ITEMSIZE = 4  # A, D, delta_bias, h_last and the gradients of A, D, delta_bias: fp32

# FLOPs per element of the state (batch · channel · step · state), forward:
#   dA  = exp(delta·A)          1 transcendental (1 FLOP)
#   dBu = delta·B·u, delta·A    2 FMAs of discretisation (4)
#   h   = dA·h + dBu            the scan's multiply-add (2)
#   y  += C·h                   the readout FMA (2)
SELECTIVE_SCAN_STATE_FLOPS = 9
# Backward, per state element: the forward recomputed (9) and the reverse scan (16):
#   g   = dA'·g' + C·dy         mul + FMA (3)      dC += h·dy        FMA (2)
#   dB += g·(delta·u)           FMA (2)            x   = g·h₋₁·dA    2 muls (2)
#   dΔ += x·A + g·B·u           mul + 2 FMAs (5)   dA += x·delta     FMA (2)
SELECTIVE_SCAN_BACKWARD_STATE_FLOPS = SELECTIVE_SCAN_STATE_FLOPS + 16


def _check_positive(**sizes: Size) -> None:
    for name, value in sizes.items():
        s = sym(value)
        if s.is_number and not (s.is_integer and s > 0):
            raise ValueError(f"{name}={value!r} must be a positive integer")


def selective_scan_cost(
    batch: Size, channels: Size, length: Size, d_state: Size, itemsize: int, *,
    groups: Size = 1, has_D: bool = True, has_z: bool = True,
    has_delta_bias: bool = False, backward: bool = False, delta_softplus: bool = False,
    has_h0: bool = False, block_d: int | None = None, chunk: int | None = None,
) -> Cost:
    """The fused selective scan (Mamba's S6, Gu & Dao 2023, Algorithm 2), forward or backward.

    Shapes, with Bt = batch, Dc = channels, L = length, N = d_state, G = groups and `it`
    the itemsize of the activations (A, D, delta_bias and h_last are fp32):
        u, delta, z [Bt, Dc, L] it    A [Dc, N] fp32    B, C [Bt, G, L, N] it
        D, delta_bias [Dc] fp32       y [Bt, Dc, L] it  h_last [Bt, Dc, N] fp32
    Forward, the recurrence h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t, y_t = C_t·h_t + D·u_t,
    y ← y·silu(z), with h in registers the whole time:
        read  u, delta (+ z):  (2 + has_z)·Bt·Dc·L·it
        read  A, D, delta_bias: Dc·N·4 + has_D·Dc·4 + has_delta_bias·Dc·4
        read  B, C:             2·Bt·G·L·N·it           (once: groups share them)
        write y, h_last:        Bt·Dc·L·it + Bt·Dc·N·4
    FLOPs: SELECTIVE_SCAN_STATE_FLOPS = 9 per state element (Bt·Dc·L·N of them), one exp
    each; per (Bt, Dc, L) element: delta·u (1), + delta_bias (1), softplus(delta)
    (3 and 2 transcendentals), D·u skip FMA (2), y·silu(z) (silu 4 + mul 1, 1 exp).

    Backward recomputes the states chunk by chunk instead of saving them:
        read  what the forward read, and dy:  + Bt·Dc·L·it
        write du, ddelta (+ dz):   (2 + has_z)·Bt·Dc·L·it
        write dB, dC:              2·Bt·G·L·N·4  (fp32: summed over a group's channels)
        write dA, dD, ddelta_bias: Dc·N·4 + has_D·Dc·4 + has_delta_bias·Dc·4
    FLOPs: SELECTIVE_SCAN_BACKWARD_STATE_FLOPS = 25 per state element (the forward
    recomputed and the reverse scan, see the constant), 1 exp; per (Bt, Dc, L) element
    the forward's and as many again for their gradients.

    block_d: channels per program, when the kernel tiles channels (None: B and C are read
    once, the compulsory traffic). Each of the ceil(Dc / (G·block_d)) channel blocks of a
    group reads the group's B and C again; those re-reads are `l2_reread_bytes`, live in
    L2 as in FlashAttention (`_kv_working_set`, one (batch, group) standing for a head).
    has_h0: an initial state h0 [Bt, Dc, N] fp32 is read (backward: read, and dh0 written).
    chunk (backward): the kernel saves the state at the start of every chunk of `chunk`
    steps in an fp32 scratch and reads it back, 2·Bt·Dc·ceil(L / chunk)·N·4 bytes.
    block_d and chunk together: sram_bytes is `selective_scan_sram_bytes` at 2 stages.
    The backward's incoming dh_last (Bt·Dc·N·4, L times smaller than dy) is not counted.
    """
    _check_positive(batch=batch, channels=channels, length=length, d_state=d_state,
                    groups=groups, itemsize=itemsize)
    Bt, Dc, L, N, G = (sym(x) for x in (batch, channels, length, d_state, groups))
    if Dc.is_number and G.is_number and int(Dc) % int(G):
        raise ValueError(f"groups={groups} must divide channels={channels}")
    it = sympy.Integer(itemsize)
    p = PARAM_ITEMSIZE
    seq = Bt * Dc * L  # elements of u, delta, z, y
    bc = 2 * Bt * G * L * N  # elements of B and C together
    params = Dc * N * p + (int(has_D) + int(has_delta_bias)) * Dc * p
    per_seq_flops = 1 + int(has_delta_bias) + 3 * int(delta_softplus) + 2 * int(has_D)
    per_seq_flops += 5 * int(has_z)
    per_seq_transc = 2 * int(delta_softplus) + int(has_z)
    states = seq * N
    rereads = Cost()
    state_bytes = Bt * Dc * N * p
    h0 = int(has_h0) * state_bytes
    if backward and chunk is not None:
        _check_positive(chunk=chunk)
        scratch = _ceil_div(L, chunk) * state_bytes
        rereads += Cost(read_bytes=scratch, write_bytes=scratch)
    if block_d is not None:
        _check_positive(block_d=block_d)
        blocks = _ceil_div(Dc / G, block_d)
        group_bytes = 2 * L * N * it  # B and C of one (batch, group)
        rereads += Cost(
            read_bytes=(blocks - 1) * bc * it, l2_reread_bytes=(blocks - 1) * bc * it,
            l2_working_set=_kv_working_set(Bt * G, blocks, group_bytes, group_bytes),
        )
    if block_d is not None and chunk is not None:  # on chip: two stages of chunks
        rereads += Cost(sram_bytes=selective_scan_sram_bytes(block_d, chunk, 2, N, it))
    if not backward:
        return rereads + Cost(
            read_bytes=(2 + int(has_z)) * seq * it + params + bc * it + h0,
            write_bytes=seq * it + state_bytes,
            flops=SELECTIVE_SCAN_STATE_FLOPS * states + per_seq_flops * seq,
            transcendentals=states + per_seq_transc * seq,
            kernel="selective_scan",
        )
    return rereads + Cost(kernel="selective_scan_backward") + Cost(
        read_bytes=(3 + int(has_z)) * seq * it + params + bc * it + h0,
        write_bytes=(2 + int(has_z)) * seq * it + bc * p + params + h0,
        flops=SELECTIVE_SCAN_BACKWARD_STATE_FLOPS * states + 2 * per_seq_flops * seq,
        transcendentals=states + per_seq_transc * seq,
    )


def linear_scan_cost(
    rows: Size, length: Size, features: Size, itemsize: int, *,
    has_h0: bool = False, backward: bool = False,
) -> Cost:
    """The fused first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t along L.

    a, b, h: [R, L, F] in `it` bytes; h0 (optional): [R, F], same dtype. Per element:
        forward   read a, b (+ h0 once)   write h               one FMA: 2 FLOPs
        backward  read a, h, dh (+ h0)    write da, db (+ dh0)  g_t = dh_t + a_{t+1}·g_{t+1}
                  (FMA, 2), db_t = g_t (free), da_t = g_t·h_{t-1} (mul, 1): 3 FLOPs
    h_{t-1} is the saved output shifted by one step (h0 at t = 0): the same tensor, read
    once. a_{t+1} is the same a, read once.
    """
    _check_positive(rows=rows, length=length, features=features, itemsize=itemsize)
    R, L, F = (sym(x) for x in (rows, length, features))
    it = sympy.Integer(itemsize)
    n = R * L * F
    h0 = int(has_h0) * R * F * it
    if not backward:
        return Cost(read_bytes=2 * n * it + h0, write_bytes=n * it, flops=2 * n)
    return Cost(read_bytes=3 * n * it + h0, write_bytes=2 * n * it + h0, flops=3 * n)



# --------------------------------------------------------------------------------------
# Time on a device.


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
    value = _subs(expr, hints or {}).xreplace({
        PROGRAMS_IN_FLIGHT: sympy.Integer(programs_in_flight(profile, sram_bytes)),
        NUM_SMS: sympy.Integer(profile.num_sms),
    })
    if value.free_symbols:
        names = sorted(str(s) for s in value.free_symbols)
        raise ValueError(f"{what} depends on {names} with no hint")
    return _to_int(value)


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
