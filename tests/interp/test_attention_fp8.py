"""The FP8 (e4m3) attention forward, run by Triton's interpreter, against eager math.

Operands are drawn fresh as `randn(...).to(float8_e4m3fn)` with per-tensor scales in
[0.5, 2] (never a power of two, so a scale that was dropped or applied twice shows), and
the yardstick is softmax(scale · (x8·s) ...) in float64 on the very same FP8 values:
the kernel reads exactly those bytes, so the only error left is its own arithmetic
(P rounded to the output dtype for P V, O rounded once), held to the output dtype's
tolerance of the 16-bit kernels (test_attention_kernel.TOLERANCE), never looser.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from sm90 import compile_sm90, has_ptx_backend, import_compiled
from test_attention_kernel import TOLERANCE, rel_err

from ioaware.codegen.attention import op as ops
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.config import config
from ioaware.spec import TensorInput

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

E4M3 = torch.float8_e4m3fn


def fp8_scale(gen: torch.Generator) -> torch.Tensor:
    """A one-element fp32 scale in [0.5, 2], not a power of two."""
    while True:
        s = 0.5 + 1.5 * torch.rand((), generator=gen)
        if not math.log2(s.item()).is_integer():
            return s.reshape(1).float()


def operands(gen, batch, h_q, h_kv, n_q, n_k, d, dv, fp8, dtype):
    """(q, k, v as the kernel reads them, their scales, and float64 dequantized copies)."""
    shapes = {"q": (batch, h_q, n_q, d), "k": (batch, h_kv, n_k, d), "v": (batch, h_kv, n_k, dv)}
    raw, scales, exact = {}, [], {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if name in fp8:
            x8 = x.to(E4M3)
            s = fp8_scale(gen)
            raw[name], exact[name] = x8, x8.double() * s.double()
            scales.append(s)
        else:
            raw[name] = x.to(dtype)
            exact[name] = raw[name].double()
    return raw, scales, exact


def exact_attention(q, k, v, scale, visible=None):
    """(out, lse) in float64; visible: bool [.., Nq, Nk] broadcastable, or None."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = scale * q @ k.transpose(-1, -2)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


CASES = [
    # (fp8 operands, causal, batch, Hq, Hkv, Nq, Nk, d, dv, output dtype)
    ("qkv", False, 2, 2, 2, 37, 45, 32, 32, torch.bfloat16),   # dense, ragged lengths
    ("qkv", True, 1, 4, 2, 50, 50, 64, 64, torch.float16),     # causal, GQA
    ("qkv", True, 2, 3, 1, 19, 53, 16, 32, torch.bfloat16),    # causal, Nq < Nk, dv != d
    ("kv", False, 1, 4, 1, 33, 70, 32, 32, torch.bfloat16),    # an FP8 KV cache
    ("kv", True, 1, 2, 2, 48, 48, 24, 24, torch.float16),      # padded head dim
    ("qk", False, 1, 2, 2, 17, 31, 32, 32, torch.float16),     # V in 16 bits
    ("v", True, 1, 2, 1, 40, 40, 32, 32, torch.bfloat16),
    ("qkv", True, 1, 2, 2, 29, 29, 16, 16, torch.float32),     # x8.float() * s, fp32 out
]


@pytest.mark.parametrize("fp8,causal,batch,h_q,h_kv,n_q,n_k,d,dv,dtype", CASES)
def test_plain_fp8_forward_matches_eager(fp8, causal, batch, h_q, h_kv, n_q, n_k, d, dv,
                                         dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((fp8, causal, n_q, n_k, d)).encode()))
    raw, scales, exact = operands(gen, batch, h_q, h_kv, n_q, n_k, d, dv, fp8, dtype)
    scale = 1.0 / math.sqrt(d)
    spec = AttentionSpec(head_dim=d, head_dim_v=dv, dtype=str(dtype).split(".")[1],
                         causal=causal, scale=scale, fp8=fp8)
    out, lse = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], scales,
                                           spec.to_json(), None)
    visible = torch.ones(n_q, n_k, dtype=torch.bool).tril() if causal else None
    want, want_lse = exact_attention(exact["q"], exact["k"], exact["v"], scale, visible)
    assert out.dtype == dtype and out.shape == (batch, h_q, n_q, dv)
    assert rel_err(out, want) <= TOLERANCE[dtype]
    assert rel_err(lse, want_lse) <= 1e-5  # fp32 statistics of exact FP8 products


def test_a_dropped_scale_fails():
    """The check above can fail: the kernel without s_v (a scale of 1) is far off."""
    gen = torch.Generator().manual_seed(3)
    raw, scales, exact = operands(gen, 1, 2, 2, 20, 20, 16, 16, "qkv", torch.bfloat16)
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="bfloat16", causal=False,
                         scale=0.25, fp8="qkv")
    without_sv = [*scales[:2], torch.ones(1)]
    out, _ = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], without_sv,
                                         spec.to_json(), None)
    want, _ = exact_attention(exact["q"], exact["k"], exact["v"], 0.25)
    assert rel_err(out, want) > 10 * TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("kind", ["window", "padding"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_fp8_forward_matches_eager(kind, dtype):
    """The general template: a sliding window (index-only) and a padding vector (data)."""
    gen = torch.Generator().manual_seed(11 if kind == "window" else 12)
    batch, h_q, h_kv, n, d = 2, 4, 2, 57, 32
    raw, scales, exact = operands(gen, batch, h_q, h_kv, n, n, d, d, "qkv", dtype)
    q_i, kv_i = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if kind == "window":
        spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype=str(dtype).split(".")[1],
                             causal=True, scale=0.2, mask="q_idx - kv_idx < 13", fp8="qkv")
        inputs, visible = [], (kv_i <= q_i) & (q_i - kv_i < 13)
    else:
        lengths = torch.tensor([n, 29])
        valid = torch.arange(n)[None, :] < lengths[:, None]  # [B, Nk]
        spec = AttentionSpec(head_dim=d, head_dim_v=d, dtype=str(dtype).split(".")[1],
                             causal=False, scale=0.2, mask="valid[b, kv_idx]",
                             inputs=(TensorInput("valid", 2, "bool"),), fp8="qkv")
        inputs, visible = [valid], valid[:, None, None, :]
    out, _ = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], [*inputs, *scales],
                                         spec.to_json(), None)
    want, _ = exact_attention(exact["q"], exact["k"], exact["v"], 0.2, visible)
    assert rel_err(out, want) <= TOLERANCE[dtype]


