"""Decode attention on a GPU: the split-KV kernels checked against eager, then timed.

    python scripts/gpu_decode.py              # checks, then the core table (< 3 minutes)
    python scripts/gpu_decode.py --all        # every variant of `ioaware bench decode`
    python scripts/gpu_decode.py --generate   # and the 4-layer generate() table

1. Correctness on CUDA (bf16 and fp32): dense and paged (shuffled block table, page 16)
   against eager softmax math in fp32, over masks generate() emits (none, a bottom-right
   causal offset, a sliding window, left padding) with GQA groups 1 and 4, query rows 1
   and 4, split counts the cost model picks and forced ones; then greedy generate() of a
   tiny Llama through ioaware.compile equal to eager token for token.
2. `ioaware bench decode` at B=8, Hq=32, Hkv=8, d=128, N = 4k and 32k, and B=1 at 128k,
   dense and paged (page 16): µs launched and replayed from a CUDA graph, the fraction
   of the floor (K and V read once), and the speed against the fastest SDPA backend;
   by default only ioaware's kernels, ioaware.compile of SDPA and SDPA's backends
   (flash, cuDNN, efficient), --all adds FlexAttention, torch.compile of the eager
   spelling and the paged-gather spellings. Under each table, per context, paged /
   dense under graphs (the issue's bar: at most 1.10).
3. With --generate: tokens/s of generate() on a 4-layer Llama-style model (hidden 2048,
   GQA 16/4, StaticCache, transformers' own compile off): eager, torch.compile and
   ioaware.compile, each default and mode="reduce-overhead" (up to 170 s more).
"""

from __future__ import annotations

import math
import sys

import torch

from ioaware.bench.decode import bench_decode, paged, render_decode_bench
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode import op


def check() -> bool:
    ok = True
    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-4)):
        for group, n_q, n, splits, mask in ((1, 1, 1000, 0, None), (4, 1, 4097, 0, "offset"),
                                           (4, 4, 777, 5, "window"), (4, 1, 3000, 0, "pad")):
            b, h_kv, d = 3, 2, 128
            q = torch.randn(b, h_kv * group, n_q, d, generator=gen).to("cuda", dtype)
            k, v = (torch.randn(b, h_kv, n, d, generator=gen).to("cuda", dtype)
                    for _ in range(2))
            i = torch.arange(n_q, device="cuda").view(-1, 1)
            j = torch.arange(n, device="cuda").view(1, -1)
            inputs, text, keep = [], None, torch.ones(b, 1, n_q, n, dtype=torch.bool,
                                                      device="cuda")
            if mask == "offset":
                text, keep = f"kv_idx <= q_idx + {n - n_q}", (j <= i + n - n_q)[None, None]
            elif mask == "window":
                text = f"(kv_idx <= q_idx + {n - n_q}) & (kv_idx > q_idx + {n - n_q - 100})"
                keep = ((j <= i + n - n_q) & (j > i + n - n_q - 100))[None, None]
            elif mask == "pad":
                pad = torch.arange(n, device="cuda")[None, :] >= torch.tensor(
                    [0, 5, 2000], device="cuda")[:, None]
                text, inputs, keep = "Ne(pad[b, kv_idx], 0)", [pad], pad[:, None, None, :]
            from ioaware.spec import TensorInput
            spec = AttentionSpec(
                head_dim=d, head_dim_v=d, dtype=str(dtype).split(".")[1], causal=False,
                scale=1 / math.sqrt(d), mask=text,
                inputs=(TensorInput("pad", 2, "bool"),) if inputs else ())
            kk = k.float().repeat_interleave(group, 1)
            vv = v.float().repeat_interleave(group, 1)
            s = (q.float() @ kk.transpose(-1, -2)) * spec.scale
            want = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ vv
            got = op.decode_attention(q, k, v, spec, inputs, splits)
            kc, vc, table = paged(k, v, 16, gen)
            got_paged = op.paged_decode_attention(q, kc, vc, table, n, spec, inputs, splits)
            for name, x in (("dense", got), ("paged", got_paged)):
                err = ((x.float() - want).norm() / want.norm()).item()
                good = err < tol
                ok &= good
                print(f"check {name:5} {dtype!s:14} group={group} Nq={n_q} N={n} "
                      f"mask={mask}: rel err {err:.1e} {'ok' if good else 'FAIL'}")
    return ok


def check_generate() -> bool:
    import warnings

    import transformers

    import ioaware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
            hidden_size=256, intermediate_size=512, vocab_size=512,
            bos_token_id=0, eos_token_id=0, pad_token_id=0)).cuda().eval()
    ids = torch.randint(1, 512, (2, 12), device="cuda")
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=32, do_sample=False)
        model.forward = ioaware.compile(model.forward)
        got = model.generate(ids, max_new_tokens=32, do_sample=False)
    good = torch.equal(ref, got)
    print(f"generate() tiny Llama fp32, 32 tokens: {'equal to eager' if good else 'DIFFERS'}; "
          f"rewrites {dict(ioaware.backend.counters)}")
    return good


CORE = ("ioaware decode", "ioaware paged", "ioaware.compile(sdpa)", "sdpa[")


def main() -> int:
    if {"-h", "--help"} & set(sys.argv):
        print(__doc__)
        return 0
    if not torch.cuda.is_available():
        print("gpu_decode.py: needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    ok = check() & check_generate()
    only = None if "--all" in sys.argv else CORE
    for batch, contexts in ((8, [4096, 32768]), (1, [131072])):
        rows = bench_decode(batch, 32, 8, contexts, 128, "bf16", page=16, warmup_ms=10,
                            rep_ms=50, only=only)
        title = (f"decode on {torch.cuda.get_device_name()}: B={batch} Hq=32 Hkv=8 d=128 "
                 "bf16, one query row")
        print(render_decode_bench(rows, title), end="")
        ok &= all(r.ok is not False for r in rows)
    if "--generate" in sys.argv:  # tokens/s of generate(): eager, reduce-overhead, ioaware
        from ioaware.bench.decode import bench_generate, render_generate_bench

        print(render_generate_bench(bench_generate(), "generate(), 4-layer Llama-style "
                                    "(hidden 2048, GQA 16/4), bf16, StaticCache, 128 + 128 "
                                    "tokens"), end="")
    print("ALL OK" if ok else "SOME CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
