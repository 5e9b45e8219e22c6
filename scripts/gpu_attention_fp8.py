"""The FP8 (e4m3) attention forward (issue 15, item 4) on a GPU: checked, then timed
beside the bf16 forward and cuDNN.

1. Correctness, on fresh random FP8 q, k, v (randn(...).to(float8_e4m3fn)) with scales
   in [0.5, 2] that are not powers of two: the FP8 forward (q, k, v all FP8, and an FP8
   KV cache with bf16 q, GQA) at ragged sizes, dense and causal, against fp32 math on the
   dequantized values (x8 · s): relative Frobenius error of O within bf16's 1e-2, lse
   within 2e-3 (plus, where QKᵀ runs on FP8 operands, the FP8 accumulator's share:
   `lse_bound`). Each timed case is checked too, on a slice of its output.
2. Forward TFLOP/s (4·B·H·N²·d, halved causal; do_bench median) at B=4 H=16 N=4096
   d=128, dense and causal: FP8 (tuned on its first call, as a user gets it), the bf16
   forward on the dequantized tensors, cuDNN (SDPA's CUDNN_ATTENTION) on the same.

The floor. Half the FLOPs are QKᵀ, on FP8 operands at the FP8 dense rate; half are P V,
in bf16 (P and V in the output dtype) at bf16's:

    t_floor = (F/2) / R_fp8 + (F/2) / R_bf16,  F = 4·B·H·N²·d (causal: half)
    R_fp8 ≈ 1980, R_bf16 ≈ 990 dense TFLOP/s on an H100 SXM (datasheet: the sparse
    rates halved), so F / t_floor = 1320 TFLOP/s: 4/3 of the bf16 forward's 990 floor

(the bytes are far below the compute at N = 4096: Q, K, V at 1 byte an element and O
in bf16 take ~0.2 ms of ~3 TB/s, against ~0.5 ms of compute). Each forward is printed
with its fraction of its own floor (FP8: 1320; bf16 and cuDNN: 990). FA3's all-FP8
P V (P quantized to e4m3) would lift the floor to 1980; see docs/kernels.md.

Exit 1 on any wrong answer.

    python scripts/gpu_attention_fp8.py        # about a minute on an H100
"""

from __future__ import annotations

import math
import sys

import torch

E4M3 = torch.float8_e4m3fn
R_FP8, R_BF16 = 1980.0, 990.0  # dense TFLOP/s, H100 SXM datasheet
FP8_FLOOR = 2.0 / (1.0 / R_FP8 + 1.0 / R_BF16)  # 1320: QKᵀ at R_FP8, P V at R_BF16
TIMED = [(4, 16, 4096, 128, False), (4, 16, 4096, 128, True)]
RAGGED = [  # (fp8, B, Hq, Hkv, Nq, Nk, d, causal)
    ("qkv", 2, 4, 2, 1000, 1537, 128, False), ("qkv", 2, 4, 2, 1537, 1537, 128, True),
    ("kv", 2, 8, 2, 333, 2049, 64, False), ("kv", 1, 8, 8, 1024, 1024, 128, True),
]
O_TOLERANCE, LSE_TOLERANCE = 1e-2, 2e-3
# Hopper's FP8 wgmma keeps about 14 bits of its accumulator, not fp32's 24 (DeepSeek-V3's
# technical report, "Increasing Accumulation Precision"): a score from FP8 q and k is off
# by up to ~2^-13 of Σ_i |q_i k_i|·scale.
# The lse of a row dominated by one score (a causal row's first keys) carries that whole
# error, so where QKᵀ runs on FP8 operands the lse bound adds it, row by row
# (`lse_bound`); the 16-bit QKᵀ of an FP8 KV cache with a bf16 q keeps 2e-3 alone.
FP8_ACCUMULATOR_EPS = 2.0 ** -13


def scale_of(gen: torch.Generator) -> torch.Tensor:
    """A one-element fp32 scale in [0.5, 2], not a power of two, on the GPU."""
    while True:
        s = 0.5 + 1.5 * torch.rand((), generator=gen)
        if not math.log2(s.item()).is_integer():
            return s.reshape(1).cuda()


def operands(fp8: str, b, h_q, h_kv, n_q, n_k, d, gen):
    """(q, k, v as the kernel reads them, the FP8 operands' scales, fp32 dequantized)."""
    read, scales, fp32 = [], [], []
    for name, h, n in (("q", h_q, n_q), ("k", h_kv, n_k), ("v", h_kv, n_k)):
        x = torch.randn(b, h, n, d, generator=gen).cuda()
        if name in fp8:
            s = scale_of(gen)
            x8 = x.to(E4M3)
            read.append(x8)
            scales.append(s)
            fp32.append(x8.float() * s)
        else:
            read.append(x.bfloat16())
            fp32.append(read[-1].float())
    return read, scales, fp32


def spec_json(fp8: str, d: int, causal: bool) -> str:
    from ioaware.codegen.attention.spec import AttentionSpec

    return AttentionSpec(head_dim=d, head_dim_v=d, dtype="bfloat16", causal=causal,
                         scale=1.0 / math.sqrt(d), fp8=fp8).to_json()


