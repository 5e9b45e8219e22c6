"""Where the host path's Python time goes, measured on a CPU with no GPU (dev tool).

The ops' CUDA code path runs on CPU tensors: the kernel modules are rendered for an H100
(compiled, not interpreted: `@triton.jit` functions), `backend_name` answers "triton",
and `launch.launch` finds a binary for every key whose `run` does nothing. Everything up
to the binary's launcher runs as on the GPU (checks, Spec lookups, output allocation,
tuning lookups, argument keys, autograd), so the µs here are the host path's own less
the C launcher and the CUDA allocator's share (a few µs a call on an H100 host).

    python scripts/profile_host_path.py [--calls 3000] [--profile attention-fwd]

Prints µs per call for each layer (op through the dispatcher, host function, op body,
kernel module launcher, launch alone), forward and forward+backward, for the plain
attention op and the selective scan; `--profile NAME` adds a cProfile (top 25, own time).
This patches the process it runs in: a measurement, never a test.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import ioaware  # noqa: F401  (registers the ops)
from ioaware import hardware
from ioaware.codegen import cache, launch, runtime
from ioaware.codegen.attention import host as attention_host
from ioaware.codegen.attention import op as attention_op
from ioaware.codegen.scan import host as scan_host
from ioaware.codegen.scan import op as scan_op

TAG = "profile-h100"  # a device tag no real device has: its own cache entries


class _Binary:
    """What `launch` calls for a cached binary: run(...) does nothing."""

    function = None
    packed_metadata = None

    @staticmethod
    def run(*args):
        return None


class _Binaries(dict):
    """Every key has the no-op binary (and no keyword tail: the real launch's tail is
    two to four names, well under a µs)."""

    def get(self, key, default=None):
        return (_Binary, ())


class _Driver:
    class active:
        @staticmethod
        def get_current_device():
            return 0

        @staticmethod
        def get_current_stream(device):
            return 0


def patch_to_cuda_path() -> None:
    """Make the ops take their CUDA path on CPU tensors, launches doing nothing."""
    profile = hardware.get_profile("h100")

    def kernel_module(kind, spec, device):
        module = cache.cached_module(kind, spec, TAG)
        if module is None:
            module = cache.load_kernel_module(kind, spec, TAG, profile)
            for value in vars(module).values():  # every binary key finds a no-op binary
                if isinstance(value, launch.JITFunction):
                    value.__dict__["_ioaware_binaries"] = _Binaries()
        return module

    def backend_name(device):
        return "triton"

    for module in (runtime, attention_op, scan_op):
        if hasattr(module, "kernel_module"):
            module.kernel_module = kernel_module
        module.backend_name = backend_name
    launch.driver = _Driver


def us_per_call(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def attention_layers():
    q, k, v = (torch.randn(1, 2, 128, 64, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(1, 2, 128, 64, dtype=torch.bfloat16)
    scale = 0.125
    spec = attention_op._spec(q, v, scale, True)
    fwd_module = runtime.kernel_module("attention_fwd", spec, q.device)
    out, lse = attention_op._empty_outputs(q, v)
    body = attention_host.undecorated(attention_op.flash_attention_op)
    kernel = fwd_module._attn_fwd

    def grad(fn):
        def step():
            o = fn()[0]
            return torch.autograd.grad(o, (q, k, v), dout)
        return step

    def launch_only():
        launch.launch(kernel, (1, 2), q, k, v, out, lse, *q.stride(), *k.stride(),
                      *v.stride(), *out.stride(), 2, 1, 128, 128, 128, 128,
                      BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)

    op = torch.ops.ioaware.flash_attention
    return {
        "attention-fwd": {
            "op (dispatcher)": lambda: op(q, k, v, scale, True),
            "host function": lambda: attention_host.flash_attention_host(q, k, v, scale,
                                                                        True),
            "op body": lambda: body(q, k, v, scale, True),
            "module.forward": lambda: fwd_module.forward(q, k, v, out, lse),
            "launch only": launch_only,
            "torch.empty x2": lambda: attention_op._empty_outputs(q, v),
        },
        "attention-fwd+bwd": {
            "op (dispatcher)": grad(lambda: op(q, k, v, scale, True)),
            "host function": grad(lambda: attention_host.flash_attention_host(
                q, k, v, scale, True)),
        },
    }


def scan_layers():
    bt, dc, length, n = 1, 64, 64, 16
    u, delta = torch.randn(bt, dc, length), torch.rand(bt, dc, length)
    A = -torch.rand(dc, n)
    B, C = torch.randn(bt, 1, length, n), torch.randn(bt, 1, length, n)
    D, z = torch.randn(dc), torch.randn(bt, dc, length)
    for t in (u, delta, A, B, C, D, z):
        t.requires_grad_()
    args = (u, delta, A, B, C, D, z, None, True, None)
    dy = torch.randn(bt, dc, length)
    op = torch.ops.ioaware.selective_scan
    body = scan_host.undecorated(scan_op.selective_scan_op)

    def grad(fn):
        def step():
            y = fn()[0]
            return torch.autograd.grad(y, (u, delta, A, B, C, D, z), dy)
        return step

    return {
        "scan-fwd": {
            "op (dispatcher)": lambda: op(*args),
            "host function": lambda: scan_host.selective_scan_host(*args),
            "op body": lambda: body(*args),
        },
        "scan-fwd+bwd": {
            "op (dispatcher)": grad(lambda: op(*args)),
            "host function": grad(lambda: scan_host.selective_scan_host(*args)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", default=None,
                        help="cProfile this group's host function (attention-fwd, ...)")
    args = parser.parse_args()
    patch_to_cuda_path()
    groups = {**attention_layers(), **scan_layers()}
    for group, rows in groups.items():
        print(f"{group}:")
        for name, fn in rows.items():
            print(f"  {name:<18} {us_per_call(fn, args.calls):7.1f} us")
    if args.profile:
        fn = groups[args.profile]["host function"]
        for _ in range(50):
            fn()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            fn()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
