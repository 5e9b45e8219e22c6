"""Masked and modified attention side by side: `ioaware bench attention --mask KIND`.

KIND is one of
    sliding_window   causal, key j visible to query i iff i - 512 < j <= i
    alibi            causal, logit = score + slope_h · (j - i), slopes 2^(-8(h+1)/H)
    document         causal within 8 random documents per sequence (sorted ids)
each written the plain PyTorch way (the spelling ioaware.compile must recognise).

Rows: ioaware's kernel called with a hand-written AttentionSpec, ioaware.compile of the
plain spelling, torch.compile(flex_attention) with its mask_mod / score_mod written by
hand (skipped where this torch has none), SDPA with the mask or bias materialised
([N, N] bool, or [H, N, N] bias), and the plain spelling under torch.compile. Each is
checked against SDPA's math backend in fp32 with the materialised mask, then timed.

FLOPs follow FlexAttention's convention: only the visible (q, k) pairs count,
4·B·H·d·Σ visible (forward), 3.5x that for forward+backward. Peak memory above the
inputs is recorded too: ioaware's grows linearly in N, the materialised mask's does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ioaware.bench.attention import (
    BASELINES,
    AttentionProblem,
    BenchRow,
    _attach_speedups,
    _check,
    _forward_backward,
    _time,
    baselines,
)
from ioaware.bench.common import DTYPES, TOLERANCE, check_dtype, require_cuda

MASK_KINDS = ("sliding_window", "alibi", "document")
WINDOW = 512
DOCUMENTS = 8

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def alibi_slopes(heads: int, device: torch.device | str) -> torch.Tensor:
    """ALiBi's geometric slopes (Press et al. 2022): 2^(-8(h+1)/H), fp32 [H]."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], device=device)


def document_ids(batch: int, seqlen: int, device: torch.device | str) -> torch.Tensor:
    """[B, N] int64 sorted ids of DOCUMENTS documents with random boundaries (fixed seed)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = []
    for _ in range(batch):
        cuts = torch.randperm(seqlen - 1, generator=gen)[:DOCUMENTS - 1] + 1
        starts = torch.zeros(seqlen, dtype=torch.int64)
        starts[cuts] = 1
        ids.append(starts.cumsum(0))
    return torch.stack(ids).to(device)


def mask_extra(kind: str, batch: int, heads: int, seqlen: int,
               device: torch.device | str) -> torch.Tensor | None:
    """The extra tensor `kind` reads (ALiBi's slopes, document ids), or None."""
    if kind == "alibi":
        return alibi_slopes(heads, device)
    return document_ids(batch, seqlen, device) if kind == "document" else None


# ---- the plain PyTorch spellings --------------------------------------------------------

def sliding_window_attention(q, k, v):
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)
    allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < WINDOW)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def alibi_attention(q, k, v, slopes):
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)
    bias = slopes[:, None, None] * (i[None, :] - i[:, None])  # [H, N, N], j - i
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def document_attention(q, k, v, doc):
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)
    allowed = (doc[:, None, :, None] == doc[:, None, None, :]) & (i[None, :] <= i[:, None])
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def _materialised(kind: str, problem: AttentionProblem, extra: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """SDPA's attn_mask: bool [B|1, 1, N, N] allowed keys, or the ALiBi bias [1, H, N, N]."""
    n = problem.seqlen
    i = torch.arange(n, device="cuda")
    causal = i[None, :] <= i[:, None]
    if kind == "sliding_window":
        return (causal & (i[:, None] - i[None, :] < WINDOW))[None, None]
    if kind == "document":
        return (extra[:, None, :, None] == extra[:, None, None, :]) & causal
    bias = extra[:, None, None] * (i[None, :] - i[:, None]).float()
    return bias.masked_fill(~causal, float("-inf")).to(dtype)[None]


def _spec(kind: str, problem: AttentionProblem):
    from ioaware.codegen.attention.spec import AttentionSpec
    from ioaware.spec import TensorInput, dtype_name

    common = {"head_dim": problem.head_dim, "head_dim_v": problem.head_dim,
              "dtype": dtype_name(problem.dtype), "causal": True,
              "scale": 1.0 / math.sqrt(problem.head_dim)}
    if kind == "sliding_window":
        return AttentionSpec(**common, mask=f"q_idx - kv_idx < {WINDOW}")
    if kind == "document":
        return AttentionSpec(**common, mask="Eq(doc[b, q_idx], doc[b, kv_idx])",
                             inputs=(TensorInput("doc", 2, "int64"),))
    return AttentionSpec(**common, score_mod="score + slopes[h]*(kv_idx - q_idx)",
                         inputs=(TensorInput("slopes", 1, "float32"),))


def _flex(kind: str, problem: AttentionProblem, extra: torch.Tensor) -> Attention:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention)
    n, score_mod = problem.seqlen, None
    if kind == "sliding_window":
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)
        batch = None
    elif kind == "document":
        def mask_mod(b, h, q_idx, kv_idx):
            return (extra[b, q_idx] == extra[b, kv_idx]) & (q_idx >= kv_idx)
        batch = problem.batch
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + extra[h] * (kv_idx - q_idx)
        batch = None
    block_mask = create_block_mask(mask_mod, batch, None, n, n, device="cuda")
    return lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


