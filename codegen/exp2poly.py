"""exp2 on the FMA pipe (FlashAttention-4's split), shared by the kernel families that
render it: the selective scan's decays (degree 5) and the attention forward's P
(degree by the dtype P is rounded to, `attention_degree`).

x = n + f with n = round(x) from one FADD of 1.5·2^23 (n lands in the low mantissa bits
of t, exact for |x| < 2^22), f = x − n in [−1/2, 1/2]; 2^f by a polynomial with c0 = 1
(so 2^0 and every 2^n are exact), relative minimax on [−1/2, 1/2]
(`scripts/exp2_poly_coefficients.py`, Lawson's algorithm); 2^n by adding n to the
exponent field: bits(2^x) = bits(2^f) + (bits(t) << 23) (the shift drops t's own
exponent and leading mantissa bits, leaving n << 23 in two's complement).

Cost per element: one FMNMX per clamp, 3 FADD, `degree` FFMA, the shift and the add
(one LEA/IMAD or SHF + IADD), against one MUFU.EX2.
"""

from __future__ import annotations

# degree -> (c1, ..., c_degree), fp32 values (scripts/exp2_poly_coefficients.py)
COEFFICIENTS: dict[int, tuple[float, ...]] = {
    3: (0.6932829022407532, 0.2422109693288803, 0.05500893294811249),
    4: (0.6931241750717163, 0.24024099111557007, 0.055906426161527634,
        0.009582852944731712),
    5: (0.6931470036506653, 0.24022242426872253, 0.05550733581185341,
        0.009671512991189957, 0.001326472731307149),
}
# degree -> bound on the relative error of 2^f on [-1/2, 1/2], the fp32 coefficients
# evaluated by Horner in fp32 (the same script: 1.01e-4, 2.89e-6, 1.88e-7 on its grid,
# rounded up; the exact minimax errors are 1.01e-4, 2.82e-6, 9.15e-8). 2^n is exact, so
# this bounds exp2 wherever the result is a normal number.
ERROR: dict[int, float] = {3: 1.02e-4, 4: 2.9e-6, 5: 1.9e-7}
ROUND_MAGIC = 12582912.0  # 1.5·2^23: x + it rounds x to an integer in t's low bits


def attention_degree(dtype: str) -> int:
    """The lowest degree whose error lies far inside the rounding of a P in `dtype`:
    bf16 (unit roundoff 2^-8 = 3.9e-3) degree 3 (1.0e-4, 1/39 of it: FlashAttention-4's
    choice), fp16 (2^-11 = 4.9e-4) degree 4 (2.9e-6, 1/170), fp32 (P stays fp32 for an
    fp32 Spec's product) degree 5 (1.9e-7, MUFU ex2.approx's own 2^-22 class)."""
    return {"bfloat16": 3, "float16": 4}.get(dtype, 5)


def _horner(degree: int) -> str:
    """1 + f·(c1 + f·(c2 + ... + f·c_degree)) as Triton source, fp32 literals."""
    c = COEFFICIENTS[degree]
    text = repr(c[-1])
    for coefficient in reversed(c[:-1]):
        text = f"{coefficient!r} + f * ({text})"
    return f"f * ({text}) + 1.0"


def render(name: str = "_exp2_poly", degree: int = 5, lower: float = -126.0,
           upper: float | None = 128.0, doc: str = "") -> str:
    """Source of a `@triton.jit` function `name(x)` = 2^x on the FMA pipe.

    x is clamped to [lower, upper] with NaN kept (a NaN stays NaN). `upper=None` drops
    the upper clamp (one FMNMX) where the caller's x cannot reach 128 (2^128 overflows
    the exponent field into the sign). `lower=-126` gives 2^-126 where exp2 is below it
    (absolute error < 2^-126; MUFU with .ftz gives 0 there); `lower=-127` gives exactly
    0 at and below -127 (x = -inf, a masked score, included) and an absolute error
    below 2^-126 on (-127, -125): results under 2^-126 come out as denormals of the
    wrong mantissa. `doc` is the function's docstring."""
    clamp = f"    x = tl.maximum(x, {lower!r}, propagate_nan=tl.PropagateNan.ALL)\n"
    if upper is not None:
        clamp += f"    x = tl.minimum(x, {upper!r}, propagate_nan=tl.PropagateNan.ALL)\n"
    docstring = f'    """{doc}"""\n' if doc else ""
    return (
        "@triton.jit\n"
        f"def {name}(x):\n"
        f"{docstring}"
        f"{clamp}"
        f"    t = x + {ROUND_MAGIC!r}\n"
        f"    f = x - (t - {ROUND_MAGIC!r})\n"
        f"    p = {_horner(degree)}\n"
        "    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)\n"
        "    return bits.to(tl.float32, bitcast=True)")
