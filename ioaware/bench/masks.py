"""Masked and modified attention side by side: `ioaware bench attention --mask KIND`.

KIND is one of (`all` runs each in turn)
    sliding_window   causal, key j visible to query i iff i - 512 < j <= i
    alibi            causal, logit = score + slope_h · (j - i), slopes 2^(-8(h+1)/H)
    document         causal within 8 random documents per sequence (sorted ids)
    padding          not causal, the last 30 % of each batch row's keys are padding
                     (a [B, N] bool keep mask, as an encoder's attention_mask)
    bias             causal, logit = score + table[j - i + N - 1, h]: a learned relative
                     position bias, the fp32 table [2N - 1, H] a leaf whose gradient is
                     checked and timed with the rest
each written the plain PyTorch way (the spelling ioaware.compile must recognise).

Rows: ioaware's kernel called with a hand-written AttentionSpec, ioaware.compile of the
plain spelling, torch.compile(flex_attention) with its mask_mod / score_mod written by
hand (its block mask built once, outside timing, as Flex users do; skipped where this
torch has none), SDPA with the mask or bias materialised ([N, N] bool, or [H, N, N]
bias), and the plain spelling under torch.compile. Each is first checked against eager:
the plain spelling on fp32 copies of the inputs, a few heads at a time (outputs, the
q, k, v gradients and, for `bias`, the table's), then timed.

FLOPs: only the visible (q, k) pairs count, counted exactly from the mask (not from any
implementation's tiles), the same count for every row: 4·B·H·d·Σ visible forward, 3.5×
that forward+backward (FlexAttention's convention). `mask_density` also gives the share
of 128 × 128 tiles (Flex's block) that hold a visible pair and how many of those are
partial: the tiles a block-sparse kernel visits, and the ones it must mask.
Peak memory above the inputs is recorded too: ioaware's grows linearly in N, the
materialised mask's does not.
"""

from __future__ import annotations

import dataclasses
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
    _time,
    baselines,
)
from ioaware.bench.common import DTYPES, TOLERANCE, check_dtype, require_cuda

MASK_KINDS = ("sliding_window", "alibi", "document", "padding", "bias")
CAUSAL_KINDS = ("sliding_window", "alibi", "document", "bias")  # padding: an encoder's
WINDOW = 512
DOCUMENTS = 8
PADDING = 0.3  # share of each batch row's keys that are padding
FLEX_BLOCK = 128  # FlexAttention's block: the tile `mask_density` counts in
# Heads of the fp32 eager reference run at once: every kind's heads are independent, so
# only this many heads' fp32 scores are live (at B=2, N=8192: 2.1 GB per tensor).
REFERENCE_HEADS = 4
# Where the bench runs (a GPU; the CPU tests point it at the interpreter's device)
DEVICE = "cuda"

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


def padding_keep(batch: int, seqlen: int, device: torch.device | str) -> torch.Tensor:
    """[B, N] bool, False on padding: the last round(PADDING·N) keys of every batch row
    (right padding, as a tokenizer pads a batch to its longest sequence)."""
    keep = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
    keep[:, seqlen - round(PADDING * seqlen):] = False
    return keep


