"""A learned relative-position bias, `score + table[f(kv_idx - q_idx), ...]`: its gradient
summed along each tile's diagonals before the atomics, under the interpreter.

Every score on one diagonal of a tile (kv − q constant) reads the same table entry, so
the dQ kernel sums the [M, N] gradient tile along its M + N − 1 diagonals and adds one
atomic per diagonal (`codegen/expr.py: diagonal_indices, _diagonal_atomic`). The cases:
N_Q ≠ N_K, ragged sizes, causal or not, GQA, a table per head and shared across heads,
the spellings `kv - q + c`, `-q + kv + c`, `c + 2·(kv − q)`, `c − (kv − q)` and a clipped
distance; tiles wider than tall, taller than wide and square (the two branches of the
diagonal sum). A table read at `[q, kv]` or `[q + kv]` keeps the per-element atomics.
out, dq, dk, dv and the table's gradient are compared with float64 eager.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch

import ioaware
from ioaware.codegen.attention.backward import render_general_backward
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.cache import INTERPRET_DEVICE, load_kernel_module
from ioaware.codegen.expr import DIAG, diagonal_indices
from ioaware.spec import TensorInput
from ioaware.verify import relative_error

# ‖a − b‖ / ‖b‖, as tests/interp/test_attention_mods.py: a few units of fp32 rounding
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# RMS per element below which an expected gradient counts as zero (test_attention_mods)
FLOOR = {torch.float32: 1e-2, torch.bfloat16: 1.0}

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

B, D = 2, 16


def _eager(q, k, v, table, index, per_head, causal, scale):
    """float64 attention with logit = score + table[index(i, j)(, h)], GQA by repeat."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    i = torch.arange(q.shape[2])[:, None]
    j = torch.arange(k.shape[2])[None, :]
    idx = index(i, j).expand(q.shape[2], k.shape[2])
    bias = table[idx].permute(2, 0, 1) if per_head else table[idx]  # [H, Nq, Nk] or [Nq, Nk]
    s = scale * q @ k.transpose(-1, -2) + bias
    if causal:
        s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s, -1) @ v


