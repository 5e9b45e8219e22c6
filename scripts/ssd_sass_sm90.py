"""Registers, spills and loops of the chunked SSD's backward kernels for sm_90, no GPU.

Renders the backward for the bench's Spec (bf16, P = 64, N = 128, D, dt_bias, softplus,
G = 1) at the H100's chunk, compiles each kernel of both splits (config.ssd_backward:
the sequential kernel; the chunked split's G_c kernel, its sequential pass and its
per-chunk kernel) and the recompute (the forward storing states) with triton's own
ptxas for sm_90, as a contiguous launch at the bench's shape specialises them (16-byte
aligned pointers, ints divisible by 16, unit strides as constants), and prints per
autotuning config: registers, stack (spill) bytes, shared memory, SASS instructions,
and the tensor-core instructions (HGMMA wgmma / HMMA mma.sync).

    PYTHONPATH=<triton 3.6> python scripts/ssd_sass_sm90.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from attention_templates_sm90 import sass_stats  # scripts/ is sys.path[0]
from scan_sass_sm90 import compile_kernel as compile_sm90

from ioaware import hardware
from ioaware.codegen.cache import _import_file
from ioaware.codegen.ssd import backward
from ioaware.codegen.ssd.spec import SSDSpec

SPEC = SSDSpec(dtype="bfloat16", head_dim=64, d_state=128, bc_dtype="bfloat16",
               dt_dtype="bfloat16", has_D=True, has_dt_bias=True, dt_softplus=True)
BATCH, HEADS, LENGTH, P, N = 4, 48, 2048, 64, 128
LOW = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "B_ptr", "C_ptr", "dt_ptr"}


def ints(chunk: int) -> dict[str, int]:
    """Integer arguments of a contiguous launch at the bench's shape."""
    x = {"b": LENGTH * HEADS * P, "l": HEADS * P, "h": P, "p": 1}
    bc = {"b": LENGTH * N, "l": N, "g": N, "n": 1}
    dt = {"b": LENGTH * HEADS, "l": HEADS, "h": 1}
    state = {"b": HEADS * P * N, "h": P * N, "p": N, "n": 1}
    values = {"batch": BATCH, "L": LENGTH, "H": HEADS, "P": P, "N": N,
              "heads_per_group": HEADS, "n_chunks": -(-LENGTH // chunk)}
    for prefix, strides in (("sx", x), ("sdx", x), ("sdy", x), ("sy", x), ("sdt", dt),
                            ("sb", bc), ("sc", bc), ("sg", state), ("sh", state)):
        values.update({f"{prefix}_{k}": v for k, v in strides.items()})
    return values


def compile_kernel(fn, constexprs: dict, warps: int, stages: int, chunk: int):
    """`fn` built for sm_90 as a contiguous launch at the issue's shape would be
    (scan_sass_sm90.compile_kernel with this kernel's integer arguments and dtypes)."""
    return compile_sm90(fn, constexprs, warps, ints=ints(chunk), low=LOW, stages=stages)


def main() -> int:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    profile = hardware.get_profile("h100")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ssd_sm90_bwd.py"
        path.write_text(backward.render_backward(SPEC, interpret=False, profile=profile))
        module = _import_file(path.stem, path, False)
        chunk = module.CHUNK
        common = {"CHUNK": chunk, "BLOCK_N": module.BLOCK_N, "BLOCK_P": module.BWD_BLOCK_P,
                  "HAS_D": True, "HAS_DT_BIAS": True, "DT_SOFTPLUS": True,
                  "HAS_DT_LIMIT": False, "DT_MIN": float("-inf"), "DT_MAX": float("inf"),
                  "HAS_DHL": False, "BC_ATOMIC": False, "HAS_H0": False,
                  "WRITE_Y": False, "STORE_STATES": True}
        print(f"chunk {chunk}, BLOCK_P {module.BWD_BLOCK_P}, BLOCK_N {module.BLOCK_N}")
        kernels = [("recompute (forward, states)", module._ssd_fwd, {"BLOCK_P": 64}),
                   ("sequential", module._ssd_bwd, {}),
                   ("chunked (a) G_c", module._ssd_bwd_state_grad, {}),
                   ("chunked (c) chunks", module._ssd_bwd_chunk, {}),
                   ("chunked (c) chunks, BC_ATOMIC", module._ssd_bwd_chunk,
                    {"BC_ATOMIC": True})]
        configs = [(w, s) for w, s in module.BWD_CONFIGS]
        for name, fn, extra in kernels:
            for warps, stages in configs:
                stats = sass_stats(compile_kernel(fn, {**common, **extra}, warps, stages,
                                                  chunk))
                counts = stats["all"]
                print(f"{name} warps={warps} stages={stages}: {stats['regs']} registers, "
                      f"{stats['stack']} B stack, {stats['smem']} B shared, "
                      f"{counts['n']} SASS, {counts['mma']} MMA, {counts['spill']} "
                      f"spill ops, {counts['atomics']} atomics"
                      f"{' (SASS listing cut at 4096)' if stats['truncated'] else ''}",
                      flush=True)
        stats = sass_stats(compile_kernel(
            module._ssd_bwd_state_pass, {"BLOCK": module.PASS_BLOCK, "HAS_DHL": True}, 4, 1,
            chunk))
        print(f"chunked (b) pass warps=4: {stats['regs']} registers, {stats['stack']} B "
              f"stack, loops {[lp['n'] for lp in stats['loops']]} SASS per iteration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
