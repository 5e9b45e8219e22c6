"""Derive the coefficients of the polynomial exp2 (codegen/exp2poly.py, COEFFICIENTS;
`_exp2_poly`): 2^f ≈ 1 + c1 f + ... + cd f^d on f in [-1/2, 1/2], minimax in the
relative error, c0 = 1 fixed so that 2^0 is exactly 1 (a padded step's decay).

    python scripts/exp2_poly_coefficients.py        # degrees 3..6

Lawson's algorithm (iteratively reweighted least squares, which converges to the
minimax solution on the grid) on 4000 Chebyshev points, in float64; then the error of
the fp32 coefficients evaluated by Horner in fp32 on 200 001 points. Printed per
degree: the minimax error, the fp32 error, the coefficients as fp32.
Measured here: degree 3 1.0e-4 (FlashAttention-4's, for a bf16 P), 4 2.8e-6 / 2.9e-6,
5 9.1e-8 / 1.9e-7, 6 2.0e-9 / 9.7e-8 (fp32 rounding dominates): degree 5 is the first
within MUFU ex2.approx's own 2^-22 relative bound.
"""

from __future__ import annotations

import numpy as np


def minimax(degree: int, iterations: int = 3000) -> tuple[np.ndarray, float]:
    f = np.cos(np.linspace(0, np.pi, 4001)) * 0.5
    f = f[np.abs(f) > 1e-9]  # the error is 0 at f = 0 by construction
    weight = np.ones_like(f) / len(f)
    exact = 2.0 ** f
    # relative error (1 + Σ c_k f^k) / 2^f - 1 = rows · c - rhs, linear in c
    rows = np.stack([f ** k / exact for k in range(1, degree + 1)], 1)
    rhs = 1 - 1 / exact
    for _ in range(iterations):
        root = np.sqrt(weight)
        coefficients, *_ = np.linalg.lstsq(rows * root[:, None], rhs * root, rcond=None)
        error = np.abs(rows @ coefficients - rhs)
        weight = weight * error
        weight /= weight.sum()
    return coefficients, float(error.max())


def fp32_error(coefficients: np.ndarray) -> float:
    x = np.linspace(-0.5, 0.5, 200001).astype(np.float32)
    c = coefficients.astype(np.float32)
    p = c[-1]
    for k in range(len(c) - 2, -1, -1):
        p = (p * x + c[k]).astype(np.float32)
    p = (p * x + np.float32(1)).astype(np.float32)
    return float(np.abs(p.astype(np.float64) / 2.0 ** x.astype(np.float64) - 1).max())


def main() -> None:
    for degree in (3, 4, 5, 6):
        coefficients, error = minimax(degree)
        print(f"degree {degree}: minimax {error:.2e}, fp32 Horner {fp32_error(coefficients):.2e}, "
              f"c1.. = {[float(np.float32(c)) for c in coefficients]}")


if __name__ == "__main__":
    main()
