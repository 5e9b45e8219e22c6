"""The masked paths per tile: the general attention kernels of the bench's five masked
Specs (`ioaware bench attention --mask all`), compiled for sm_90 without a GPU.

For each Spec (bf16, d=128, N=8192) and each kernel (forward, dK/dV, dQ) at a config
of its tuning space: registers, stack (spill) bytes, shared memory and, per loop in
SASS order (the full-tile sweep, then the partial-tile sweep), the instructions, HGMMA,
MUFU (exp2), spill loads/stores and global atomics (per thread) of one trip, i.e. of one
tile. The full-tile loop is
the floor a block-sparse kernel can reach on a tile; the partial loop's excess is what
evaluating the mask element by element costs. Triton ships ptxas, so no GPU is needed:

    PYTHONPATH=<a triton 3.6 install> python scripts/masked_templates_sm90.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import triton
from attention_templates_sm90 import POINTERS, TENSORS, sass_stats
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.bench.masks import MASK_KINDS, _spec, masked_problem
from ioaware.codegen.attention import backward, forward
from ioaware.codegen.cache import _import_file

TRITON_DTYPES = {"bool": "*i1", "int64": "*i64", "float32": "*fp32"}


def _input_pointers(spec) -> dict[str, str]:
    """The general kernels' extra pointers: In<i> (the Spec's inputs), DIn<i> (fp32
    gradients of the learned ones)."""
    out = {f"In{i}": TRITON_DTYPES[t.dtype] for i, t in enumerate(spec.inputs)}
    out.update({f"DIn{i}": "*fp32" for i, t in enumerate(spec.inputs) if t.requires_grad})
    return out


def _is_one(name: str, spec) -> bool:
    """Integer arguments that are 1 at the bench's launch (contiguous tensors): the
    head-dim strides, the last stride of every input and gradient, GROUP (no GQA)."""
    last = {f"{p}{i}_s{t.ndim - 1}" for i, t in enumerate(spec.inputs) for p in ("in", "din")}
    return (name.startswith("stride") and name.endswith("d")) or name in last or name == "GROUP"


def compile_specialized(fn, spec, block_m: int, block_n: int, warps: int, stages: int):
    """Compile `fn` for sm_90 as Triton's JIT specializes it at the bench's launch
    (B=2, H=16, N=8192, d=128, contiguous): an int equal to 1 becomes a constant, the
    other sizes and strides (multiples of 16) and every pointer (16-byte aligned) carry
    tt.divisibility 16. The map sizes H_MAP, B_MAP (1 or 2) are left unspecialized.
    Without these hints (`attention_templates_sm90.compile_sm90`) the pointer tiles are
    built element by element and the counts show spills the launched kernel lacks."""
    values = {"BLOCK_M": block_m, "BLOCK_N": block_n}
    values.update({a: 1 for a in fn.arg_names if _is_one(a, spec)})
    signature = {a: "constexpr" if a in values else POINTERS.get(
        a, "*bf16" if a in TENSORS else "i32") for a in fn.arg_names}
    constexprs = {(fn.arg_names.index(a),): v for a, v in values.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in values and a not in ("H_MAP", "B_MAP", "HAS_DLSE")}
    return triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(MASK_KINDS))
    parser.add_argument("--config", type=int, nargs=4, default=None,
                        metavar=("BLOCK_M", "BLOCK_N", "WARPS", "STAGES"),
                        help="one config for every kernel (default: each kernel's first "
                        "tuning candidate, and 64x64 for the forward)")
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds.split(","):
            spec = _spec(kind, masked_problem(kind, 2, 16, 8192, 128, "bf16"))
            POINTERS.update(_input_pointers(spec))
            mods = {}
            for direction, render in (("fwd", forward.render_general_forward),
                                      ("bwd", backward.render_general_backward)):
                path = Path(folder) / f"{kind}_{direction}.py"
                path.write_text(render(spec, interpret=False))
                mods[direction] = _import_file(path.stem, path, False)
            fwd, bwd = mods["fwd"], mods["bwd"]
            print(f"# {kind}: mask={spec.mask!r} score_mod={spec.score_mod!r} "
                  f"causal={spec.causal}", flush=True)
            kernels = [("fwd", fwd._attn_fwd, fwd.TUNE_CONFIGS[:2]),
                       ("dkdv", bwd._bwd_dkdv, bwd.TUNE_DKDV[:1]),
                       ("dq", bwd._bwd_dq, bwd.TUNE_DQ[:1])]
            for name, fn, configs in kernels:
                for config in ([tuple(args.config)] if args.config else configs):
                    try:
                        stats = sass_stats(compile_specialized(fn, spec, *config[:4]))
                    except Exception as error:  # noqa: BLE001 - the report is the point
                        print(f"  {name} {config} FAILED: "
                              f"{str(error).strip().splitlines()[-1][:200]}", flush=True)
                        continue
                    loops = [(lp["n"], lp["mma"], lp["mufu"], lp["spill"], lp["atomics"])
                             for lp in stats["loops"]]
                    cut = " (listing cut at 4096 instructions: later loops missing)"
                    print(f"  {name} {tuple(config)} regs={stats['regs']} "
                          f"stack={stats['stack']} smem={stats['smem']} "
                          f"loops(n,hgmma,mufu,spill,atomics)={loops}"
                          f"{cut if stats['truncated'] else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
