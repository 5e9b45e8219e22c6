"""SASS counts of the selective-scan kernels for sm_90, without a GPU, per state element.

Renders the forward and backward for the issue's Spec (N = 16, bf16, D, z, delta_bias,
softplus, G = 1), compiles them with triton's own ptxas for sm_90 as a contiguous launch
at the issue's shape specialises them (16-byte aligned pointers, ints divisible by 16,
unit strides and G = 1 as constants), and prints per loop (a branch back to an earlier
label) the SASS instructions issued per state element: all, MUFU, FP32 (FFMA, FADD,
FMUL, FMNMX, FSEL, FSETP), INT (IMAD, IADD3, LEA, SHF, LOP3, ISETP, SEL) and SHFL; plus
registers and spill (stack) bytes. One row per POLY_EVERY (0: every exp2 on MUFU).

    PYTHONPATH=<triton 3.6> python scripts/scan_sass_sm90.py [--poly 0 8 4 2 1]

The floors printed beside each count, at the issue's shape on an H100 (132 SMs,
1.98 GHz): issue = elements · instructions / (128 per clock per SM), MUFU = elements ·
MUFU / (16 per clock per SM); bytes 33.8 µs forward, 59 µs backward (3.0 TB/s copy).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from attention_templates_sm90 import sass_stats  # scripts/ is sys.path[0]

from ioaware.codegen.cache import _import_file
from ioaware.codegen.scan import backward as scan_bwd
from ioaware.codegen.scan import forward as scan_fwd
from ioaware.codegen.scan.spec import ScanSpec

SPEC = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, delta_dtype="bfloat16",
                bc_dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                delta_softplus=True)
BATCH, CHANNELS, LENGTH, N = 4, 1536, 2048, 16
ELEMENTS = BATCH * CHANNELS * LENGTH * N
SMS, CLOCK = 132, 1.98e9
BYTES_US = {"fwd": 33.8, "bwd": 59.0}
LOW = {"DOut", "U", "Delta", "B", "C", "Z", "Y", "DU", "DDelta", "DZ"}
# Argument values of a contiguous launch at the issue's shape (the rest are pointers).
INTS = {
    "stride_ub": CHANNELS * LENGTH, "stride_ud": LENGTH, "stride_ul": 1,
    "stride_db": CHANNELS * LENGTH, "stride_dd": LENGTH, "stride_dl": 1,
    "stride_ob": CHANNELS * LENGTH, "stride_od": LENGTH, "stride_ol": 1,
    "stride_zb": CHANNELS * LENGTH, "stride_zd": LENGTH, "stride_zl": 1,
    "stride_ad": N, "stride_an": 1,
    "stride_bb": LENGTH * N, "stride_bg": LENGTH * N, "stride_bl": N, "stride_bn": 1,
    "stride_cb": LENGTH * N, "stride_cg": LENGTH * N, "stride_cl": N, "stride_cn": 1,
    "stride_hb": CHANNELS * N, "stride_hd": N, "stride_hn": 1,
    "DC": CHANNELS, "L": LENGTH, "L_BUCKET": LENGTH, "N_CHUNKS": LENGTH // 8, "G": 1,
}
FP32 = ("FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP")
INT = ("IMAD", "IADD3", "LEA", "SHF", "LOP3", "ISETP", "SEL", "IADD")


def compile_kernel(fn, constexprs: dict, warps: int, *, ints: dict | None = None,
                   low: set | None = None, stages: int | None = None):
    """`fn` built for sm_90 as a contiguous launch would specialise it: the arguments in
    `ints` (this script's INTS) as their values (1 a constant, multiples of 16
    divisible), the others pointers (bf16 where named in `low`, this script's LOW, else
    fp32), constexprs given or at their defaults. scripts/ssd_sass_sm90.py uses it too."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ints = INTS if ints is None else ints
    low = LOW if low is None else low
    # A knob this kernel does not have (an older checkout's) is left out.
    constexprs = {**{q.name: q.default for q in fn.params if q.is_constexpr and q.has_default},
                  **{k: v for k, v in constexprs.items() if k in fn.arg_names}}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ints:
            if ints[name] == 1:  # a launch specialises 1 to a constant
                constexprs[name] = 1
                signature[name] = "constexpr"
            else:
                signature[name] = "i32"
                if ints[name] % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "*bf16" if name in low else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, attrs=attrs, constexprs={
        (fn.arg_names.index(k),): v for k, v in constexprs.items()})
    options = {"num_warps": warps, **({} if stages is None else {"num_stages": stages})}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def op_counts(sass: str) -> list[dict[str, int]]:
    """Per loop of the SASS (as sass_stats finds them): counts by instruction class."""
    order, labels = [], {}
    for line in sass.splitlines():
        label = re.match(r"(LBB\d+|\.L_x_\d+):$", line.strip())
        if label:
            labels[label.group(1)] = len(order)
        elif "\t" in line:
            order.append(line.split("\t", 1)[1].strip().rstrip(";"))
    loops = []
    for i, text in enumerate(order):
        target = re.search(r"\bBRA (\S+)", text)
        if target and labels.get(target.group(1), i + 1) <= i:
            body = [t.split()[1] if t.startswith("@") else t.split()[0]
                    for t in order[labels[target.group(1)]: i + 1]]
            loops.append({
                "all": len(body), "mufu": sum(o.startswith("MUFU") for o in body),
                "fp32": sum(o.split(".")[0] in FP32 for o in body),
                "int": sum(o.split(".")[0] in INT for o in body),
                "shfl": sum(o.startswith("SHFL") for o in body),
                "cvt": sum(o.startswith(("F2F", "F2I", "I2F", "PRMT", "FRND")) for o in body),
                "spill": sum(o.startswith(("STL", "LDL")) for o in body)})
    return loops


