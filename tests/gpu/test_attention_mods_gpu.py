"""ioaware::attention with masks, score mods, inputs and dropout, compiled on a CUDA GPU.

The variants of tests/interp/test_attention_mods.py at GPU sizes (ragged N up to 1000,
head dim 64 and 128, fp32 and bf16; N = 1100 for the launchers' tile tuning), against
the same torch attention in float64 on the GPU; plus the property the block map exists
for: the kernels' memory stays linear in N.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen.attention import op as ops
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import TensorInput
from ioaware.verify import relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_attention_mods import FLOOR, TOLERANCE, eager_attention


def _variant(name: str, batch: int, heads: int, n: int, gen: torch.Generator):
    """(mask text, mask fn, score-mod text, mod fn, {name: (tensor, requires_grad)})."""
    dev = "cuda"
    if name == "sliding_window":
        return ("q_idx - kv_idx < 128", lambda b, h, i, j, t: (i - j) < 128, None, None, {})
    if name == "alibi":
        slopes = torch.rand(heads, device=dev, generator=gen)
        return (None, None, "score + slopes[h]*(kv_idx - q_idx)",
                lambda s, b, h, i, j, t: s + t["slopes"][h] * (j - i), {"slopes": (slopes, False)})
    if name == "document":
        doc = torch.randint(0, 8, (batch, n), device=dev, generator=gen).sort(-1).values
        return ("Eq(doc[b, q_idx], doc[b, kv_idx])",
                lambda b, h, i, j, t: t["doc"][b, i] == t["doc"][b, j], None, None,
                {"doc": (doc, False)})
    if name == "padding_bias":
        lengths = torch.randint(n // 2, n + 1, (batch,), device=dev, generator=gen)
        pad = torch.arange(n, device=dev)[None, :] < lengths[:, None]
        bias = torch.randn(1, heads, 1, n, device=dev, generator=gen)
        return ("Ne(pad[b, kv_idx], 0)", lambda b, h, i, j, t: t["pad"][b, j],
                "score + bias[0, h, 0, kv_idx]",
                lambda s, b, h, i, j, t: s + t["bias"][0, h, 0, j],
                {"pad": (pad, False), "bias": (bias, True)})
    assert name == "softcap"
    return (None, None, "30.0*tanh(score/30.0)", lambda s, *g: 30.0 * torch.tanh(s / 30.0), {})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("semantics", ["neg_inf", "add"])
@pytest.mark.parametrize("name, d", [("sliding_window", 128), ("alibi", 128),
                                     ("document", 64), ("padding_bias", 128),
                                     ("softcap", 64)])
def test_variants_match_eager_on_gpu(name, d, semantics, dtype):
    _check_variant(name, d, semantics, dtype, 1000)


@pytest.mark.parametrize("name", ["padding_bias", "sliding_window"])
def test_tuned_tiles_match_eager_on_the_tuning_call_and_after(name):
    """Above TUNE_MIN_SCORES (1100² scores) the first call times every candidate tile of
    the forward, dK/dV and dQ, each with its own block map; the dQ trials add into the
    learned bias's gradient atomically, which must be reset before the real launch. The
    tuning call and the next (a cache lookup) both match eager."""
    for _ in range(2):
        _check_variant(name, 128, "neg_inf", torch.float32, 1100)


def test_launches_from_cached_binaries_match_eager():
    """codegen/launch keeps each kernel's binary per specialisation key and launches it
    directly on a hit. Hits (the same call again), and misses that Triton specialises
    differently (q, k, v one element into their storage: not 16-byte aligned; N = 1001:
    sizes not divisible by 16), in turn, each match eager, forward and backward."""
    from ioaware.codegen import cache, launch
    from ioaware.config import config

    spec = None
    for n, offset in [(1000, 0), (1000, 0), (1000, 1), (1001, 0), (1000, 1), (1000, 0)]:
        spec = _check_variant("padding_bias", 64, "neg_inf", torch.bfloat16, n, offset)
    module = cache.load_kernel_module("attention_fwd", spec, cache.device_tag("cuda"))
    keys = getattr(module._attn_fwd, launch._ATTR, {})
    assert len(keys) >= 3 or not config.fast_launch, keys


def _misaligned(t: torch.Tensor, offset: int) -> torch.Tensor:
    """t's values in a leaf that starts `offset` elements into its storage (a view)."""
    if offset == 0:
        return t.clone().requires_grad_()
    buf = torch.zeros(t.numel() + offset, dtype=t.dtype, device=t.device)
    buf[offset:].copy_(t.flatten())
    return buf.requires_grad_()[offset:].view(t.shape)