def _run(text, index, table_rows, *, n_q, n_k, heads=2, h_kv=2, causal=False,
         per_head=True, dq_config=None, dtype=torch.float32, seed=0):
    """(kernel results, float64 eager results, spec): out, dq, dk, dv, dtable. `text`
    is the score mod with the table as `table[...]`; `index(i, j)` its torch twin."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn((table_rows, heads) if per_head else (table_rows,), generator=gen)
    spec = AttentionSpec(head_dim=D, head_dim_v=D, dtype=str(dtype)[6:], causal=causal,
                         scale=1 / math.sqrt(D), score_mod=text,
                         inputs=(TensorInput("table", table.dim(), "float32", True),))
    q = torch.randn(B, heads, n_q, D, generator=gen).to(dtype)
    k, v = (torch.randn(B, h_kv, n_k, D, generator=gen).to(dtype) for _ in range(2))
    dout = torch.randn(B, heads, n_q, D, generator=gen).to(dtype)

    fwd = load_kernel_module("attention_fwd", spec, INTERPRET_DEVICE)
    bwd = load_kernel_module("attention_bwd", spec, INTERPRET_DEVICE)
    out = torch.empty_like(q)
    lse = torch.empty(B, heads, n_q)
    fwd.forward(q, k, v, out, lse, [table], None)
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))  # written whole
    dtable = torch.zeros_like(table)
    bwd.backward(dout, q, k, v, out, lse, None, dq, dk, dv, [table], [dtable], None,
                 dq_config=dq_config)

    leaves = [x.double().requires_grad_() for x in (q, k, v, table)]
    ref = _eager(*leaves, index, per_head, causal, spec.scale)
    want = [ref, *torch.autograd.grad(ref, leaves, dout.double())]
    return [out, dq, dk, dv, dtable], want, spec


def _check(got, want, dtype=torch.float32):
    scores = want[0].shape[0] * want[0].shape[1] * want[0].shape[2] * want[2].shape[2]
    for name, a, e in zip(("out", "dq", "dk", "dv", "dtable"), got, want):
        # terms summed into one element grow fp32's accumulation noise like √terms
        terms = max(1, scores // e.numel()) if name == "dtable" else e.shape[2]
        err = relative_error(a, e.to(a.dtype), floor=FLOOR[dtype] * terms**0.5)
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g}"


def _source(spec):
    text = render_general_backward(spec, interpret=True)
    start = text.index("def _input_grads(")
    return text[start:text.index("@triton.jit", start)]


# (score mod, torch index(i, j), table rows as a function of (n_q, n_k)); per head
SPELLINGS = {
    "kv - q + c": ("score + table[kv_idx - q_idx + {c}, h]",
                   lambda i, j, c: j - i + c, lambda n_q, n_k: n_q + n_k - 1),
    "-q + kv + c": ("score + table[-q_idx + kv_idx + {c}, h]",
                    lambda i, j, c: -i + j + c, lambda n_q, n_k: n_q + n_k - 1),
    "c + 2(kv - q)": ("score + table[{c2} + 2*(kv_idx - q_idx), h]",
                      lambda i, j, c: 2 * c + 2 * (j - i), lambda n_q, n_k: 2 * (n_q + n_k)),
    "c - (kv - q)": ("score + table[{cn} - (kv_idx - q_idx), h]", None, None),
    "clipped": ("score + table[Min(Max(kv_idx - q_idx, -5), 5) + 5, h]",
                lambda i, j, c: (j - i).clamp(-5, 5) + 5, lambda n_q, n_k: 11),
}


def _spelling(name, n_q, n_k):
    """(text, index, rows) of a spelling at these sizes: c = n_q − 1 keeps kv − q + c
    in [0, n_q + n_k − 1); `c − (kv − q)` takes c = n_k − 1."""
    text, index, rows = SPELLINGS[name]
    c = n_q - 1
    if name == "c - (kv - q)":
        return (text.format(cn=n_k - 1), lambda i, j: (n_k - 1) - (j - i), n_q + n_k - 1)
    return (text.format(c=c, c2=2 * c), lambda i, j: index(i, j, c), rows(n_q, n_k))


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_spellings_take_the_diagonal_sum(name):
    text, _, _ = _spelling(name, 37, 53)
    spec = AttentionSpec(head_dim=D, head_dim_v=D, dtype="float32", causal=False,
                         scale=0.25, score_mod=text,
                         inputs=(TensorInput("table", 2, "float32", True),))
    source = _source(spec)
    assert "_diagonal_sums_rows(g)" in source and source.count("tl.atomic_add") == 2


# sizes: ragged on both axes (not multiples of any tile), N_Q < N_K and N_Q > N_K
@pytest.mark.parametrize("n_q,n_k", [(37, 53), (53, 21)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", list(SPELLINGS))
def test_relative_bias_matches_eager(name, causal, n_q, n_k):
    text, index, rows = _spelling(name, n_q, n_k)
    got, want, _ = _run(text, index, rows, n_q=n_q, n_k=n_k, causal=causal, seed=n_q)
    _check(got, want)


# the interpreter's dQ tile is 32 × 16 (taller: the column-rotating branch); these force
# a square tile and a wider one (the row-rotating branch), with GQA (4 query heads on 2)
@pytest.mark.parametrize("dq_config", [(16, 16, 4, 1), (16, 32, 4, 1), (32, 16, 4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_every_tile_shape_and_gqa(dq_config, causal):
    text, index, rows = _spelling("kv - q + c", 45, 50)
    got, want, _ = _run(text, index, rows, n_q=45, n_k=50, heads=4, h_kv=2, causal=causal,
                        dq_config=dq_config, seed=3)
    _check(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_a_table_shared_across_heads(causal):
    n_q, n_k = 29, 41
    got, want, spec = _run(f"score + table[kv_idx - q_idx + {n_q - 1}]",
                           lambda i, j: j - i + n_q - 1, n_q + n_k - 1, n_q=n_q, n_k=n_k,
                           heads=4, h_kv=1, causal=causal, per_head=False, seed=5)
    assert "_diagonal_sums_rows(g)" in _source(spec)
    _check(got, want)


def test_bf16_inputs():
    text, index, rows = _spelling("kv - q + c", 40, 40)
    got, want, _ = _run(text, index, rows, n_q=40, n_k=40, causal=True,
                        dtype=torch.bfloat16, seed=11)
    _check(got, want, torch.bfloat16)


# not a function of kv − q: the per-element atomics, still right
NEGATIVE = {
    "table[q, kv]": ("score + table[q_idx, kv_idx]", lambda i, j: i * 1000 + j),
    "table[q + kv]": ("score + table[q_idx + kv_idx]", lambda i, j: i + j),
}


@pytest.mark.parametrize("name", list(NEGATIVE))
@pytest.mark.parametrize("causal", [False, True])
def test_other_indices_keep_the_per_element_atomics(name, causal):
    n_q, n_k = 23, 30
    text, index = NEGATIVE[name]
    gen = torch.Generator().manual_seed(9)
    two_d = name == "table[q, kv]"
    table = torch.randn((n_q, n_k) if two_d else (n_q + n_k - 1,), generator=gen)
    spec = AttentionSpec(head_dim=D, head_dim_v=D, dtype="float32", causal=causal,
                         scale=0.25, score_mod=text,
                         inputs=(TensorInput("table", table.dim(), "float32", True),))
    source = _source(spec)
    assert "_diagonal_sums" not in source and source.count("tl.atomic_add") == 1
    assert diagonal_indices(sympy.sympify(text, locals=_names()).atoms(
        sympy.Indexed).pop()) is None

    q = torch.randn(B, 2, n_q, D, generator=gen)
    k, v = (torch.randn(B, 2, n_k, D, generator=gen) for _ in range(2))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, table)]
    out = ioaware.codegen.attention.op.attention(*leaves[:3], spec, [leaves[3]])
    dout = torch.randn(out.shape, generator=gen)
    got = [out, *torch.autograd.grad(out, leaves, dout)]
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v, table)]
    i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
    bias = ref_leaves[3][i, j] if two_d else ref_leaves[3][index(i, j)]
    s = 0.25 * ref_leaves[0] @ ref_leaves[1].transpose(-1, -2) + bias
    if causal:
        s = s.masked_fill(j > i, float("-inf"))
    ref = torch.softmax(s, -1) @ ref_leaves[2]
    _check(got, [ref, *torch.autograd.grad(ref, ref_leaves, dout.double())])


def _names():
    from ioaware.spec import B_IDX, H_IDX, KV_IDX, Q_IDX, SCORE
    return {"b": B_IDX, "h": H_IDX, "q_idx": Q_IDX, "kv_idx": KV_IDX, "score": SCORE,
            "table": sympy.IndexedBase("table")}


def test_diagonal_indices():
    """Each index as a function of d = kv − q, or None when some index is not one."""
    names = _names()

    def load(text):
        return sympy.sympify(text, locals=names)

    q, kv, h = names["q_idx"], names["kv_idx"], names["h"]
    assert diagonal_indices(load("table[kv_idx - q_idx + 7, h]")) == (DIAG + 7, h)
    assert diagonal_indices(load("table[h, 3 - 2*q_idx + 2*kv_idx]")) == (h, 2 * DIAG + 3)
    assert diagonal_indices(load("table[h, Min(Max(q_idx - kv_idx, -3), 3) + 3]")) == (
        h, sympy.Min(sympy.Max(-DIAG, -3), 3) + 3)
    assert diagonal_indices(load("table[h, q_idx + kv_idx]")) is None
    assert diagonal_indices(load("table[q_idx, kv_idx]")) is None
    assert diagonal_indices(load("table[kv_idx - q_idx, q_idx]")) is None
    assert diagonal_indices(load("table[h, kv_idx]")) is None
    assert diagonal_indices(load("table[h, 0]")) is None  # reads no index: summed whole
    assert q not in diagonal_indices(load("table[kv_idx - q_idx]"))[0].free_symbols
    assert kv not in diagonal_indices(load("table[kv_idx - q_idx]"))[0].free_symbols


def test_the_bench_spec_takes_the_diagonal_sum():
    from ioaware.bench.masks import _spec, masked_problem

    spec = _spec("bias", masked_problem("bias", 2, 16, 8192, 128, "bf16"))
    assert "_diagonal_sums_rows(g)" in _source(spec)


def test_the_compiled_relative_bias():
    """The bench's plain spelling (`ioaware/bench/masks.py: relative_bias_attention`,
    causal, table [2N − 1, H]) through ioaware.compile: one rewrite; out, dq, dk, dv and
    the table's gradient as float64 eager's."""
    from ioaware.bench.masks import relative_bias_attention

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(2)
    h, n = 2, 35
    q, k, v = (torch.randn(B, h, n, D, generator=gen).requires_grad_() for _ in range(3))
    table = torch.randn(2 * n - 1, h, generator=gen).requires_grad_()
    fast = ioaware.compile(relative_bias_attention)
    out = fast(q, k, v, table)
    expl = fast._ioaware_backend.explanation
    assert len(expl.rewrites) == 1 and not expl.fallbacks, expl
    dout = torch.randn(out.shape, generator=gen)
    got = [out, *torch.autograd.grad(out, (q, k, v, table), dout)]
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, table)]
    ref = relative_bias_attention(*leaves)
    want = [ref, *torch.autograd.grad(ref, leaves, dout.double())]
    _check(got, want)