def report(kind: str, fn, config: tuple[int, int, int], poly: int) -> None:
    block_d, block_l, warps = config
    kernel = compile_kernel(fn, {"BLOCK_D": block_d, "BLOCK_L": block_l, "CPG": CHANNELS,
                                 "PREFETCH": scan_fwd.PREFETCH_CHUNKS, "POLY_EVERY": poly},
                            warps)
    stats = sass_stats(kernel)
    per_trip = block_l * N * block_d / (32 * warps)  # state elements per thread per trip
    # Outer loops only: the ones with a chunk's worth of work (the backward's inner
    # loops, if any, are unrolled).
    loops = [lp for lp in op_counts(kernel.asm["sass"]) if lp["all"] >= per_trip]
    print(f"{kind} {config} POLY_EVERY={poly}: {stats['regs']} registers, "
          f"{stats['stack']} B stack", flush=True)
    total = 0.0
    mufu_total = 0.0
    for number, lp in enumerate(loops):
        per = {k: v / per_trip for k, v in lp.items()}
        total += per["all"]
        mufu_total += per["mufu"]
        print(f"  loop {number}: {per['all']:5.2f} per element (MUFU {per['mufu']:.2f}, "
              f"FP32 {per['fp32']:.2f}, INT {per['int']:.2f}, SHFL {per['shfl']:.2f}, "
              f"CVT/PRMT {per['cvt']:.2f}, spill {per['spill']:.2f})")
    issue_us = ELEMENTS * total / (128 * SMS * CLOCK) * 1e6
    mufu_us = ELEMENTS * mufu_total / (16 * SMS * CLOCK) * 1e6
    print(f"  floors: issue {issue_us:.0f} us, MUFU {mufu_us:.0f} us, bytes "
          f"{BYTES_US[kind]:.0f} us -> predicted floor "
          f"{max(issue_us, mufu_us, BYTES_US[kind]):.0f} us", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poly", type=int, nargs="*", default=[0, 16, 8, 4, 2, 1],
                        help="POLY_EVERY values (0: all exp2 on MUFU)")
    parser.add_argument("--only", choices=("fwd", "bwd"))
    parser.add_argument("--all-configs", action="store_true",
                        help="every autotuning candidate, not only the first")
    options = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's default, quietly
    with tempfile.TemporaryDirectory() as folder:
        for kind, render, name, configs in (
                ("fwd", scan_fwd.render_forward, "_selective_scan_fwd",
                 scan_fwd.tile_configs(SPEC, "h100")),
                ("bwd", scan_bwd.render_backward, "_selective_scan_bwd",
                 scan_bwd.backward_configs(SPEC, "h100"))):
            if options.only not in (None, kind):
                continue
            path = Path(folder) / f"scan_sm90_{kind}.py"
            path.write_text(render(SPEC, interpret=False, profile="h100"))
            module = _import_file(path.stem, path, False)
            for config in configs if options.all_configs else configs[:1]:
                for poly in options.poly:
                    report(kind, getattr(module, name), config, poly)
    return 0


if __name__ == "__main__":
    sys.exit(main())
