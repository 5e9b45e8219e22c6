"""Where the host path's Python time goes, measured on a CPU with no GPU (dev tool).

The ops' CUDA code path runs on CPU tensors: the kernel modules are rendered for an H100
(compiled, not interpreted: `@triton.jit` functions), `backend_name` answers "triton",
and `launch.launch` finds a binary for every key whose `run` does nothing. Everything up
to the binary's launcher runs as on the GPU (checks, Spec lookups, output allocation,
tuning lookups, argument keys, autograd), so the µs here are the host path's own less
the C launcher and the CUDA allocator's share (a few µs a call on an H100 host).

    python scripts/profile_host_path.py [--calls 500] [--rounds 5]
        [--profile "attention-fwd+bwd/host function" [--no-plans]]

Prints µs per call of each layer, with launch plans (codegen/plan.py) off and on, the
two interleaved and the least of `rounds` rounds kept (the machine may be shared): the
op through the dispatcher (grad on, and grad off), the kernel ops as Inductor's compiled
forward and backward call them (grad off; codegen/library.py: IOAWARE_OP_ROUTE=custom_op
registers them as the custom ops of before, to compare),
the host function, the op body, the kernel module's launcher, a launch alone; the
backward op's body alone; forward+backward through torch.autograd.grad, beside the
autograd floor (an identity autograd.Function: what autograd.grad itself costs). For
the plain causal attention, the sliding window (a general Spec), the selective scan, the
decode op and the SSD decode step.
`--profile GROUP/ROW` prints a cProfile of that row instead (top 25, own time).
This patches the process it runs in: a measurement, never a test.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

import ioaware  # noqa: F401  (registers the ops)
from ioaware.codegen import launch, library, plan, runtime
from ioaware.codegen.attention import host as attention_host
from ioaware.codegen.attention import op as attention_op
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode import op as decode_op
from ioaware.codegen.scan import host as scan_host
from ioaware.codegen.scan import op as scan_op
from ioaware.codegen.ssd import step_op as ssd_step_op
from ioaware.spec import TensorInput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cuda_path

TAG = "profile-h100"  # a device tag no real device has: its own cache entries


def _run(*args):
    return None


_run.global_scratch_size = 0  # as a real launcher of a kernel without TMA descriptors


def patch_to_cuda_path() -> None:
    """Make the ops take their CUDA path on CPU tensors, launches doing nothing."""
    cuda_path.patch_to_cuda_path(setattr, TAG, _run)


def us_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def before_after(fn, calls: int, rounds: int) -> tuple[float, float]:
    """(µs per call with launch plans off, with them on): the least of `rounds`
    interleaved rounds each (the least is the host's cost; a busy machine only adds)."""
    best = {False: float("inf"), True: float("inf")}
    for on in (False, True):  # warm-up: first calls record plans, compile nothing
        plan.enabled = on
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for on in (False, True):
            plan.enabled = on
            best[on] = min(best[on], us_per_call(fn, calls))
    plan.enabled = True
    return best[False], best[True]


def grad_of(fn, inputs, dout):
    def step():
        return torch.autograd.grad(fn()[0], inputs, dout)
    return step


def no_grad(fn):
    def call():
        with torch.no_grad():
            return fn()
    return call


class Identity(torch.autograd.Function):
    """The least an autograd Function costs: the floor under every host function."""

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


def attention_layers():
    q, k, v = (torch.randn(1, 2, 128, 64, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(1, 2, 128, 64, dtype=torch.bfloat16)
    scale = 0.125
    spec = attention_op._spec(q, v, scale, True)
    fwd_module = runtime.kernel_module("attention_fwd", spec, q.device)
    bwd_module = runtime.kernel_module("attention_bwd", spec, q.device)
    out, lse = attention_op._empty_outputs(q, v)
    body = attention_host.undecorated(attention_op.flash_attention_op)
    bwd_body = attention_host.undecorated(attention_op.flash_attention_backward_op)
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    kernel = fwd_module._attn_fwd
    window = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                           scale=scale, mask="q_idx - kv_idx < 64").to_json()
    general = attention_host.undecorated(attention_op.attention_op)
    general_bwd = attention_host.undecorated(attention_op.attention_backward_op)
    g_out, g_lse = general(q, k, v, [], window)

    def launch_only():
        launch.launch(kernel, (1, 2), q, k, v, out, lse, *q.stride(), *k.stride(),
                      *v.stride(), *out.stride(), 2, 1, 128, 128, 128, 128,
                      BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)

    op = torch.ops.ioaware.flash_attention
    # what Inductor's compiled forward and backward call (codegen/library.py), grad off
    kernel_fwd = torch.ops.ioaware.flash_attention_forward.default
    kernel_bwd = torch.ops.ioaware.flash_attention_backward.default
    host_fn = attention_host.flash_attention_host
    x = torch.randn(4, requires_grad=True)
    return {
        "attention-fwd": {
            "op (dispatcher)": lambda: op(q, k, v, scale, True),
            "op, grad off": no_grad(lambda: op(q, k, v, scale, True)),
            "forward op, grad off (as Inductor calls it)": no_grad(
                lambda: kernel_fwd(q, k, v, scale, True)),
            "host function": lambda: host_fn(q, k, v, scale, True),
            "op body": lambda: body(q, k, v, scale, True),
            "module.forward": lambda: fwd_module.forward(q, k, v, out, lse),
            "launch only": launch_only,
            "torch.empty x2": lambda: attention_op._empty_outputs(q, v),
        },
        "attention-bwd": {
            "backward op, grad off (as Inductor calls it)": no_grad(
                lambda: kernel_bwd(dout, q, k, v, out, lse, scale, True, None)),
            "op body": lambda: bwd_body(dout, q, k, v, out, lse, scale, True, None),
            "module.backward": lambda: bwd_module.backward(dout, q, k, v, out, lse, None,
                                                           dq, dk, dv),
        },
        "attention-fwd+bwd": {
            "op (dispatcher)": grad_of(lambda: op(q, k, v, scale, True), (q, k, v), dout),
            "host function": grad_of(lambda: host_fn(q, k, v, scale, True), (q, k, v),
                                     dout),
            "autograd floor": grad_of(lambda: (Identity.apply(x),), (x,), x.detach()),
        },
        "window-fwd": {
            "op (dispatcher)": lambda: torch.ops.ioaware.attention(q, k, v, [], window),
            "host function": lambda: attention_host.attention_host(q, k, v, [], window),
            "op body": lambda: general(q, k, v, [], window),
        },
        "window-bwd": {
            "op body": lambda: general_bwd(dout, q, k, v, g_out, g_lse, [], window),
        },
        "window-fwd+bwd": {
            "op (dispatcher)": grad_of(lambda: torch.ops.ioaware.attention(
                q, k, v, [], window), (q, k, v), dout),
            "host function": grad_of(lambda: attention_host.attention_host(
                q, k, v, [], window), (q, k, v), dout),
        },
    }


def scan_layers():
    bt, dc, length, n = 1, 64, 64, 16
    u, delta = torch.randn(bt, dc, length), torch.rand(bt, dc, length)
    A = -torch.rand(dc, n)
    B, C = torch.randn(bt, 1, length, n), torch.randn(bt, 1, length, n)
    D, z = torch.randn(dc), torch.randn(bt, dc, length)
    inputs = (u, delta, A, B, C, D, z)
    for t in inputs:
        t.requires_grad_()
    args = (u, delta, A, B, C, D, z, None, True, None)
    dy = torch.randn(bt, dc, length)
    op = torch.ops.ioaware.selective_scan
    body = scan_host.undecorated(scan_op.selective_scan_op)
    bwd_body = scan_host.undecorated(scan_op.selective_scan_backward_op)
    return {
        "scan-fwd": {
            "op (dispatcher)": lambda: op(*args),
            "op, grad off": no_grad(lambda: op(*args)),
            "forward op, grad off (as Inductor calls it)": no_grad(
                lambda: torch.ops.ioaware.selective_scan_forward.default(*args)),
            "host function": lambda: scan_host.selective_scan_host(*args),
            "op body": lambda: body(*args),
        },
        "scan-bwd": {
            "backward op, grad off (as Inductor calls it)": no_grad(
                lambda: torch.ops.ioaware.selective_scan_backward.default(
                    dy, None, u, delta, A, B, C, D, z, None, True, None)),
            "op body": lambda: bwd_body(dy, None, u, delta, A, B, C, D, z, None, True, None),
        },
        "scan-fwd+bwd": {
            "op (dispatcher)": grad_of(lambda: op(*args), inputs, dy),
            "host function": grad_of(lambda: scan_host.selective_scan_host(*args), inputs,
                                     dy),
        },
    }


def decode_layers():
    """One decode step's attention as generate() with a StaticCache calls it (the bench's
    Llama: Hq 16, Hkv 4, d 128, a 256-slot cache, its bool mask [1, 1, 1, 256])."""
    q = torch.randn(1, 16, 1, 128, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4, 256, 128, dtype=torch.bfloat16) for _ in range(2))
    mask = torch.ones(1, 1, 1, 256, dtype=torch.bool)
    spec = AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False,
                         scale=128 ** -0.5, mask="Ne(in0[0, 0, 0, kv_idx], 0)",
                         mask_semantics="safe",
                         inputs=(TensorInput("in0", 4, "bool"),)).to_json()
    op = torch.ops.ioaware.decode_attention
    body = attention_host.undecorated(decode_op.decode_attention_op)
    # The call Inductor's decode step makes in the bench's generate() (transformers 5.25,
    # attention_mask given): the Spec reads the cache position and the padded
    # attention_mask, both computed in the step's fused kernel, not a [1, 1, 1, Nk] mask.
    step_spec = AttentionSpec(
        head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False, scale=128 ** -0.5,
        mask="Ne(in1[0, kv_idx], 0) & (kv_idx <= q_idx + in0[0])", mask_semantics="safe",
        inputs=(TensorInput("in0", 1, "int64"), TensorInput("in1", 2, "bool"))).to_json()
    position, padding = torch.tensor([128]), torch.ones(1, 256, dtype=torch.bool)
    return {
        "decode-fwd": {
            "op, grad off": no_grad(lambda: op(q, k, v, [mask], spec)),
            "forward op, grad off (as Inductor calls it)": no_grad(
                lambda: torch.ops.ioaware.decode_attention_forward.default(
                    q, k, v, [mask], spec)),
            "forward op, generate()'s step arguments": no_grad(
                lambda: torch.ops.ioaware.decode_attention_forward.default(
                    q, k, v, [position, padding], step_spec, num_splits=0)),
            "op body": lambda: body(q, k, v, [mask], spec),
        },
    }