def _check_variant(name, d, semantics, dtype, n, offset=0):
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, h_kv = 2, 4, 2
    mask, mask_fn, mod, mod_fn, named = _variant(name, batch, heads, n, gen)
    fill = torch.finfo(dtype).min if semantics == "add" else float("-inf")
    inputs = tuple(TensorInput(k, t.dim(), str(t.dtype)[6:], rg) for k, (t, rg) in named.items())
    spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype=str(dtype)[6:], causal=True,
                         scale=1 / math.sqrt(d), mask=mask, score_mod=mod, inputs=inputs,
                         mask_semantics=semantics, mask_fill=fill)
    q = torch.randn(batch, heads, n, d, device="cuda", generator=gen).to(dtype)
    k, v = (torch.randn(batch, h_kv, n, d, device="cuda", generator=gen).to(dtype)
            for _ in range(2))
    leaves = [_misaligned(x, offset) for x in (q, k, v)]
    tensors = {k_: (t.clone().requires_grad_() if rg else t) for k_, (t, rg) in named.items()}
    out = ops.attention(*leaves, spec, list(tensors.values()))
    dout = torch.randn(out.shape, device="cuda", generator=gen).to(dtype)
    wrt = leaves + [tensors[k_] for k_, (_, rg) in named.items() if rg]
    got = [out, *torch.autograd.grad(out, wrt, dout)]

    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref_t = {k_: (t.double().requires_grad_() if rg else t) for k_, (t, rg) in named.items()}
    ref = eager_attention(*ref_leaves, spec.scale, True, mask_fn, mod_fn, ref_t, semantics,
                          fill)
    ref_wrt = ref_leaves + [ref_t[k_] for k_, (_, rg) in named.items() if rg]
    want = [ref, *torch.autograd.grad(ref, ref_wrt, dout.double())]
    for what, a, e in zip(["out", "dq", "dk", "dv", "dbias"], got, want):
        summed = max(1, batch * heads * n * n // e.numel()) if what == "dbias" else 1
        err = relative_error(a, e.to(a.dtype), floor=FLOOR[dtype] * summed**0.5)
        assert err <= TOLERANCE[dtype], f"{name} {what}: relative error {err:.3g}"
    return spec


def test_dropout_on_gpu_matches_the_keep_mask():
    gen = torch.Generator(device="cuda").manual_seed(1)
    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="float32", causal=True,
                         scale=0.125, dropout_p=0.2)
    q, k, v = (torch.randn(2, 4, 700, 64, device="cuda", generator=gen).requires_grad_()
               for _ in range(3))
    seed = torch.tensor([2024, 11], device="cuda")
    out = ops.attention(q, k, v, spec, (), seed)
    assert torch.equal(out, ops.attention(q, k, v, spec, (), seed))
    keep = ops.dropout_keep_mask(spec, seed, (2, 4, 700, 700), "cuda")
    s = (q.double() @ k.double().transpose(-1, -2)) * 0.125
    s = s.masked_fill(~torch.ones(700, 700, dtype=torch.bool, device="cuda").tril(),
                      float("-inf"))
    ref = torch.where(keep, torch.softmax(s, -1) / 0.8, 0.0) @ v.double()
    dout = torch.randn_like(out)
    got = [out, *torch.autograd.grad(out, (q, k, v), dout)]
    want = [ref, *torch.autograd.grad(ref, (q, k, v), dout.double())]
    for a, e in zip(got, want):
        assert relative_error(a, e.float(), floor=1e-2) <= 1e-4


def test_document_mask_memory_is_linear_in_n():
    """Peak memory of forward + backward at 2N is about twice that at N (no N×N)."""
    def peak(n: int) -> int:
        gen = torch.Generator(device="cuda").manual_seed(0)
        doc = torch.randint(0, 8, (1, n), device="cuda", generator=gen).sort(-1).values
        spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                             scale=0.125, mask="Eq(doc[b, q_idx], doc[b, kv_idx])",
                             inputs=(TensorInput("doc", 2, "int64"),))
        q, k, v = (torch.randn(1, 4, n, 64, device="cuda", dtype=torch.bfloat16,
                               generator=gen).requires_grad_() for _ in range(3))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops.attention(q, k, v, spec, [doc]).sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    # The first call at a size autotunes, and triton's do_bench allocates a 256 MB buffer
    # to flush L2 between trials: measure the second call, the steady state.
    peak(8192), peak(16384)
    small, large = peak(8192), peak(16384)
    assert large < 2.6 * small, (small, large)