def test_reference_path_matches_the_kernels():
    """Without the interpreter, CPU runs reference.py on the dequantized operands."""
    gen = torch.Generator().manual_seed(8)
    raw, scales, _ = operands(gen, 1, 2, 1, 30, 41, 32, 32, "kv", torch.bfloat16)
    spec = AttentionSpec(head_dim=32, head_dim_v=32, dtype="bfloat16", causal=True,
                         scale=0.3, fp8="kv").to_json()
    got = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], scales, spec, None)
    config.interpret = False
    try:
        ref = torch.ops.ioaware.attention(raw["q"], raw["k"], raw["v"], scales, spec, None)
    finally:
        config.interpret = True
    assert rel_err(got[0], ref[0]) <= TOLERANCE[torch.bfloat16]
    assert rel_err(got[1], ref[1]) <= 1e-5


def test_operands_and_scales_are_checked():
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="bfloat16", causal=False,
                         scale=0.25, fp8="kv")
    q = torch.randn(1, 2, 8, 16).bfloat16()
    k8 = torch.randn(1, 2, 8, 16).to(E4M3)
    one = torch.ones(1)
    with pytest.raises(ValueError, match="k.dtype"):
        ops.attention(q, q, k8, spec, [one, one])
    with pytest.raises(ValueError, match="2 FP8 scales"):
        ops.attention(q, k8, k8, spec, [one])
    with pytest.raises(ValueError, match="scale of FP8 k"):
        ops.attention(q, k8, k8, spec, [torch.ones(4), one])
    with pytest.raises(ValueError, match="fp8="):
        AttentionSpec(head_dim=16, head_dim_v=16, dtype="bfloat16", causal=False,
                      scale=0.25, fp8="vk")


def test_fp8_has_no_backward():
    spec = AttentionSpec(head_dim=16, head_dim_v=16, dtype="bfloat16", causal=False,
                         scale=0.25, fp8="kv")
    q = torch.randn(1, 2, 8, 16).bfloat16().requires_grad_()
    k8 = torch.randn(1, 2, 8, 16).to(E4M3)
    out = ops.attention(q, k8, k8, spec, [torch.ones(1), torch.ones(1)])
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


def test_16_bit_specs_keep_their_keys():
    """`fp8` unset is not written into the JSON: caches keyed on 16-bit Specs hold."""
    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="float16", causal=True,
                         scale=0.125)
    assert "fp8" not in spec.to_json()
    assert AttentionSpec.from_json(spec.to_json()) == spec
    fp8 = AttentionSpec(head_dim=64, head_dim_v=64, dtype="float16", causal=True,
                        scale=0.125, fp8="qkv")
    assert AttentionSpec.from_json(fp8.to_json()) == fp8 and fp8.key() != spec.key()


# ---- compiled Triton, without a GPU ---------------------------------------------------

@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
@pytest.mark.parametrize("fp8", ["qkv", "kv"])
@pytest.mark.parametrize("general", [False, True])
def test_fp8_forward_compiles_for_hopper(tmp_path, fp8, general):
    """The interpreter widens every tl.dot operand to fp32; compiled Triton must take
    the FP8 product (and the widening of a lone FP8 operand) itself: build for sm_90,
    at the default config and at each TMA / warp-specialised variant it tunes among."""
    from ioaware.codegen.attention import forward as attention_fwd

    spec = AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=True,
                         scale=0.1, fp8=fp8, mask="q_idx - kv_idx < 512" if general else None)
    module = import_compiled(attention_fwd.render_forward(spec),
                             tmp_path / f"fp8_fwd_{fp8}_{general}.py")
    types = {"Lse": "*fp32", "ScaleQ": "*fp32", "ScaleK": "*fp32", "ScaleV": "*fp32",
             "Out": "*bf16", "Seed": "*i64", "FullCnt": "*i32", "FullList": "*i32",
             "PartCnt": "*i32", "PartList": "*i32"}
    for name in "QKV":
        types[name] = "*fp8e4nv" if name.lower() in fp8 else "*bf16"
    configs = [module.DEFAULT_CONFIG, *module.TUNE_CONFIGS]
    for tile in dict.fromkeys(configs):
        bm, bn, warps, stages = tile[:4]
        variant = tile[4] if len(tile) > 4 else ""
        if "gluon" in variant:
            continue
        constexprs = {"BLOCK_M": bm, "BLOCK_N": bn}
        if not general:
            constexprs.update(TMA="tma" in variant, WARP_SPEC="ws" in variant,
                              LAZY="lazy" in variant)
        compile_sm90(module._attn_fwd, constexprs, lambda a: types.get(a, "i32"),
                     num_warps=warps, num_stages=stages,
                     aligned=lambda a: a.startswith("stride") and not a.endswith("d"))