def ssd_step_layers():
    """One Mamba-2 decode step per layer (gpu_ssd.py's step table: B 4, H 48, P 64,
    N 128, G 8), its state written in place: what a hybrid model's decode calls per
    layer and token."""
    state = torch.zeros(4, 48, 64, 128, dtype=torch.bfloat16)
    x, dt = torch.randn(4, 48, 64, dtype=torch.bfloat16), torch.rand(4, 48, dtype=torch.bfloat16)
    A, D, dt_bias = -torch.rand(48), torch.randn(48), torch.randn(48)
    B, C = (torch.randn(4, 8, 128, dtype=torch.bfloat16) for _ in range(2))
    args = (state, x, dt, A, B, C, D, dt_bias, True, 0.0, float("inf"))
    op = torch.ops.ioaware.ssd_step.default
    body = attention_host.undecorated(ssd_step_op.ssd_step_op)
    return {
        "ssd-step": {
            "op, grad off (as Inductor calls it)": no_grad(lambda: op(*args)),
            "op body": lambda: body(*args),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds per row (the least is kept)")
    parser.add_argument("--profile", default=None,
                        help="cProfile one row, GROUP/ROW (attention-fwd+bwd/host function)")
    parser.add_argument("--no-plans", action="store_true",
                        help="with --profile: launch plans off (the 'before' path)")
    parser.add_argument("--only", default=None, help="the groups whose name starts so")
    args = parser.parse_args()
    patch_to_cuda_path()
    groups = {**decode_layers(), **attention_layers(), **scan_layers(), **ssd_step_layers()}
    if args.only:
        groups = {k: v for k, v in groups.items() if k.startswith(args.only)}
    if args.profile:
        group, _, row = args.profile.partition("/")
        fn = groups[group][row or "host function"]
        plan.enabled = not args.no_plans
        for _ in range(50):
            fn()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            fn()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(f"µs per call, least of {args.rounds} interleaved rounds of {args.calls} calls; "
          f"ops registered by the {library.ROUTE} route (IOAWARE_OP_ROUTE)")
    print(f"  {'call':<52} {'plans off':>9} {'plans on':>9}")
    for group, rows in groups.items():
        for name, fn in rows.items():
            off, on = before_after(fn, args.calls, args.rounds)
            print(f"  {group + ': ' + name:<52} {off:9.1f} {on:9.1f}", flush=True)


if __name__ == "__main__":
    main()
