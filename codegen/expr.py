"""Print an AttentionSpec's mask and score expressions as Triton code.

Two printers over the grammar of `codegen/attention/spec.py:AttentionSpec` (relationals, And/Or/Not,
Piecewise, Min/Max, Abs, floor, Mod, exp, log, tanh, + − × ÷, integer powers, loads
`name[i0, ...]`):

`TritonPrinter` prints the value of an expression per element of a tile. The kernels
bind the names it uses: `b`, `h` (scalars: batch and query head), `q_i`, `kv_i`
(index tiles that broadcast against each other: [M, 1] and [1, N] in the forward),
`score` (the fp32 scaled logit tile), `N_Q`, `N_K`; input `i` is the pointer `In{i}`
with strides `in{i}_s0, in{i}_s1, ...`. A load is masked to in-range rows/columns, so
padding lanes of a ragged tile never touch memory out of bounds.

`IntervalPrinter` prints, for a block of queries q_idx ∈ [q_lo, q_hi] and keys
kv_idx ∈ [kv_lo, kv_hi], whether a boolean expression is surely true on the whole
block (`must`) and whether it can be true anywhere in it (`may`): interval arithmetic
(Moore 1966) over the same grammar. Loads of per-token vectors (`doc[b, q_idx]`,
`pad[b, kv_idx]`) take the vector's min and max over the block, which the caller
computes (`vector_loads`). Anything else is "unknown" (must = False, may = True), which
is always safe: the block is simply treated as partial.

Integer semantics are Python's (sympy's): `floor(x / c)` and `Mod(x, c)` round toward
−∞, printed in a form that gives the same answer under C truncation (compiled Triton)
and numpy floor division (the interpreter).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Callable

import sympy
import torch
from sympy.core.relational import Relational

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import B_IDX, H_IDX, KV_IDX, Q_IDX, SCORE, TensorInput

from .render import reduction

# dtypes of inputs the printer widens to fp32 on load (see TritonPrinter.load)
HALF_DTYPES = ("bfloat16", "float16")

# kv_idx − q_idx of one diagonal of a tile: the index a relative-position table is read
# at, once per diagonal, when its gradient is summed along the tile's diagonals
DIAG = sympy.Symbol("diag_idx", integer=True)

# kernel-side names of the index symbols
INDEX_NAMES = {B_IDX: "b", H_IDX: "h", Q_IDX: "q_i", KV_IDX: "kv_i", SCORE: "score",
               DIAG: "dd"}

# Helpers the printed code calls; rendered once into every module that prints expressions.
HELPERS = '''\
@triton.jit
def _floordiv(x, c):
    """Python's x // c for c > 0, exact under truncating and flooring division alike."""
    return tl.where(x >= 0, x // c, -((c - 1 - x) // c))


@triton.jit
def _pymod(x, c):
    """Python's x % c for c > 0 (result in [0, c))."""
    return x - _floordiv(x, c) * c


@triton.jit
def _tanh(x):
    """tanh through exp: both ends saturate to ±1 without inf/inf."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _philox(seed, counter):
    """Philox4x32-10 (Salmon et al. 2011), first output word, as uint32: counter
    (counter_lo, counter_hi, 0, 0), key (seed_lo, seed_hi). The same stream as
    triton.language.randint; written out so the interpreter runs it too."""
    c0 = (counter & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((counter >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    round_a = tl.full([], 0xD2511F53, dtype=tl.uint32)
    round_b = tl.full([], 0xCD9E8D57, dtype=tl.uint32)
    key_a = tl.full([], 0x9E3779B9, dtype=tl.uint32)
    key_b = tl.full([], 0xBB67AE85, dtype=tl.uint32)
    for _ in tl.static_range(10):
        prev_c0 = c0
        prev_c2 = c2
        c0 = tl.umulhi(round_b, prev_c2) ^ c1 ^ k0
        c2 = tl.umulhi(round_a, prev_c0) ^ c3 ^ k1
        c1 = round_b * prev_c2
        c3 = round_a * prev_c0
        k0 = k0 + key_a
        k1 = k1 + key_b
    return c0'''


def _float_literal(e: sympy.Basic) -> str:
    """A sympy number as fp32 source; ±oo as float("±inf")."""
    x = float(e)
    return f"({x!r})" if math.isfinite(x) else f'float("{x}")'


def _is_int(expr: sympy.Basic) -> bool:
    return bool(expr.is_integer)


def _free(expr: sympy.Basic) -> set:
    """Index symbols `expr` depends on, loads' indices included."""
    out = set(expr.free_symbols)
    for load in expr.atoms(sympy.Indexed):
        for i in load.indices:
            out |= i.free_symbols
    return {s for s in out if s in INDEX_NAMES}


@dataclasses.dataclass
class TritonPrinter:
    """Print one expression of the Spec's grammar as a Triton expression (see module doc)."""

    inputs: tuple[TensorInput, ...]
    # every distinct load, bound once to a name (`ld0 = tl.load(...)`): printed
    # expressions stay short and read each element once
    bindings: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    names: dict = dataclasses.field(default_factory=dict)
    # the name of a constexpr that, when true, says every kv_i of the tile is below N_K
    # (a whole key block): the loads' key bound then folds away at compile time
    kv_whole: str | None = None

    def statements(self, indent: str = "    ") -> str:
        """The `name = tl.load(...)` lines of the loads printed so far, in order."""
        lines = []
        for name, text in self.bindings:
            line = f"{indent}{name} = {text}"
            if len(line) > 100 and ", mask=" in text:
                head, tail = text.split(", mask=", 1)
                line = f"{indent}{name} = {head},\n{indent}    mask={tail}"
            lines.append(line)
        return "\n".join(lines)

    def input_index(self, name: str) -> int:
        for i, t in enumerate(self.inputs):
            if t.name == name:
                return i
        raise ValueError(f"expression loads {name!r}, which is not among the spec's inputs "
                         f"{[t.name for t in self.inputs]}")

    def load_address(self, load: sympy.Indexed) -> tuple[str, str | None]:
        """(pointer expression, bounds mask or None) of a load `name[i0, ...]`."""
        i = self.input_index(str(load.base))
        if len(load.indices) != self.inputs[i].ndim:
            raise ValueError(f"load {load} has {len(load.indices)} indices; input "
                             f"{load.base} is {self.inputs[i].ndim}-D")
        terms = [f"({self.int_code(idx)}) * in{i}_s{d}" for d, idx in enumerate(load.indices)]
        used = set().union(*(_free(idx) for idx in load.indices))
        bounds = []
        if Q_IDX in used:
            bounds.append("(q_i < N_Q)")
        if KV_IDX in used:
            bounds.append("(kv_i < N_K)")
        return f"In{i} + " + " + ".join(terms), (" & ".join(bounds) or None)

    def load(self, load: sympy.Indexed) -> str:
        """The name bound to `load` (see `statements`).

        A load of a 16-bit float input is widened to fp32 as it is read: every printed
        operation then runs in fp32, as the kernels' score does. Arithmetic on a 16-bit
        value with a Python number is where compiled Triton and its interpreter part
        ways (the interpreter's numpy gives `3.0 * bf16(1.0)` = -3.7e19, triton 3.9), and
        eager's own 16-bit result differs from the fp32 one by at most its rounding."""
        if load not in self.names:
            ptr, mask = self.load_address(load)
            if mask is not None and self.kv_whole is not None:
                mask = mask.replace("(kv_i < N_K)", f"((kv_i < N_K) | {self.kv_whole})")
            text = f"tl.load({ptr})" if mask is None else f"tl.load({ptr}, mask={mask}, other=0)"
            if self.inputs[self.input_index(str(load.base))].dtype in HALF_DTYPES:
                text += ".to(tl.float32)"
            self.names[load] = f"ld{len(self.bindings)}"
            self.bindings.append((self.names[load], text))
        return self.names[load]

    def int_code(self, expr: sympy.Basic) -> str:
        return self.code(expr)

    def code(self, e: sympy.Basic) -> str:
        if e in INDEX_NAMES:
            return INDEX_NAMES[e]
        if isinstance(e, sympy.Indexed):
            return self.load(e)
        if e is sympy.true:
            return "True"
        if e is sympy.false:
            return "False"
        if e.is_Integer:
            return f"({int(e)})"
        if e.is_Number:
            return _float_literal(e)
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if _is_int(num) and den.is_Integer and int(den) > 0:
                return f"_floordiv({self.code(num)}, {int(den)})"
            return f"tl.floor({self.float_code(e.args[0])}).to(tl.int32)"
        if isinstance(e, sympy.ceiling):
            return f"(-{self.code(sympy.floor(-e.args[0]))})"
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(self.code(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            num, den = sympy.fraction(e)
            if den != 1:
                return f"({self.float_code(num)} / {self.float_code(den)})"
            return "(" + " * ".join(self.code(a) for a in e.args) + ")"
        if isinstance(e, sympy.Pow):
            base, exp = e.args
            if exp.is_Integer and 0 < int(exp) <= 4:
                return "(" + " * ".join([self.code(base)] * int(exp)) + ")"
            if exp.is_Integer and int(exp) < 0:
                return f"(1.0 / {self.float_code(base ** -exp)})"
            if exp == sympy.Rational(1, 2):
                return f"tl.sqrt({self.float_code(base)})"
            return f"tl.exp({self.float_code(exp)} * tl.log({self.float_code(base)}))"
        if isinstance(e, sympy.Mod):
            return f"_pymod({self.code(e.args[0])}, {self.code(e.args[1])})"
        if isinstance(e, (sympy.Min, sympy.Max)):
            fn = "tl.minimum" if isinstance(e, sympy.Min) else "tl.maximum"
            out = self.code(e.args[0])
            for a in e.args[1:]:
                out = f"{fn}({out}, {self.code(a)})"
            return out
        if isinstance(e, sympy.Abs):
            return f"tl.abs({self.code(e.args[0])})"
        if isinstance(e, sympy.exp):
            return f"tl.exp({self.float_code(e.args[0])})"
        if isinstance(e, sympy.log):
            return f"tl.log({self.float_code(e.args[0])})"
        if isinstance(e, sympy.tanh):
            return f"_tanh({self.float_code(e.args[0])})"
        if isinstance(e, sympy.Piecewise):
            out = None
            for value, cond in reversed(e.args):
                v = self.code(value)
                out = v if out is None else f"tl.where({self.code(cond)}, {v}, {out})"
            return out
        if isinstance(e, Relational):
            op = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}[e.rel_op]
            half = self.half_comparison(e.lhs, e.rhs)
            if half is not None:
                return f"({half[0]} {op} {half[1]})"
            return f"({self.code(e.lhs)} {op} {self.code(e.rhs)})"
        if isinstance(e, sympy.And):
            return "(" + " & ".join(self.code(a) for a in e.args) + ")"
        if isinstance(e, sympy.Or):
            return "(" + " | ".join(self.code(a) for a in e.args) + ")"
        if isinstance(e, sympy.Not):
            return f"({self.code(e.args[0])} == 0)"
        raise ValueError(f"expression {e} ({e.func.__name__}) is outside the AttentionSpec "
                         "grammar")

    def half_comparison(self, lhs: sympy.Basic, rhs: sympy.Basic) -> tuple[str, str] | None:
        """Both sides, in fp32, of a load of a 16-bit float input compared with a number.

        Eager compares in the input's dtype, the number rounded to it; the same number
        rounded once here and both sides widened to fp32 give the same answer exactly,
        and keep the comparison off 16-bit constants (Triton's interpreter misreads a
        bf16 `x > -1e30`: triton 3.9). None when the comparison is not of that form."""
        load, number = (lhs, rhs) if isinstance(lhs, sympy.Indexed) else (rhs, lhs)
        if not (isinstance(load, sympy.Indexed) and number.is_Number):
            return None
        dtype = self.inputs[self.input_index(str(load.base))].dtype
        if dtype not in HALF_DTYPES:
            return None
        x = torch.tensor(float(number), dtype=getattr(torch, dtype)).item()
        literal = f"({x!r})" if math.isfinite(x) else f'float("{x}")'
        sides = (self.load(load), literal)  # the load is fp32 already (see `load`)
        return sides if load is lhs else sides[::-1]

    def float_code(self, e: sympy.Basic) -> str:
        """An expression forced to fp32 (integer subexpressions are converted)."""
        if e.is_Number:
            return _float_literal(e)
        code = self.code(e)
        return f"({code}).to(tl.float32)" if _is_int(e) else code


# ---- interval reasoning for block classification ------------------------------------

@dataclasses.dataclass(frozen=True)
class VectorLoad:
    """A load of a per-token vector, `name[..., q_idx or kv_idx, ...]` with the other
    indices free of q_idx and kv_idx: its block interval is the vector's min/max."""

    load: sympy.Indexed
    axis: str  # "q" or "kv": which block index runs along the vector
    lo: str  # kernel names of the block min / max
    hi: str


_UNKNOWN = None


class IntervalPrinter:
    """Print `must` / `may` (booleans) and [lo, hi] (numbers) of an expression over a
    block (see module doc). Names bound by the caller: q_lo, q_hi, kv_lo, kv_hi, b, h,
    and the `lo`/`hi` names of every `VectorLoad` in `vector_loads`."""

    def __init__(self, inputs: tuple[TensorInput, ...]) -> None:
        self.vector_loads: dict[sympy.Indexed, VectorLoad] = {}
        self.printer = TritonPrinter(inputs)

    def _vector_load(self, e: sympy.Indexed):
        axes = []
        for idx in e.indices:
            if idx == Q_IDX:
                axes.append("q")
            elif idx == KV_IDX:
                axes.append("kv")
            elif _free(idx) & {Q_IDX, KV_IDX}:
                return _UNKNOWN
        if not axes:  # a scalar (a runtime size, a constant table entry): read it
            value = self.printer.load(e)
            return value, value
        if len(axes) != 1:  # a table over both axes: no cheap bound here
            return _UNKNOWN
        if e not in self.vector_loads:
            n = len(self.vector_loads)
            self.vector_loads[e] = VectorLoad(e, axes[0], f"vec{n}_lo", f"vec{n}_hi")
        v = self.vector_loads[e]
        return v.lo, v.hi

    def interval(self, e: sympy.Basic):
        """(lo_code, hi_code) or None (unknown)."""
        if e == Q_IDX:
            return "q_lo", "q_hi"
        if e == KV_IDX:
            return "kv_lo", "kv_hi"
        if e in (B_IDX, H_IDX):
            name = INDEX_NAMES[e]
            return name, name
        if e.is_Number:
            c = f"({int(e)})" if e.is_Integer else _float_literal(e)
            return c, c
        if isinstance(e, sympy.Indexed):
            return self._vector_load(e)
        if isinstance(e, sympy.Add):
            parts = [self.interval(a) for a in e.args]
            if any(p is None for p in parts):
                return _UNKNOWN
            return ("(" + " + ".join(p[0] for p in parts) + ")",
                    "(" + " + ".join(p[1] for p in parts) + ")")
        if isinstance(e, sympy.Mul):
            coeff, rest = e.as_coeff_Mul()
            if coeff.is_Integer and rest.is_integer:
                inner = self.interval(rest)
                if inner is None:
                    return _UNKNOWN
                c = int(coeff)
                lo, hi = (inner if c >= 0 else (inner[1], inner[0]))
                return f"({c} * {lo})", f"({c} * {hi})"
            return _UNKNOWN
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if _is_int(num) and den.is_Integer and int(den) > 0:
                inner = self.interval(num)
                if inner is None:
                    return _UNKNOWN
                d = int(den)
                return f"_floordiv({inner[0]}, {d})", f"_floordiv({inner[1]}, {d})"
            return _UNKNOWN
        if isinstance(e, (sympy.Min, sympy.Max)):
            parts = [self.interval(a) for a in e.args]
            if any(p is None for p in parts):
                return _UNKNOWN
            fn = "tl.minimum" if isinstance(e, sympy.Min) else "tl.maximum"
            lo, hi = parts[0]
            for p in parts[1:]:
                lo, hi = f"{fn}({lo}, {p[0]})", f"{fn}({hi}, {p[1]})"
            return lo, hi
        if isinstance(e, sympy.Abs):
            inner = self.interval(e.args[0])
            if inner is None:
                return _UNKNOWN
            lo, hi = inner
            return (f"tl.where({lo} >= 0, {lo}, tl.where({hi} <= 0, -({hi}), 0))",
                    f"tl.maximum(tl.abs({lo}), tl.abs({hi}))")
        return _UNKNOWN

    def truth(self, e: sympy.Basic) -> tuple[str, str]:
        """(must, may) of a boolean expression, as Triton scalar booleans."""
        if e is sympy.true:
            return "True", "True"
        if e is sympy.false:
            return "False", "False"
        if isinstance(e, sympy.And):
            parts = [self.truth(a) for a in e.args]
            return (" & ".join(f"({p[0]})" for p in parts),
                    " & ".join(f"({p[1]})" for p in parts))
        if isinstance(e, sympy.Or):
            parts = [self.truth(a) for a in e.args]
            return (" | ".join(f"({p[0]})" for p in parts),
                    " | ".join(f"({p[1]})" for p in parts))
        if isinstance(e, sympy.Not):
            must, may = self.truth(e.args[0])
            return f"(({may}) == 0)", f"(({must}) == 0)"
        if isinstance(e, Relational):
            a, b = self.interval(e.lhs), self.interval(e.rhs)
            if a is None or b is None:
                return "False", "True"
            (alo, ahi), (blo, bhi) = a, b
            op = e.rel_op
            if op in (">", ">="):
                (alo, ahi), (blo, bhi), op = (blo, bhi), (alo, ahi), op.replace(">", "<")
            if op == "<":
                return f"({ahi} < {blo})", f"({alo} < {bhi})"
            if op == "<=":
                return f"({ahi} <= {blo})", f"({alo} <= {bhi})"
            eq_must = f"(({alo} == {ahi}) & ({blo} == {bhi}) & ({alo} == {blo}))"
            eq_may = f"(({alo} <= {bhi}) & ({blo} <= {ahi}))"
            if op == "==":
                return eq_must, eq_may
            return f"({eq_may} == 0)", f"({eq_must} == 0)"
        if isinstance(e, sympy.Indexed):  # a bool vector used as a predicate
            iv = self._vector_load(e)
            if iv is None:
                return "False", "True"
            return f"({iv[0]} != 0)", f"({iv[1]} != 0)"
        return "False", "True"


# ---- what a Spec needs from the kernels ---------------------------------------------

def score_mod_derivatives(spec: AttentionSpec) -> tuple[sympy.Basic | None,
                                                        list[tuple[int, sympy.Indexed,
                                                                   sympy.Basic]]]:
    """(∂mod/∂score, [(input position, load, ∂mod/∂load) for requires-grad inputs]).

    The backward multiplies the logit gradient dL/dlogit by these: dL/dscore and the
    contribution of one element to the gradient of the loaded entry of the input.
    """
    mod = spec.score_mod_expr()
    if mod is None:
        return None, []
    dscore = sympy.diff(mod, SCORE)
    grads = []
    for i, t in enumerate(spec.inputs):
        if not t.requires_grad:
            continue
        for load in sorted(mod.atoms(sympy.Indexed), key=str):
            if str(load.base) == t.name:
                grads.append((i, load, sympy.diff(mod, load)))
    return dscore, grads


def uses(expr: sympy.Basic | None, symbol: sympy.Symbol) -> bool:
    return expr is not None and symbol in _free(expr)


# ---- the per-Spec functions the general kernels call ---------------------------------

def input_params(spec: AttentionSpec) -> str:
    """`, In0, in0_s0, in0_s1, In1, ...`: every input's pointer and strides."""
    return "".join(f", In{i}" + "".join(f", in{i}_s{d}" for d in range(t.ndim))
                   for i, t in enumerate(spec.inputs))


def grad_params(spec: AttentionSpec) -> str:
    """`, DIn1, din1_s0, ...`: gradient buffers of the requires-grad inputs."""
    return "".join(f", DIn{i}" + "".join(f", din{i}_s{d}" for d in range(t.ndim))
                   for i, t in enumerate(spec.inputs) if t.requires_grad)


# A gradient add needs no order against the kernel's other memory operations (the
# kernel's end publishes it): `relaxed` compiles to a fire-and-forget REDG, where
# Triton's default (acq_rel) returns the old value (ATOMG) behind a MEMBAR.ALL.GPU.
RELAXED = '"relaxed"'


def _atomic(printer: TritonPrinter, i: int, load: sympy.Indexed, grad: str) -> str:
    """Lines adding `grad` (a [M, N] tile over q_i × kv_i) into input i's gradient at
    the load's address, summed in registers first over the axes the address ignores."""
    ptr, mask = printer.load_address(load)
    ptr = ptr.replace(f"In{i} + ", f"DIn{i} + ", 1).replace(f"in{i}_s", f"din{i}_s")
    used = set().union(*(_free(idx) for idx in load.indices))
    g = grad
    if Q_IDX not in used:
        g = f"_sum_axis({g}, 0)[None, :]"
    if KV_IDX not in used:
        g = f"_sum_axis({g}, 1)[:, None]"
    if mask is None:
        if Q_IDX not in used and KV_IDX not in used:
            return (f"    tl.atomic_add({ptr}, _sum_axis(_sum_axis({grad}, 1), 0), "
                    f"sem={RELAXED})")
        return f"    tl.atomic_add({ptr}, {g}, sem={RELAXED})"
    return f"    tl.atomic_add({ptr}, {g}, mask={mask}, sem={RELAXED})"


def diagonal_indices(load: sympy.Indexed) -> tuple[sympy.Basic, ...] | None:
    """The load's indices as functions of d = kv_idx − q_idx (the symbol DIAG), when
    they read q_idx and kv_idx only through d and at least one of them does: then every
    score on one diagonal of a tile loads the same entry. None otherwise.

    Any function of d qualifies, not only a·d + c: a clipped or bucketed relative
    position (`Min(Max(q_idx - kv_idx, -r), r) + r`, T5's log buckets) is constant along
    a diagonal too. An index that itself loads (`pos[b, kv_idx] - pos[b, q_idx]`) does
    not: its value along a diagonal depends on the data."""
    out, relative = [], False
    for idx in load.indices:
        if not _free(idx) & {Q_IDX, KV_IDX}:
            out.append(idx)
            continue
        if idx.atoms(sympy.Indexed):
            return None
        # q_idx = kv_idx − d: what is left of kv_idx is a dependence off the diagonal
        on_diagonal = sympy.expand(idx.subs(Q_IDX, KV_IDX - DIAG))
        if KV_IDX in on_diagonal.free_symbols:
            return None
        out.append(on_diagonal)
        relative = True
    return tuple(out) if relative else None


def _diagonal_atomic(printer: TritonPrinter, i: int, indices: tuple[sympy.Basic, ...],
                     grad: str, masked: bool) -> str:
    """Lines adding `grad` ([M, N] over q_i × kv_i, the tile's first row q0 and column
    kv0) into input i's gradient at an address that depends on the scores' kv − q only
    (`diagonal_indices`): the tile summed along its M + N − 1 diagonals first, then one
    atomic per diagonal, M + N − 1 instead of M·N.

    Diagonal off = c − r (row r, column c of the tile) holds the scores with
    kv − q = kv0 − q0 + off. It has an in-range score (q < N_Q, kv < N_K) iff
    1 − min(M, N_Q − q0) ≤ off ≤ min(N, N_K − kv0) − 1; only those are added, as the
    per-element path adds only in-range scores. `masked`: grad is not known to be zero
    outside that range (a derivative that may be inf or NaN where the loads read 0)."""
    terms = " + ".join(f"({printer.int_code(idx)}) * din{i}_s{d}"
                       for d, idx in enumerate(indices))
    g = grad
    lines = []
    if masked:
        lines.append(f"    {g} = tl.where((q_i < N_Q) & (kv_i < N_K), {g}, 0.0)")
    lines += [
        f"    if {g}.shape[0] <= {g}.shape[1]:",
        f"        sum_a, off_a, sum_b, off_b = _diagonal_sums_rows({g})",
        "    else:",
        f"        sum_a, off_a, sum_b, off_b = _diagonal_sums_cols({g})",
        f"    off_lo = 1 - tl.minimum({g}.shape[0], N_Q - q0)",
        f"    off_hi = tl.minimum({g}.shape[1], N_K - kv0) - 1",
    ]
    for part in ("a", "b"):
        lines += [
            f"    dd = (kv0 - q0) + off_{part}",
            f"    tl.atomic_add(DIn{i} + {terms}, sum_{part}, sem={RELAXED},",
            f"                  mask=(off_{part} >= off_lo) & (off_{part} <= off_hi))",
        ]
    return "\n".join(lines)


# Sums of a [M, N] tile along its diagonals (column − row constant). Triton cannot skew
# a register tile by a row-dependent shift, but tl.gather can rotate each row (or
# column) by its own index: after the rotation every column (row) holds one diagonal
# and the wrapped part of another, which two masked sums separate.
DIAGONAL_SUMS = '''\
@triton.jit
def _diagonal_sums_rows(g):
    """For M <= N. Row r of g [M, N] rotated left by r: w[r, c] = g[r, (c + r) mod N].
    Column c of w holds diagonal c (c + r < N) and diagonal c − N (wrapped). Returns
    (sums of diagonals 0..N−1, their offsets, sums of diagonals −N..−1, offsets); the
    diagonals below −(M−1) are empty (zero)."""
    r = tl.arange(0, g.shape[0])[:, None]
    c = tl.arange(0, g.shape[1])[None, :]
    src = c + r
    wrapped = src >= g.shape[1]
    w = tl.gather(g, tl.where(wrapped, src - g.shape[1], src), 1)
    k = tl.arange(0, g.shape[1])
    return (_sum_axis(tl.where(wrapped, 0.0, w), 0), k,
            _sum_axis(tl.where(wrapped, w, 0.0), 0), k - g.shape[1])


@triton.jit
def _diagonal_sums_cols(g):
    """For M > N. Column c of g [M, N] rotated up by c: w[r, c] = g[(r + c) mod M, c].
    Row r of w holds diagonal −r (r + c < M) and diagonal M − r (wrapped). Returns
    (sums of diagonals 0, −1, .., −(M−1), their offsets, sums of diagonals M, .., 1,
    offsets); the diagonals past N − 1 are empty (zero)."""
    r = tl.arange(0, g.shape[0])[:, None]
    c = tl.arange(0, g.shape[1])[None, :]
    src = r + c
    wrapped = src >= g.shape[0]
    w = tl.gather(g, tl.where(wrapped, src - g.shape[0], src), 0)
    k = tl.arange(0, g.shape[0])
    return (_sum_axis(tl.where(wrapped, 0.0, w), 1), -k,
            _sum_axis(tl.where(wrapped, w, 0.0), 1), g.shape[0] - k)'''


def jit_def(name: str, params: str, doc: str, body: str) -> str:
    """A @triton.jit function, its parameter list wrapped at 100 columns."""
    head = f"def {name}("
    lines = textwrap.wrap(params, width=99 - len(head), break_long_words=False)
    signature = head + ("\n" + " " * len(head)).join(lines) + "):"
    return f'''@triton.jit
{signature}
    """{doc}"""
{body}'''


def _function(name: str, params: str, doc: str, spec: AttentionSpec,
              value: Callable[[TritonPrinter], str], kv_whole: str | None = None) -> str:
    """A function returning one printed expression, its loads bound first (their key
    bound dropped at compile time when the constexpr `kv_whole` is true)."""
    printer = TritonPrinter(spec.inputs, kv_whole=kv_whole)
    ret = value(printer)
    body = "\n".join(x for x in (printer.statements(), f"    return {ret}") if x)
    return jit_def(name, params, doc, body)


def mod_functions(spec: AttentionSpec, interpret: bool) -> str:
    """Source of `_visible`, `_score_mod`, `_dscore`, `_input_grads`, `_keep` for `spec`
    (each a stub when the Spec does not need it), plus the integer helpers."""
    printer = TritonPrinter(spec.inputs)
    params = "b, h, q_i, kv_i, N_Q, N_K" + input_params(spec)
    mask = spec.mask_expr()
    mod = spec.score_mod_expr()
    dscore, grads = score_mod_derivatives(spec)
    out = [HELPERS]
    reduce_fn = reduction("sum", "x", "axis", interpret)
    out.append(f'''@triton.jit
def _sum_axis(x, axis: tl.constexpr):
    return {reduce_fn}''')
    out.append('''@triton.jit
def _any(flags):
    """True (a scalar) when any of the [M] flags is set."""
    return _sum_axis(flags.to(tl.int32), 0) > 0''')
    # KV_WHOLE: the caller knows the tile's keys are all below N_K (a whole key block)
    whole = ", KV_WHOLE: tl.constexpr = False"
    out.append(_function("_visible", params + whole,
                         "The Spec's mask predicate on a tile (bool).", spec,
                         lambda pr: pr.code(mask) if mask is not None else "True", "KV_WHOLE"))
    out.append(_function(
        "_score_mod", "score, " + params + whole,
        "logit = score_mod(score), natural units, fp32.", spec,
        lambda pr: f"({pr.code(mod) if mod is not None else 'score'}).to(tl.float32)",
        "KV_WHOLE"))
    out.append(_function(
        "_dscore", "score, " + params, "∂ score_mod / ∂ score.", spec,
        lambda pr: f"({pr.code(dscore) if dscore is not None else '1.0'}) + score * 0.0"))
    lines = []
    diagonal = False
    for i, load, d in grads:
        lines.append(f"    g = dlogit * ({printer.code(d)})")
        indices = diagonal_indices(load)
        if indices is None:
            lines.append(_atomic(printer, i, load, "g"))
        else:
            # dlogit is zero outside the in-range scores; a constant derivative keeps it so
            lines.append(_diagonal_atomic(printer, i, indices, "g", not d.is_Number))
            diagonal = True
    if diagonal:
        out.append(DIAGONAL_SUMS)
    body = "\n".join(x for x in (printer.statements(), *lines) if x) or "    pass"
    out.append(jit_def("_input_grads", "dlogit, score, " + params + ", q0, kv0"
                       + grad_params(spec),
                       "Add dlogit · ∂score_mod/∂load into each requires-grad input's "
                       "gradient.\n    q0, kv0: the tile's first query and key.", body))
    out.append('''@triton.jit
def _keep(seed, offset, b, h, q_i, kv_i, H_Q, N_Q, N_K):
    """Dropout keep mask: Philox draw of element (b, h, q_idx, kv_idx) (see
    codegen/reference.py, which reproduces it), kept iff its top 24 bits >= threshold."""
    counter = offset + ((b * H_Q + h) * N_Q + q_i.to(tl.int64)) * N_K + kv_i.to(tl.int64)
    draw = _philox(seed, counter)
    return (draw >> 8).to(tl.int32) >= DROP_THRESHOLD''')
    return "\n\n\n".join(out)