def relative_bias_table(heads: int, seqlen: int, device: torch.device | str) -> torch.Tensor:
    """A learned relative position bias: fp32 [2N - 1, H], row j - i + N - 1 holding the
    bias of key j for query i; a leaf that requires grad (fixed seed)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    table = torch.randn(2 * seqlen - 1, heads, generator=gen)
    return table.to(device).requires_grad_()


def mask_extra(kind: str, batch: int, heads: int, seqlen: int,
               device: torch.device | str) -> torch.Tensor | None:
    """The extra tensor `kind` reads (ALiBi's slopes, document ids, the keep mask, the
    bias table), or None."""
    if kind == "alibi":
        return alibi_slopes(heads, device)
    if kind == "document":
        return document_ids(batch, seqlen, device)
    if kind == "padding":
        return padding_keep(batch, seqlen, device)
    if kind == "bias":
        return relative_bias_table(heads, seqlen, device)
    return None


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


def padding_attention(q, k, v, keep):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep[:, None, None, :], float("-inf"))  # keep: [B, Nk]
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def relative_bias_attention(q, k, v, table):
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)
    rel = i[None, :] - i[:, None] + (n - 1)  # j - i, shifted into [0, 2N - 1)
    bias = table[rel].permute(2, 0, 1)  # [H, N, N] from the [2N - 1, H] table
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


# kind -> fn(q, k, v, extra), the plain spelling
SPELLINGS: dict[str, Callable[..., torch.Tensor]] = {
    "sliding_window": lambda q, k, v, extra: sliding_window_attention(q, k, v),
    "alibi": alibi_attention,
    "document": document_attention,
    "padding": padding_attention,
    "bias": relative_bias_attention,
}


def plain(kind: str, extra: torch.Tensor | None) -> Attention:
    """The plain spelling of `kind` as a function of (q, k, v), reading `extra`."""
    spelling = SPELLINGS[kind]
    return lambda q, k, v: spelling(q, k, v, extra)


def _head_slice(kind: str, extra: torch.Tensor | None, heads: slice) -> torch.Tensor | None:
    """The part of `extra` that heads `heads` read (slopes and table columns are per head)."""
    if kind == "alibi":
        return extra[heads]
    if kind == "bias":
        return extra[:, heads]
    return extra


def eager_reference(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    dout: torch.Tensor, extra: torch.Tensor | None,
                    heads_per_run: int = REFERENCE_HEADS) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv[, dtable]): the plain spelling on fp32 copies of the inputs,
    `heads_per_run` heads at a time; the bias table's gradient last for `bias`."""
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    learned = kind == "bias"
    extra32 = extra.detach().float().requires_grad_() if learned else extra
    outs = []
    for h in range(0, q.shape[1], heads_per_run):
        heads = slice(h, h + heads_per_run)
        out = SPELLINGS[kind](q32[:, heads], k32[:, heads], v32[:, heads],
                              _head_slice(kind, extra32, heads))
        out.backward(dout[:, heads].float())
        outs.append(out.detach())
    grads = (q32.grad, k32.grad, v32.grad) + ((extra32.grad,) if learned else ())
    return torch.cat(outs, dim=1), *grads


def visible_mask(kind: str, problem: AttentionProblem, extra: torch.Tensor | None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [B|1, 1, N|1, N]: the (q, k) pairs `kind` keeps (the same for every head)."""
    n = problem.seqlen
    i = torch.arange(n, device=device or DEVICE)
    causal = (i[None, :] <= i[:, None])[None, None]
    if kind == "sliding_window":
        return causal & (i[:, None] - i[None, :] < WINDOW)
    if kind == "document":
        return (extra[:, None, :, None] == extra[:, None, None, :]) & causal
    if kind == "padding":
        return extra[:, None, None, :]
    return causal  # alibi, bias: a causal score modification


def _materialised(kind: str, problem: AttentionProblem, extra: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """SDPA's attn_mask: the bool visible mask, or the ALiBi / relative bias [1, H, N, N]
    in `dtype` with -inf where masked."""
    keep = visible_mask(kind, problem, extra)
    if kind not in ("alibi", "bias"):
        return keep
    n = problem.seqlen
    i = torch.arange(n, device=DEVICE)
    if kind == "alibi":
        bias = extra[:, None, None] * (i[None, :] - i[:, None]).float()
    else:
        bias = extra.detach()[i[None, :] - i[:, None] + n - 1].permute(2, 0, 1)
    return bias.masked_fill(~keep[0], float("-inf")).to(dtype)[None]


def _spec(kind: str, problem: AttentionProblem):
    """The AttentionSpec the kernel row calls: the one the attention pass builds from the
    plain spelling, written out (its text and input names as the pass prints them; a
    test holds the two equal), so both ioaware rows launch one module, tuned once, and
    their difference is the compiled path's own cost."""
    from ioaware.codegen.attention.spec import AttentionSpec
    from ioaware.spec import TensorInput, dtype_name

    common = {"head_dim": problem.head_dim, "head_dim_v": problem.head_dim,
              "dtype": dtype_name(problem.dtype), "causal": kind in CAUSAL_KINDS,
              "scale": 1.0 / math.sqrt(problem.head_dim)}
    if kind == "sliding_window":
        return AttentionSpec(**common, mask=f"-kv_idx + q_idx < {WINDOW}")
    if kind == "document":  # in0: the document ids [B, N]
        return AttentionSpec(**common, mask="Eq(in0[b, q_idx], in0[b, kv_idx])",
                             inputs=(TensorInput("in0", 2, "int64"),))
    if kind == "padding":  # in0: the keep mask [B, N]
        return AttentionSpec(**common, mask="Ne(in0[b, kv_idx], 0)",
                             inputs=(TensorInput("in0", 2, "bool"),))
    if kind == "bias":  # in0: the table [2N - 1, H], learned
        return AttentionSpec(**common,
                             score_mod=f"1.0*score + in0[kv_idx - q_idx + {problem.seqlen - 1}, h]",
                             inputs=(TensorInput("in0", 2, "float32", requires_grad=True),))
    # alibi, in0: the slopes [H]
    return AttentionSpec(**common, score_mod="kv_idx*in0[h] - q_idx*in0[h] + 1.0*score",
                         inputs=(TensorInput("in0", 1, "float32"),))


def flex_mods(kind: str, problem: AttentionProblem, extra: torch.Tensor | None):
    """(mask_mod, score_mod or None, the block mask's batch size or None): `kind` in
    FlexAttention's spelling."""
    n, score_mod, batch = problem.seqlen, None, None

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    mask_mod = causal
    if kind == "sliding_window":
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)
    elif kind == "document":
        def mask_mod(b, h, q_idx, kv_idx):
            return (extra[b, q_idx] == extra[b, kv_idx]) & (q_idx >= kv_idx)
        batch = problem.batch
    elif kind == "padding":
        def mask_mod(b, h, q_idx, kv_idx):
            return extra[b, kv_idx]
        batch = problem.batch
    elif kind == "alibi":
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + extra[h] * (kv_idx - q_idx)
    else:  # bias: the table's gradient flows through Flex's backward
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + extra[kv_idx - q_idx + n - 1, h]
    return mask_mod, score_mod, batch


