"""Models of what library kernels do past the IO model: cuBLAS's GEMMs re-reading operand
panels from DRAM when they do not stay in L2 (`matmul_l2_spill`), and PyTorch's
one-CTA-per-row softmax waiting a memory round trip per wave of rows
(`softmax_row_waves`). Both depend on the device's SM count, kept as NUM_SMS.
Derivations and the checks against measured counters: docs/cost-model.md.
"""

from __future__ import annotations

import sympy

from ioaware.cost.algebra import NUM_SMS, Size, ceil_div, sym

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


# The output tile one CTA of cuBLAS's large 16-bit GEMMs computes on Hopper (128 x 256,
# or 256 x 128: the wave footprint below is the same for either), one CTA per SM.
MATMUL_TILE = (128, 256)


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
    # At symbolic sizes sympy's Min/Max look for redundant arguments by comparing them,
    # which costs ~0.1 s a GEMM (seconds for a model's recompiled graph): left unevaluated
    # there, they evaluate when the sizes are substituted.
    evaluate = not any(e.free_symbols for e in (M, N, K))
    rows, cols = ceil_div(M, tm), ceil_div(N, tn)
    g = sympy.Min(rows, P, sympy.ceiling(sympy.sqrt(P * tn / tm)), evaluate=evaluate)
    c = sympy.Min(cols, sympy.ceiling(P / g), evaluate=evaluate)
    per_wave = (sympy.Min(g * tm, M, evaluate=evaluate) * itemsize_a
                + sympy.Min(c * tn, N, evaluate=evaluate) * itemsize_b) * K
    waves = sympy.ceiling(rows * cols / P)
    compulsory = M * K * itemsize_a + K * N * itemsize_b
    return sympy.Max(0, waves * per_wave - compulsory, evaluate=evaluate), compulsory

