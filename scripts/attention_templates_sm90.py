"""One template per direction? The plain FlashAttention kernels beside the general
template rendered for the same plain Spec (every option off), compiled for sm_90.

Without a GPU (Triton ships ptxas): per kernel, registers, stack (spill) bytes, shared
memory and the SASS instruction counts of the whole kernel and of each loop (HGMMA,
MUFU, local-memory spill loads/stores), at one (BLOCK_M, BLOCK_N, warps, stages), the
first autotuning candidate of each kernel. With --time on a CUDA device: the forward
and the backward of both modules, timed with do_bench at one shape (median, ms).

    python scripts/attention_templates_sm90.py            # counts, docs/kernels.md
    python scripts/attention_templates_sm90.py --time     # on an H100: times
    python scripts/attention_templates_sm90.py --variants # sm_90 variants (fwd, dK/dV), counts
    python scripts/attention_templates_sm90.py --candidates  # backward: tuned and candidates
    PYTHONPATH=<triton 3.6> python scripts/attention_templates_sm90.py --poly  # poly exp2
    PYTHONPATH=<triton 3.6> python scripts/attention_templates_sm90.py --gluon  # Gluon fwd, dK/dV
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.codegen.attention import backward, forward
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.cache import _import_file

POINTERS = {"Lse": "*fp32", "Delta": "*fp32", "dLse": "*fp32", "Seed": "*i64",
            "FullCnt": "*i32", "FullList": "*i32", "PartCnt": "*i32", "PartList": "*i32",
            "EmptyHeads": "*i32", "DqAcc": "*fp32"}
TENSORS = ("Q", "K", "V", "Out", "O", "dO", "dQ", "dK", "dV")
VARIANTS = {  # name -> (forward renderer, backward renderer)
    "plain": (forward.render_forward, backward.render_backward),
    "general": (forward.render_general_forward, backward.render_general_backward),
}


def modules(spec: AttentionSpec, folder: Path, interpret: bool = False) -> dict:
    """variant -> (forward module, backward module), imported compiled."""
    out = {}
    for name, renders in VARIANTS.items():
        pair = []
        for direction, render in zip(("fwd", "bwd"), renders):
            path = folder / f"{name}_{direction}_{spec.head_dim}_{int(spec.causal)}.py"
            path.write_text(render(spec, interpret=interpret))
            pair.append(_import_file(path.stem, path, interpret))
        out[name] = tuple(pair)
    return out


def compile_sm90(fn, block_m: int, block_n: int, warps: int, stages: int, variant: str = ""):
    """Compile `fn` for sm_90 at one config; `variant` sets the plain kernels' sm_90
    switches (forward.VARIANTS: "tma" -> TMA=True, "ws" -> WARP_SPEC, "lazy" -> LAZY;
    dK/dV: "atomic" -> ATOMIC, dQ by atomics; "bulk" -> BULK, by TMA reduce-adds;
    "dpfirst" -> DP_FIRST, dPᵀ issued before P's exp2; dQ: "tma" -> TMA; forward:
    "polyK" -> POLY=K, 1/K of P's exp2 by the polynomial)."""
    values = {"BLOCK_M": block_m, "BLOCK_N": block_n}
    switches = {"TMA": "tma" in variant, "WARP_SPEC": "ws" in variant, "LAZY": "lazy" in variant,
                "ATOMIC": "atomic" in variant, "BULK": "bulk" in variant,
                "DP_FIRST": "dpfirst" in variant}
    values.update({name: on for name, on in switches.items() if name in fn.arg_names})
    if "POLY" in fn.arg_names:
        values["POLY"] = forward.poly_share(variant)
    signature = {a: "constexpr" if a in values else POINTERS.get(
        a, "*bf16" if a in TENSORS else "i32") for a in fn.arg_names}
    constexprs = {(fn.arg_names.index(name),): value for name, value in values.items()}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": stages})


def _mufu_under_pending(body: list[tuple[str, str]]) -> int:
    """exp2 (MUFU) issued while some wgmma group is pending, by counting groups: an
    HGMMA carrying `gsb0` commits one, `WARPGROUP.DEPBAR.LE gsb0, N` leaves at most N.
    Unlike the ARRIVE..DEPBAR span, this sees a softmax that runs after `wait(1)` under a
    product still in flight, and (a loop body: its second pass) one carried over the
    back edge."""
    pending = under = 0
    for _ in range(2):  # the steady state: groups left pending by the previous pass
        under = 0
        for _, text in body:
            if text.startswith("HGMMA") and "gsb0" in text:
                pending += 1
            elif text.startswith("WARPGROUP.DEPBAR.LE"):
                pending = min(pending, int(text.rsplit(",", 1)[1], 0))
            elif text.split()[0].startswith("MUFU.EX2") or text.split()[1:2] == ["MUFU.EX2"]:
                under += pending > 0
    return under


def _counts(body: list[tuple[str, str]]) -> dict[str, int]:
    """Counts over (control code, instruction) pairs of SASS."""
    ops = [t.split()[1] if t.startswith("@") else t.split()[0] for _, t in body]
    in_flight = False  # between a wgmma group's issue (ARRIVE) and its wait (DEPBAR)
    under_mma = 0
    for op in ops:
        if op.startswith("WARPGROUP.ARRIVE"):
            in_flight = True
        elif op.startswith("WARPGROUP.DEPBAR"):
            in_flight = False
        under_mma += in_flight and op.startswith("MUFU")
    return {"n": len(ops), "mma": sum("MMA" in o for o in ops),
            "mufu": sum(o.startswith("MUFU") for o in ops),
            # exp2 issued while a wgmma group runs: softmax work hidden under the matmuls
            "mufu_under_mma": under_mma,
            # the same counting pending groups (`_mufu_under_pending`)
            "mufu_pending": _mufu_under_pending(body),
            "spill": sum(o.startswith(("STL", "LDL")) for o in ops),
            # global atomics (REDG: relaxed, no result; ATOMG: returns the old value)
            "atomics": sum(o.startswith(("RED", "ATOM")) for o in ops),
            # TMA reduce-adds (cp.reduce.async.bulk.tensor: the fused-dQ Gluon kernel's)
            "utmaredg": sum(o.startswith("UTMAREDG") for o in ops),
            # shared-memory round trips, shuffles and barriers: layout conversions
            "smem": sum(o.startswith(("LDS", "STS", "LDSM", "STSM")) for o in ops),
            "shfl": sum(o.startswith("SHFL") for o in ops),
            "bar": sum(o.startswith(("BAR", "SYNCS")) for o in ops),
            "cvt": sum(o.startswith(("F2F", "F2FP")) for o in ops),
            # the FMA pipe's share of the softmax: fp32 arithmetic (FFMA, FADD, FMUL,
            # FMNMX, FSEL, FSETP) and integer ALU/IMAD work (the polynomial's 2^n)
            "ffma": sum(o.startswith("FFMA") for o in ops),
            "fp32": sum(o.startswith(("FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP"))
                        for o in ops),
            "int": sum(o.startswith(("IADD", "IMAD", "LEA", "SHF", "LOP3", "ISETP", "SEL",
                                     "IMNMX"))
                       for o in ops),
            # the stall counts of the control codes (last field, hex): issue cycles of
            # one warp through the body, waits on scoreboards not counted
            "stall": sum(int(c.rsplit(":", 1)[-1], 16) for c, _ in body
                         if re.fullmatch(r"[0-9a-f]+", c.rsplit(":", 1)[-1])),
            }


def sass_stats(kernel) -> dict:
    """Registers, stack bytes, shared memory; instruction counts of the kernel and of
    every innermost loop (a branch back to an earlier label, holding no other loop;
    one iteration per streamed tile), in SASS order."""
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(bindir / "cuobjdump"), "-res-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    order: list[tuple[str, str]] = []  # (control code, instruction)
    labels: dict[str, int] = {}
    for line in kernel.asm["sass"].splitlines():
        label = re.match(r"(LBB\d+):$", line.strip())
        if label:
            labels[label.group(1)] = len(order)
        elif "\t" in line:
            control, text = line.split("\t", 1)
            order.append((control.strip(), text.strip().rstrip(";")))
    spans = []
    for i, (_, text) in enumerate(order):
        target = re.search(r"\bBRA (LBB\d+)", text)
        if target and labels.get(target.group(1), i + 1) <= i:
            spans.append((labels[target.group(1)], i + 1))
    # the innermost loops (no loop inside): one iteration is one streamed tile
    loops = [_counts(order[a:b]) for a, b in spans
             if not any(a <= a2 and b2 <= b and (a2, b2) != (a, b) for a2, b2 in spans)]
    # Triton's SASS extraction (triton/tools/disasm.py) stops at offset 0xffff: kernels
    # past 4096 instructions come back cut, their later loops missing
    return {"regs": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1)),
            "smem": kernel.metadata.shared, "all": _counts(order), "loops": loops,
            "truncated": len(order) >= 4096}