def _flex(kind: str, problem: AttentionProblem, extra: torch.Tensor | None) -> Attention:
    """torch.compile(flex_attention), its block mask built here, once (not per call)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention)
    mask_mod, score_mod, batch = flex_mods(kind, problem, extra)
    n = problem.seqlen
    block_mask = create_block_mask(mask_mod, batch, None, n, n, device=DEVICE)
    return lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


@dataclasses.dataclass(frozen=True)
class MaskDensity:
    """How much of the N × N square `kind` keeps, per (batch, head).

    visible: fraction of (q, k) pairs kept (the FLOP count of every row).
    tiles: fraction of block × block tiles holding a visible pair (visited by a
        block-sparse kernel); partial: fraction of those not wholly visible (masked
        element by element).
    """

    visible: float
    tiles: float
    partial: float


def mask_density(kind: str, problem: AttentionProblem, extra: torch.Tensor | None,
                 block: int = FLEX_BLOCK, device: torch.device | str | None = None
                 ) -> MaskDensity:
    """`kind`'s MaskDensity at tiles of `block` (a ragged last tile counts as partial)."""
    n = problem.seqlen
    keep = visible_mask(kind, problem, extra, device)
    keep = keep.expand(keep.shape[0], 1, n, n)[:, 0]
    t = -(-n // block)
    pad = t * block - n
    padded = F.pad(keep, (0, pad, 0, pad)).view(keep.shape[0], t, block, t, block)
    any_ = padded.any(4).any(2)
    all_ = padded.all(4).all(2)
    visited = any_.sum().item()
    return MaskDensity(visible=keep.float().mean().item(), tiles=visited / any_.numel(),
                       partial=(visited - all_.sum().item()) / max(visited, 1))


def visible_fraction(kind: str, problem: AttentionProblem, extra: torch.Tensor | None) -> float:
    """Fraction of (q, k) pairs the mask keeps (FlexAttention's FLOP convention)."""
    return visible_mask(kind, problem, extra).expand(
        -1, -1, problem.seqlen, -1).float().mean().item()


def masked_problem(kind: str, batch: int, heads: int, seqlen: int, head_dim: int,
                   dtype: str) -> AttentionProblem:
    """The AttentionProblem of `kind` at these sizes (causal unless `padding`)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask={kind!r} not understood; expected one of {MASK_KINDS}")
    check_dtype(dtype)
    return AttentionProblem(batch, heads, seqlen, head_dim, DTYPES[dtype],
                            causal=kind in CAUSAL_KINDS)


def bench_masked(kind: str, batch: int = 2, heads: int = 16, seqlen: int = 8192,
                 head_dim: int = 128, dtype: str = "bf16", vs: Iterable[str] = BASELINES,
                 *, warmup_ms: float = 25, rep_ms: float = 100, skip_slow: bool = False,
                 progress: Callable[[str], None] = lambda message: None) -> list[BenchRow]:
    """Check then time every variant of one masked problem (see the module docstring).
    Speed-ups are against flex_attention's row."""
    problem = masked_problem(kind, batch, heads, seqlen, head_dim, dtype)
    vs = baselines(vs)
    require_cuda()
    import ioaware
    from ioaware.codegen.attention import op as ops

    extra = mask_extra(kind, batch, heads, seqlen, DEVICE)
    leaves = (extra,) if kind == "bias" else ()  # the learned table's gradient is checked
    spelling = SPELLINGS[kind]
    spec = _spec(kind, problem)
    inputs = [] if extra is None else [extra]
    pairs = visible_fraction(kind, problem, extra) * seqlen * seqlen
    fwd_flops = 4.0 * batch * heads * head_dim * pairs  # QKᵀ and PV over the visible pairs

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (batch, heads, seqlen, head_dim)
    q, k, v, dout = (torch.randn(shape, device=DEVICE, dtype=problem.dtype, generator=gen)
                     for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    want = eager_reference(kind, q, k, v, dout, extra)
    torch.cuda.empty_cache()

    def sdpa_materialised() -> Attention:
        if kind == "bias":  # gathered from the table at every call, so its gradient flows
            i = torch.arange(seqlen, device=DEVICE)
            rel, hidden = i[None, :] - i[:, None] + seqlen - 1, i[None, :] > i[:, None]

            def bias() -> torch.Tensor:
                b = extra[rel].permute(2, 0, 1).masked_fill(hidden, float("-inf"))
                return b.to(problem.dtype)[None]
            return lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_,
                                                                     attn_mask=bias())
        attn_mask = _materialised(kind, problem, extra, problem.dtype)
        return lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask)

    def compiled(compile_fn: Callable) -> Callable[[], Attention]:
        # extra passed as an argument, so a learned table is a graph input with a gradient
        def build() -> Attention:
            fn = compile_fn(spelling)
            return lambda q_, k_, v_: fn(q_, k_, v_, extra)
        return build

    builders: list[tuple[str, Callable[[], Attention]]] = [
        ("ioaware kernel", lambda: lambda q_, k_, v_: ops.attention(q_, k_, v_, spec, inputs)),
        ("ioaware.compile(eager)", compiled(ioaware.compile)),
    ]
    peers = [("flex", "flex_attention", lambda: _flex(kind, problem, extra)),
             ("sdpa", "sdpa[materialised mask]", sdpa_materialised),
             ("compile", "torch.compile(eager)", compiled(torch.compile))]
    builders += [(name, build) for key, name, build in peers if key in vs]
    if "eager" in vs and not skip_slow:
        builders.append(("eager", lambda: plain(kind, extra)))

    rows: list[BenchRow] = []
    for name, build in builders:
        progress(f"{name} ({kind})")
        row = BenchRow(variant=name, causal=problem.causal)
        rows.append(row)
        attention = _check(row, build, (q, k, v, dout), want, TOLERANCE[problem.dtype],
                           progress, leaves)
        if attention is None:
            continue
        _time(row, attention, problem, (q, k, v, dout), warmup_ms, rep_ms, progress, leaves)
        # every row's FLOPs: the visible pairs' (not the problem's dense or causal count)
        if row.fwd_ms:
            row.fwd_tflops = fwd_flops / (row.fwd_ms * 1e-3) / 1e12
        if row.fwd_bwd_ms:
            row.fwd_bwd_tflops = 3.5 * fwd_flops / (row.fwd_bwd_ms * 1e-3) / 1e12
        del attention
        torch.cuda.empty_cache()
    _attach_speedups(rows, "flex_attention")
    return rows