def reference(q, k, v, causal: bool, rows: slice = slice(None)):
    """fp32 (O, lse) of the query rows `rows`, GQA expanded."""
    group = q.shape[1] // k.shape[1]
    q = q[:, :, rows]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        start = rows.start or 0
        i = torch.arange(start, start + q.shape[2], device=q.device)[:, None]
        s = s.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > i,
                          float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def lse_bound(q, k, fp8: str, rows: slice = slice(None)):
    """Per query row (of `rows`), how far the kernel's lse may be from fp32 math:
    LSE_TOLERANCE, plus, where q and k are both FP8 (QKᵀ on FP8 tensor cores),
    FP8_ACCUMULATOR_EPS · scale · max_j Σ_i |q_i k_ji| (q, k dequantized, GQA expanded)."""
    if not ("q" in fp8 and "k" in fp8):
        return LSE_TOLERANCE
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    sums = q[:, :, rows].abs() @ k.abs().transpose(-1, -2)
    return LSE_TOLERANCE + FP8_ACCUMULATOR_EPS / math.sqrt(q.shape[-1]) * sums.amax(-1)


def check(label: str, got, want, failures: list, bound=LSE_TOLERANCE) -> None:
    """O within O_TOLERANCE (relative Frobenius), every row's lse within `bound` (a
    number or a tensor of rows: `lse_bound`)."""
    (out, lse), (w_out, w_lse) = got, want
    rel = ((out.float() - w_out).norm() / w_out.norm()).item()
    lse_err = (lse - w_lse).abs()
    ok = (rel <= O_TOLERANCE and bool((lse_err <= bound).all())
          and not out.isnan().any())
    worst = (lse_err / bound).max().item()
    print(f"  {label:44s} O rel {rel:.2e}  lse max {lse_err.max().item():.1e} "
          f"({worst:.2f} of its bound)  {'ok' if ok else 'WRONG'}")
    if not ok:
        failures.append(label)


def time_case(b: int, h: int, n: int, d: int, causal: bool, gen: torch.Generator,
              failures: list) -> None:
    """Check the FP8 forward at this size (its last query rows), then time it beside the
    bf16 forward and cuDNN on the dequantized tensors."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    from ioaware.codegen.attention import op as ops

    attention = torch.ops.ioaware.attention
    (q, k, v), scales, f32 = operands("qkv", b, h, h, n, n, d, gen)
    spec = spec_json("qkv", d, causal)
    kind = "causal" if causal else "dense"
    rows = slice(n - 256, n)  # the last query rows see every key
    got = attention(q, k, v, scales, spec, None)  # tunes on its first call
    got = (got[0][:1, :, rows], got[1][:1, :, rows])
    check(f"fp8 qkv {kind} (timed case, last 256 rows)", got,
          reference(*(t[:1] for t in f32), causal, rows), failures,
          lse_bound(f32[0][:1], f32[1][:1], "qkv", rows))
    q16, k16, v16 = (t.bfloat16() for t in f32)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(
                q16, k16, v16, is_causal=causal)

    flops = 4.0 * b * h * n * n * d / (2 if causal else 1)
    timings = {
        "fp8 (ioaware)": (lambda: attention(q, k, v, scales, spec, None), FP8_FLOOR),
        "bf16 (ioaware)": (lambda: ops.flash_attention(q16, k16, v16, causal=causal), R_BF16),
        "bf16 cuDNN": (cudnn, R_BF16),
    }
    for label, (fn, floor) in timings.items():
        fn()
        ms = do_bench(fn, return_mode="median")
        tflops = flops / ms / 1e9
        print(f"  {kind:6s} {label:15s} {ms:7.3f} ms  {tflops:6.0f} TFLOP/s  "
              f"{tflops / floor:5.1%} of {floor:.0f}")


def main() -> int:
    from ioaware.codegen.attention import op  # noqa: F401  (registers torch.ops.ioaware)

    if torch.cuda.get_device_capability() < (8, 9):
        print("FP8 tensor cores need sm_89 or later: nothing to run")
        return 1
    attention = torch.ops.ioaware.attention
    gen = torch.Generator().manual_seed(0)
    failures: list[str] = []
    print("1. correctness at ragged sizes (fp32 math on x8 · s)")
    for fp8, b, h_q, h_kv, n_q, n_k, d, causal in RAGGED:
        (q, k, v), scales, f32 = operands(fp8, b, h_q, h_kv, n_q, n_k, d, gen)
        got = attention(q, k, v, scales, spec_json(fp8, d, causal), None)
        check(f"fp8 {fp8} B{b} H{h_q}/{h_kv} {n_q}x{n_k} d{d} "
              f"{'causal' if causal else 'dense'}", got, reference(*f32, causal), failures,
              lse_bound(f32[0], f32[1], fp8))

    print("\n2. forward at B=4 H=16 N=4096 d=128 (TFLOP/s; fraction of its floor: FP8 "
          f"{FP8_FLOOR:.0f}, bf16 {R_BF16:.0f})")
    for case in TIMED:
        time_case(*case, gen, failures)
    if failures:
        print(f"\nWRONG: {failures}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
