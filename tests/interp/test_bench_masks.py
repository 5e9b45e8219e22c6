"""The masked bench's five variants (`ioaware bench attention --mask all`), on the CPU.

What the GPU bench times must be right before it is timed: each plain spelling goes
through `ioaware.compile` as one rewritten region (so the compiled row measures the
generated kernels, not an eager fallback), and both that row and the kernel row with
the hand-written Spec give the bench's own eager reference (outputs, the q, k, v
gradients and the learned table's) at the bench's tolerance; Flex's mask_mod /
score_mod say the same as the spelling; and the FLOP convention's counts are exact.
Kernels run under Triton's interpreter at tiny sizes (the sliding window shrunk to fit).
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.bench import masks
from ioaware.bench.common import TOLERANCE, relative_error
from ioaware.codegen.attention import op as ops

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

B, H, N, D = 2, 1, 48, 16  # N: one and a half interpreter query tiles (32 rows)
DTYPE = torch.bfloat16


def _problem(kind):
    return masks.masked_problem(kind, B, H, N, D, "bf16")


def _inputs():
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, N, D, generator=gen).to(DTYPE) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout


def _run(attention, q, k, v, dout, leaves):
    for t in (q, k, v, *leaves):
        t.grad = None
    out = attention(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad, *(t.grad for t in leaves)


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_compiled_and_kernel_rows_match_eager(kind, monkeypatch):
    monkeypatch.setattr(masks, "WINDOW", 20)  # 512 would not bite at N = 48
    torch._dynamo.reset()
    extra = masks.mask_extra(kind, B, H, N, "cpu")
    leaves = (extra,) if kind == "bias" else ()
    q, k, v, dout = _inputs()
    want = masks.eager_reference(kind, q, k, v, dout, extra)
    assert len(want) == 4 + len(leaves)

    compiled = ioaware.compile(masks.SPELLINGS[kind])
    got = _run(lambda q_, k_, v_: compiled(q_, k_, v_, extra), q, k, v, dout, leaves)
    expl = compiled._ioaware_backend.explanation
    assert len(expl.rewrites) == 1 and not expl.fallbacks, expl
    assert relative_error(got, want) <= TOLERANCE[DTYPE]

    spec = masks._spec(kind, _problem(kind))
    inputs = [] if extra is None else [extra]
    got = _run(lambda q_, k_, v_: ops.attention(q_, k_, v_, spec, inputs), q, k, v, dout,
               leaves)
    assert relative_error(got, want) <= TOLERANCE[DTYPE]


@pytest.mark.parametrize("kind", ["alibi", "bias"])
def test_the_reference_by_heads_is_the_reference_of_all_heads(kind):
    heads = 3  # per-head slopes and table columns, sliced one head at a time
    extra = masks.mask_extra(kind, B, heads, N, "cpu")
    gen = torch.Generator().manual_seed(1)
    q, k, v, dout = (torch.randn(B, heads, N, D, generator=gen) for _ in range(4))
    by_head = masks.eager_reference(kind, q, k, v, dout, extra, heads_per_run=1)
    whole = masks.eager_reference(kind, q, k, v, dout, extra, heads_per_run=heads)
    assert len(by_head) == len(whole) == 4 + (kind == "bias")
    for got, want in zip(by_head, whole):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_flex_mods_say_what_the_spelling_says(kind, monkeypatch):
    monkeypatch.setattr(masks, "WINDOW", 20)
    problem = _problem(kind)
    extra = masks.mask_extra(kind, B, H, N, "cpu")
    mask_mod, score_mod, batch = masks.flex_mods(kind, problem, extra)
    b, h, i, j = (torch.arange(n).view(shape) for n, shape in (
        (B, (B, 1, 1, 1)), (H, (1, H, 1, 1)), (N, (1, 1, N, 1)), (N, (1, 1, 1, N))))
    keep = masks.visible_mask(kind, problem, extra, "cpu")
    assert torch.equal(mask_mod(b, h, i, j).expand(B, H, N, N), keep.expand(B, H, N, N))
    assert batch == (B if kind in ("document", "padding") else None)
    if score_mod is None:
        return
    # the bias the plain spelling adds ([H, N, N]), written as the spelling writes it
    rows = torch.arange(N)
    with torch.no_grad():
        if kind == "alibi":
            want = extra[:, None, None] * (rows[None, :] - rows[:, None])
        else:
            want = extra[rows[None, :] - rows[:, None] + N - 1].permute(2, 0, 1)
        got = score_mod(torch.zeros(B, H, N, N), b, h, i, j)
    torch.testing.assert_close(got, want.expand(B, H, N, N))


def test_mask_density_counts_pairs_and_tiles_exactly():
    problem = masks.masked_problem("padding", 2, 1, 256, 16, "bf16")
    keep = masks.padding_keep(2, 256, "cpu")
    assert keep.sum().item() == 2 * (256 - 77)  # round(0.3 · 256) keys padded per row
    density = masks.mask_density("padding", problem, keep, block=128, device="cpu")
    # keys 179..255 are padding: key block 0 is whole, key block 1 partial, none empty
    assert density == masks.MaskDensity(visible=179 / 256, tiles=1.0, partial=0.5)
    causal = masks.mask_density("bias", masks.masked_problem("bias", 1, 1, 256, 16, "bf16"),
                                None, block=128, device="cpu")
    # 2 × 2 tiles: the upper one empty, the two diagonal ones partial
    assert causal == masks.MaskDensity(visible=(256 * 257 / 2) / 256**2, tiles=0.75,
                                       partial=2 / 3)


def test_the_cli_offers_every_kind():
    from ioaware.cli import MASK_KIND_NAMES

    assert MASK_KIND_NAMES == masks.MASK_KINDS


def test_the_bench_checks_every_row_it_would_time(monkeypatch):
    # The bench itself on the CPU (timing stubbed out: do_bench needs CUDA), on the kind
    # with a learned input: every row passes the check, the table's gradient included.
    kind = "bias"
    monkeypatch.setattr(masks, "DEVICE", "cpu")
    monkeypatch.setattr(masks, "require_cuda", lambda: None)
    timed = []
    monkeypatch.setattr(masks, "_time", lambda row, *args: timed.append(row.variant))
    rows = masks.bench_masked(kind, B, H, N, D, "bf16", vs=("sdpa", "eager"))
    assert [r.variant for r in rows] == ["ioaware kernel", "ioaware.compile(eager)",
                                         "sdpa[materialised mask]", "eager"]
    assert all(r.ok for r in rows), [(r.variant, r.rel_err, r.note) for r in rows]
    assert timed == [r.variant for r in rows]


def test_the_summary_gives_each_kind_its_speedups_over_flex():
    from ioaware.bench.attention import BenchRow
    from ioaware.cli import render_masked_summary

    def rows(compiled, kernel):
        return [BenchRow("ioaware kernel", True, speedup_fwd=kernel[0], speedup_fwd_bwd=kernel[1]),
                BenchRow("ioaware.compile(eager)", True, speedup_fwd=compiled[0],
                         speedup_fwd_bwd=compiled[1]),
                BenchRow("flex_attention", True, speedup_fwd=1.0, speedup_fwd_bwd=1.0)]

    text = render_masked_summary({"padding": rows((1.3, 0.97), (1.31, 1.02)),
                                  "bias": rows((None, None), (1.1, 0.9))})
    lines = text.splitlines()
    assert any("padding" in line and "1.30 / 0.97" in line and "1.31 / 1.02" in line
               for line in lines), text
    assert any("bias" in line and "- / -" in line and "1.10 / 0.90" in line
               for line in lines), text