def count(specs: list[AttentionSpec]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            configs = {"fwd": forward.forward_configs(spec)[0],
                       "dkdv": backward.dkdv_configs(spec)[0],
                       "dq": backward.dq_configs(spec)[0]}
            print(f"# {spec.dtype} d={spec.head_dim} causal={spec.causal}")
            for name, (fwd, bwd) in modules(spec, Path(folder)).items():
                for kernel, fn in (("fwd", fwd._attn_fwd), ("dkdv", bwd._bwd_dkdv),
                                   ("dq", bwd._bwd_dq)):
                    stats = sass_stats(compile_sm90(fn, *configs[kernel]))
                    print(name, kernel, configs[kernel], stats, flush=True)


def count_variants(specs: list[AttentionSpec]) -> None:
    """The plain forward at every variant config of its tuning space (and each variant
    at the first plain config), the plain dK/dV at its pointer default and its variant
    configs (tma, atomic): compiled for sm_90 with the Triton imported, or the error that stopped it."""
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            fwd, bwd = modules(spec, Path(folder))["plain"]
            configs = [c for c in forward.forward_configs(spec) if len(c) > 4]
            configs += [(*forward.forward_configs(spec)[0][:4], v)
                        for v in ("", "ws", "tma+ws", "tma+ws+lazy")]
            print(f"# triton {triton.__version__} {spec.dtype} d={spec.head_dim} "
                  f"causal={spec.causal}", flush=True)
            dkdv = [backward.default_dkdv_config(spec)] + [
                c for c in backward.dkdv_configs(spec) + backward.atomic_dkdv_configs(spec)
                if len(c) > 4]
            for kernel, fn, config in ([("fwd", fwd._attn_fwd, c) for c in configs]
                                       + [("dkdv", bwd._bwd_dkdv, c) for c in dkdv]):
                try:
                    stats = sass_stats(compile_sm90(fn, *config))
                except Exception as error:  # noqa: BLE001 - the report is the point
                    print(kernel, config, "FAILED:",
                          str(error).strip().splitlines()[-1][:200], flush=True)
                    continue
                loops = [(lp["n"], lp["mma"], lp["spill"]) for lp in stats["loops"] if lp["mma"]]
                print(kernel, config, f"regs={stats['regs']} stack={stats['stack']} "
                      f"smem={stats['smem']} sass={stats['all']['n']} "
                      f"hgmma={stats['all']['mma']} spill_ops={stats['all']['spill']} "
                      f"loops(n,mma,spill)={loops}", flush=True)


def count_poly(specs: list[AttentionSpec]) -> None:
    """The forward's tuned H100 config (128, 64, 8, 3), pointer and TMA loads, beside the
    same with 1/K of P's exp2 by the polynomial ("polyK", `forward.POLY_SHARES`): per
    loop with wgmma (one KV block of the whole CTA's 8 warps: counts are per warp),
    instructions / HGMMA / MUFU / FFMA / fp32 ops / integer ops / shared loads+stores /
    shuffles / spill ops / static issue cycles; registers and stack bytes."""
    print("config                               regs stack  loops "
          "(n/hgmma/mufu/ffma/fp32/int/lds_sts/shfl/spill/stall)")
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            fwd = modules(spec, Path(folder))["plain"][0]
            print(f"# triton {triton.__version__} {spec.dtype} d={spec.head_dim} "
                  f"causal={spec.causal}", flush=True)
            for base in ("", "tma"):
                for share in (0, *forward.POLY_SHARES):
                    variant = "+".join(v for v in (base, f"poly{share}" if share else "") if v)
                    config = (128, 64, 8, 3, variant)
                    try:
                        stats = sass_stats(compile_sm90(fwd._attn_fwd, *config))
                    except Exception as error:  # noqa: BLE001 - the report is the point
                        print(config, "FAILED:", str(error).strip().splitlines()[-1][:200])
                        continue
                    loops = " | ".join(
                        f"{lp['n']}/{lp['mma']}/{lp['mufu']}/{lp['ffma']}/{lp['fp32']}/"
                        f"{lp['int']}/{lp['smem']}/{lp['shfl']}/{lp['spill']}/{lp['stall']}"
                        for lp in stats["loops"] if lp["mma"])
                    print(f"{config!s:36} {stats['regs']:4d} {stats['stack']:5d}  {loops}",
                          flush=True)


def print_row(label: str, stats: dict, overlap: str, suffix: str = "") -> None:
    """One config's line: registers, stack, shared memory KB, then per innermost loop
    with wgmma n/hgmma/mufu/<overlap>/spill/lds_sts/stall (`overlap`: which count of
    exp2 under the matmuls, "mufu_under_mma" or "mufu_pending")."""
    loops = " | ".join(
        f"{lp['n']}/{lp['mma']}/{lp['mufu']}/{lp[overlap]}/{lp['spill']}"
        f"/{lp['smem']}/{lp['stall']}" for lp in stats["loops"] if lp["mma"])
    if stats["truncated"]:
        loops += " (SASS cut at 4096 instructions)"
    print(f"{label} {stats['regs']:4d} {stats['stack']:5d} {stats['smem'] / 1024:7.0f}  "
          f"{loops}{suffix}", flush=True)


def count_candidates(specs: list[AttentionSpec]) -> None:
    """The plain backward's tuned spaces beside its study candidates (issue 15;
    `backward.candidate_configs`), compiled for sm_90: per kernel and config, registers,
    stack bytes, shared memory, and per innermost loop with wgmma (one streamed tile an
    iteration): instructions / HGMMA / exp2 (MUFU) / exp2 issued while a wgmma group runs /
    spill operations / shared-memory loads and stores / static issue cycles of one warp."""
    print("kernel config                          regs stack smem_KB  loops "
          "(n/hgmma/mufu/mufu_under_mma/spill/lds_sts/stall)")
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            bwd = modules(spec, Path(folder))["plain"][1]
            dkdv, dq = backward.candidate_configs(spec)
            print(f"# triton {triton.__version__} {spec.dtype} d={spec.head_dim} "
                  f"causal={spec.causal}", flush=True)
            rows = ([("dkdv", bwd._bwd_dkdv, c) for c in backward.dkdv_configs(spec) + dkdv]
                    + [("dq", bwd._bwd_dq, c) for c in backward.dq_configs(spec) + dq])
            for kernel, fn, config in rows:
                try:
                    stats = sass_stats(compile_sm90(fn, *config))
                except Exception as error:  # noqa: BLE001 - the report is the point
                    print(kernel, config, "FAILED:",
                          str(error).strip().splitlines()[-1][:200], flush=True)
                    continue
                print_row(f"{kernel:6s} {config!s:32s}", stats, "mufu_under_mma")


def count_gluon(specs: list[AttentionSpec]) -> None:
    """The Gluon forward's candidates (`gluon_forward.CANDIDATES`; it builds with Triton
    3.6 only), compiled for sm_90: registers, stack, shared memory, and per innermost
    loop with wgmma: instructions / HGMMA / exp2 / exp2 while a wgmma group is pending
    (`_mufu_under_pending`) / spill operations / shared-memory stores and loads / static
    issue cycles of one warp."""
    from ioaware.codegen.attention import gluon_forward

    print("config                             regs stack smem_KB  loops "
          "(n/hgmma/mufu/mufu_pending/spill/lds_sts/stall)")
    for spec in specs:
        print(f"# triton {triton.__version__} {spec.dtype} d={spec.head_dim} "
              f"causal={spec.causal}", flush=True)
        for config in gluon_forward.candidate_configs(spec):
            try:
                stats = sass_stats(gluon_forward.compile_sm90(config, spec.head_dim,
                                                              spec.causal, spec.dtype))
            except Exception as error:  # noqa: BLE001 - the report is the point
                print(config, "FAILED:", str(error).strip().splitlines()[-1][:200])
                continue
            print_row(f"{config!s:34s}", stats, "mufu_pending")


def count_gluon_backward(specs: list[AttentionSpec]) -> None:
    """The Gluon dK/dV kernel's candidates (`gluon_backward.CANDIDATES`: d = 64, 128;
    Triton 3.6 only), compiled for sm_90, in the columns of `count_gluon`. One loop per
    consumer warpgroup and kind of query block (causal: the diagonal's masked loop, then
    the whole blocks'); every exp2 should be issued while the dPᵀ wgmma is pending.
    Then the fused-dQ kernel's ("gluon+atomic", `gluon_backward.FUSED_CANDIDATES`), with
    its TMA reduce-adds: UTMAREDG instructions in the whole kernel and per loop (one
    instruction a consumer and block; Triton's lowering spreads a tile of 256-byte rows
    over two warps, one 128-byte-swizzled box each)."""
    from ioaware.codegen.attention import gluon_backward

    print("dK/dV config                       regs stack smem_KB  loops "
          "(n/hgmma/mufu/mufu_pending/spill/lds_sts/stall)")
    for spec in specs:
        configs = gluon_backward.candidate_configs(spec)
        if not configs:
            print(f"# d={spec.head_dim}: refused ({gluon_backward.spec_reason(spec)})")
            continue
        print(f"# triton {triton.__version__} {spec.dtype} d={spec.head_dim} "
              f"causal={spec.causal}", flush=True)
        for config in configs + gluon_backward.fused_candidate_configs(spec):
            try:
                stats = sass_stats(gluon_backward.compile_sm90(config, spec.head_dim,
                                                               spec.causal, spec.dtype))
            except Exception as error:  # noqa: BLE001 - the report is the point
                print(config, "FAILED:", str(error).strip().splitlines()[-1][:200])
                continue
            suffix = ""
            if gluon_backward.is_fused(config):
                per_loop = "/".join(str(lp["utmaredg"]) for lp in stats["loops"]
                                    if lp["mma"])
                suffix = (f"  UTMAREDG {stats['all']['utmaredg']} (per loop {per_loop}),"
                          f" spill ops in all {stats['all']['spill']}")
            print_row(f"{config!s:34s}", stats, "mufu_pending", suffix)


def _medians_ms(fwd, bwd, q, k, v, do) -> tuple[float, float]:
    """Median ms of one forward and one backward launch of the modules fwd, bwd."""
    import torch
    from triton.testing import do_bench

    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    return (do_bench(lambda: fwd.forward(q, k, v, out, lse), return_mode="median"),
            do_bench(lambda: bwd.backward(do, q, k, v, out, lse, None, dq, dk, dv),
                     return_mode="median"))


def time(specs: list[AttentionSpec], batch: int, heads: int, n: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            q, k, v, do = (torch.randn(batch, heads, n, spec.head_dim, device="cuda",
                                       dtype=torch.bfloat16) for _ in range(4))
            for name, (fwd, bwd) in modules(spec, Path(folder)).items():
                ms_fwd, ms_bwd = _medians_ms(fwd, bwd, q, k, v, do)
                print(f"d={spec.head_dim} causal={spec.causal} {name}: forward {ms_fwd:.3f} ms, "
                      f"backward {ms_bwd:.3f} ms ({torch.cuda.get_device_name()}, "
                      f"B={batch} H={heads} N={n} bf16)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="time on the CUDA device")
    parser.add_argument("--variants", action="store_true",
                        help="compile the forward's sm_90 variant configs (no GPU)")
    parser.add_argument("--candidates", action="store_true",
                        help="compile the backward's tuned configs and study candidates "
                             "(no GPU)")
    parser.add_argument("--gluon", action="store_true",
                        help="compile the Gluon forward's and dK/dV kernel's candidates "
                             "(triton 3.6; no GPU)")
    parser.add_argument("--poly", action="store_true",
                        help="compile the forward with a share of P's exp2 by the "
                             "polynomial, d = 64 (no GPU)")
    parser.add_argument("--shape", type=int, nargs=3, default=(4, 16, 4096),
                        metavar=("B", "H", "N"))
    args = parser.parse_args()
    specs = [AttentionSpec(head_dim=d, head_dim_v=d, dtype="bfloat16", causal=causal,
                           scale=d ** -0.5) for d in (64, 128) for causal in (False, True)]
    wide = [AttentionSpec(head_dim=256, head_dim_v=256, dtype="bfloat16", causal=causal,
                          scale=256 ** -0.5) for causal in (False, True)]
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's default, quietly
    if args.time:
        time(specs, *args.shape)
    elif args.gluon:
        count_gluon(specs + wide)
        count_gluon_backward(specs + wide)
    elif args.candidates:
        count_candidates(specs + wide)
    elif args.poly:
        count_poly([s for s in specs if s.head_dim == 64])
    elif args.variants:
        count_variants(specs + wide)
    else:
        count(specs)


if __name__ == "__main__":
    sys.exit(main())
