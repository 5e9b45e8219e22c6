"""The selective scan before and after issue 17's changes, on one GPU, in one process.

    PYTHONUNBUFFERED=1 python3 scripts/gpu_scan_poly.py [--base-dir DIR | --base-rev REV]

At issue 4's shape (Bt=4, Dc=1536, L=2048, N=16, G=1, bf16, softplus, silu(z) gate), for
each variant: the forward and the backward through their generated modules at one forced
tile (the first candidate, no autotuning), checked against `scan_reference` in fp32 on
fresh random inputs (outputs poisoned first; every gradient), then timed with do_bench
(median). Variants:

  base        the kernels of the checkout before this work (rendered from DIR/forward.py
              and DIR/backward.py, or from `git show REV:codegen/scan/...`); skipped
              with a note when neither is there
  poly=0      this checkout: bf16 pairs upcast in place, every exp2 on MUFU (the default)
  poly=k      one step in k with its decays' exp2 as the FMA-pipe polynomial

Columns: µs; the bytes floor (PROBLEM's bytes over the measured copy bandwidth) and the
exp2 floor (the decays' MUFU exp2, 1 - 1/k per state element per pass, at 16 per clock
per SM) as fractions of the time; the SASS issue floor to read them against is printed
by scripts/scan_sass_sm90.py (docs/kernels.md, "Polynomial exp2"). Under 3 minutes on
an H100. Exit status 1 if any variant is wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch
from scan_perf import PROBLEM, SPEC, copy_bandwidth, inputs, log, rel, sm_clock_hz
from triton.testing import do_bench

from ioaware.bench.scan import TOLERANCE
from ioaware.codegen.cache import _import_text
from ioaware.codegen.scan import backward as scan_bwd
from ioaware.codegen.scan import forward as scan_fwd
from ioaware.codegen.scan import reference as scan_reference

FWD_POLY = (0, 16, 4, 2)
BWD_POLY = (0, 8)


def _renderer(name: str, text: str):
    """A renderer module of package ioaware.codegen.scan from source text."""
    full = f"ioaware.codegen.scan.{name}"
    spec = importlib.util.spec_from_loader(full, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "ioaware.codegen.scan"
    sys.modules[full] = module
    exec(compile(text, f"<{full}>", "exec"), module.__dict__)  # noqa: S102
    return module


def base_modules(base_dir: str | None, base_rev: str):
    """(forward, backward) kernel modules rendered by the base checkout's renderers, or
    None with the reason."""
    try:
        if base_dir:
            fwd_text = (Path(base_dir) / "forward.py").read_text()
            bwd_text = (Path(base_dir) / "backward.py").read_text()
        else:
            def show(path):
                return subprocess.run(["git", "show", f"{base_rev}:{path}"], check=True,
                                      capture_output=True, text=True).stdout
            fwd_text = show("codegen/scan/forward.py")
            bwd_text = show("codegen/scan/backward.py")
    except (OSError, subprocess.CalledProcessError) as error:
        return None, f"{type(error).__name__}: {str(error)[:120]}"
    fwd = _renderer("_base_forward", fwd_text)
    bwd = _renderer("_base_backward",
                    bwd_text.replace("from .forward import", "from ._base_forward import"))
    return (_import_text("scan_base_fwd", fwd.render_forward(SPEC), False),
            _import_text("scan_base_bwd", bwd.render_backward(SPEC), False)), ""


def this_modules():
    return (_import_text("scan_this_fwd", scan_fwd.render_forward(SPEC), False),
            _import_text("scan_this_bwd", scan_bwd.render_backward(SPEC), False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="folder with the base forward.py and backward.py")
    parser.add_argument("--base-rev", default="01c7e00", help="git revision of the base")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_scan_poly: needs a CUDA device (none here)", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    bandwidth, clock = copy_bandwidth(), sm_clock_hz()
    p = PROBLEM
    elements = p.batch * p.channels * p.seqlen * p.d_state
    exp2_us = elements / (16 * props.multi_processor_count * clock) * 1e6
    fwd_bytes_us = p.fwd_bytes() / bandwidth * 1e6
    bwd_bytes_us = (p.fwd_bwd_bytes() - p.fwd_bytes()) / bandwidth * 1e6
    log(f"{time.strftime('%Y-%m-%d %H:%M')} {props.name}; torch {torch.__version__}; copy "
        f"{bandwidth / 1e12:.2f} TB/s; floors: bytes fwd {fwd_bytes_us:.1f} us, bwd "
        f"{bwd_bytes_us:.1f} us; one MUFU exp2 per state element {exp2_us:.1f} us")

    u, delta, A, B, C, D, z, delta_bias, dy = inputs(1)
    leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
    y_ref, h_ref = scan_reference.selective_scan(*leaves, True, None)
    want = torch.autograd.grad(y_ref, leaves, dy.float())
    y_ref, h_ref = y_ref.detach(), h_ref.detach()
    dtypes = [t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)] + [torch.float32]
    y = torch.empty_like(u)
    h_last = torch.empty(p.batch, p.channels, p.d_state, device="cuda")
    fwd_config = scan_fwd.default_config(SPEC)
    bwd_config = scan_bwd.default_backward_config(SPEC)

    variants = []
    base, why = base_modules(options.base_dir, options.base_rev)
    if base is None:
        log(f"base: not rendered ({why}); docs/performance.md has its last times")
    else:
        variants.append(("base", base, 0, 0))
    this = this_modules()
    variants += [(f"poly={k}", this, k, None) for k in FWD_POLY]
    variants += [(f"poly={k}", this, None, k) for k in BWD_POLY]

    ok_all = True
    log(f"{'variant':10} {'pass':4} {'config':12} {'us':>8} {'bytes':>6} {'exp2':>6} "
        f"{'error':>8}")
    for name, (fwd, bwd), fwd_poly, bwd_poly in variants:
        for kind, poly in (("fwd", fwd_poly), ("bwd", bwd_poly)):
            if poly is None:
                continue
            module = fwd if kind == "fwd" else bwd
            module.POLY_EVERY = poly  # the base modules ignore it
            if kind == "fwd":
                def run(module=module):
                    module.forward(u, delta, A, B, C, D, z, delta_bias, None, y, h_last,
                                   config=fwd_config)
                y.fill_(float("nan"))
                h_last.fill_(float("nan"))
                run()
                torch.cuda.synchronize()
                err = max(rel(y, y_ref), rel(h_last, h_ref))
                config, floor_us = fwd_config, fwd_bytes_us
            else:
                def run(module=module):
                    return module.backward(dy, None, u, delta, A, B, C, D, z, delta_bias,
                                           None, dtypes, config=bwd_config)
                got = run()
                torch.cuda.synchronize()
                err = max(rel(got[i], want[i]) for i in range(8))
                config, floor_us = bwd_config, bwd_bytes_us
            ms = do_bench(run, warmup=10, rep=50, return_mode="median")
            ok = err <= TOLERANCE[torch.bfloat16]
            ok_all &= ok
            share = 1 - 1 / poly if poly else 1.0
            mufu_us = exp2_us * share * (2 if kind == "bwd" else 1)  # bwd: both sweeps
            log(f"{name:10} {kind:4} {config!s:12} {ms * 1e3:8.1f} "
                f"{floor_us / (ms * 1e3):6.0%} {mufu_us / (ms * 1e3):6.0%} {err:8.1e}"
                f"{'' if ok else '  WRONG'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