def visible_fraction(kind: str, problem: AttentionProblem, extra: torch.Tensor) -> float:
    """Fraction of (q, k) pairs the mask keeps (FlexAttention's FLOP convention)."""
    mask = _materialised(kind, problem, extra, torch.float32)
    if mask.dtype != torch.bool:
        mask = torch.isfinite(mask)
    return mask.float().mean().item()


def bench_masked(kind: str, batch: int = 2, heads: int = 16, seqlen: int = 8192,
                 head_dim: int = 128, dtype: str = "bf16", vs: Iterable[str] = BASELINES,
                 *, warmup_ms: float = 25, rep_ms: float = 100, skip_slow: bool = False,
                 progress: Callable[[str], None] = lambda message: None) -> list[BenchRow]:
    """Check then time every variant of one masked problem (see the module docstring)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask={kind!r} not understood; expected one of {MASK_KINDS}")
    check_dtype(dtype)
    vs = baselines(vs)
    require_cuda()
    import ioaware
    from ioaware.codegen.attention import op as ops

    problem = AttentionProblem(batch, heads, seqlen, head_dim, DTYPES[dtype], causal=True)
    extra = mask_extra(kind, batch, heads, seqlen, "cuda")
    plain: Attention = {
        "sliding_window": sliding_window_attention,
        "alibi": lambda q, k, v: alibi_attention(q, k, v, extra),
        "document": lambda q, k, v: document_attention(q, k, v, extra),
    }[kind]
    spec = _spec(kind, problem)
    inputs = [] if extra is None else [extra]
    density = visible_fraction(kind, problem, extra)

    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, heads, seqlen, head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=problem.dtype, generator=gen)
                     for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    mask = _materialised(kind, problem, extra, torch.float32)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))

    def sdpa_math(q_, k_, v_, attn_mask=mask):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask)

    want = _forward_backward(sdpa_math, q32, k32, v32, dout.float())
    del sdpa_math
    del q32, k32, v32, mask
    torch.cuda.empty_cache()

    def sdpa_materialised() -> Attention:
        attn_mask = _materialised(kind, problem, extra, problem.dtype)
        return lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask)

    builders: list[tuple[str, Callable[[], Attention]]] = [
        ("ioaware kernel", lambda: lambda q_, k_, v_: ops.attention(q_, k_, v_, spec, inputs)),
        ("ioaware.compile(eager)", lambda: ioaware.compile(plain)),
    ]
    peers = [("flex", "flex_attention", lambda: _flex(kind, problem, extra)),
             ("sdpa", "sdpa[materialised mask]", sdpa_materialised),
             ("compile", "torch.compile(eager)", lambda: torch.compile(plain))]
    builders += [(name, build) for key, name, build in peers if key in vs]
    if "eager" in vs and not skip_slow:
        builders.append(("eager", lambda: plain))
    # FLOPs of the visible pairs only: scale the problem's causal count to the density
    scale = density / 0.5

    rows: list[BenchRow] = []
    for name, build in builders:
        progress(f"{name} ({kind})")
        row = BenchRow(variant=name, causal=True)
        rows.append(row)
        attention = _check(row, build, (q, k, v, dout), want, TOLERANCE[problem.dtype], progress)
        if attention is None:
            continue
        _time(row, attention, problem, (q, k, v, dout), warmup_ms, rep_ms, progress)
        for field in ("fwd_tflops", "fwd_bwd_tflops"):
            if getattr(row, field) is not None:
                setattr(row, field, getattr(row, field) * scale)
        del attention
        torch.cuda.empty_cache()
    _attach_speedups(rows, "flex_attention")
    return rows
