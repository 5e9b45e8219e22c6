"""Tile sweep of the general (masked / modified) attention kernels at the bench shape.

    python scripts/attn_sweep.py [--kinds sliding_window,document,alibi] [--no-bwd]
                                 [--no-flex] [--no-op] [--budget-s 220]
                                 [--fwd 'BM,BN,W,S;...'] [--dkdv ...] [--dq ...]
    python scripts/attn_sweep.py --host      (host time per call only, `host_times`)
    python scripts/attn_sweep.py --host --profile   (and where it goes: cProfile, top 25)
    python scripts/attn_sweep.py --host --layers    (per layer under the call; syncs)

Needs a CUDA GPU. For each mask kind of `ioaware bench attention --mask KIND` (B=2,
H=16, N=8192, d=128, bf16, causal), the rendered forward and backward modules are
launched under explicit configs (BLOCK_M, BLOCK_N, num_warps, num_stages), bypassing
the autotuner, each checked once against SDPA's math backend in fp32 (relative norm
error, ioaware.bench.attention.TOLERANCE), then timed with triton.testing.do_bench (median). Printed:
config -> us, TFLOP/s over the visible (q, k) pairs (FlexAttention's convention:
4·B·H·d·visible forward, 2.5x that backward), next to ioaware's op as shipped (its own
tiles and autotuning, host path included) and torch.compile(flex_attention) with a
block mask (ioaware.bench.masks._flex). A config that does not compile or launch (out of
shared memory, registers) prints "n/a" and the sweep goes on. Kind i of n may run
until start + budget·(i+1)/n; configs past that print "skipped" (the op and Flex rows
always run). Default configs: each kernel's tuning candidates as rendered for this
GPU, plus the *_EXTRA shapes below. Triton's disk cache makes a second run much faster.

The backward is swept one kernel at a time: each dK/dV config is checked with the whole
backward (dQ at its default) and then its kernel is timed alone; likewise each dQ
config. Kernel rows count the FLOPs that kernel executes (dK/dV: S, dP, dV, dK; dQ: S,
dP, dQ); the whole-backward rows count FlexAttention's 2.5x the forward.
"""

from __future__ import annotations

import argparse
import time

import torch

Config = tuple[int, int, int, int]

# Swept: each kernel's autotuning candidates as rendered for this device (default
# first, then ioaware.tiles' candidates from the SRAM budget), plus these shapes FA2 /
# FlexAttention use and narrower key tiles (a 512 window has few key blocks per query
# block: fewer partial tiles may pay). The tuning candidates compile once for both the
# sweep and the op's own tuning (same kernels, same constexprs).
FWD_EXTRA: list[Config] = [(128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3)]
DKDV_EXTRA: list[Config] = [(64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2)]
DQ_EXTRA: list[Config] = [(128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)]


def _parse_configs(text: str) -> list[Config]:
    """'128,64,8,3;64,64,4,3' -> [(128, 64, 8, 3), (64, 64, 4, 3)]."""
    configs = []
    for part in text.split(";"):
        values = tuple(int(x) for x in part.split(","))
        if len(values) != 4:
            raise argparse.ArgumentTypeError(
                f"config {part!r} must be BLOCK_M,BLOCK_N,num_warps,num_stages")
        configs.append(values)
    return configs


def _configs(given: list[Config] | None, module, tuned: str, extra: list[Config]
             ) -> list[Config]:
    """--fwd / --dkdv / --dq if given, else the module's tuning candidates and `extra`."""
    if given is not None:
        return given
    configs = list(getattr(module, tuned, []))
    return configs + [c for c in extra if c not in configs]


def _short(error: BaseException) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line[:90]}"


def _bench_us(fn, warmup_ms: float, rep_ms: float) -> float:
    from triton.testing import do_bench

    return 1e3 * do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def _rel_err(got, want) -> float:
    return max(((g.float() - w).norm() / w.norm().clamp_min(1e-30)).item()
               for g, w in zip(got, want))


class Sweep:
    """One mask kind: inputs, the fp32 reference, the rendered modules, the printing."""

    def __init__(self, kind: str, args: argparse.Namespace, deadline: float) -> None:
        from ioaware.bench.attention import TOLERANCE, AttentionProblem
        from ioaware.bench.common import DTYPES
        from ioaware.bench.masks import _materialised, _spec, mask_extra, visible_fraction

        self.kind, self.args, self.deadline = kind, args, deadline
        dtype = DTYPES[args.dtype]
        self.problem = problem = AttentionProblem(args.batch, args.heads, args.seqlen,
                                                  args.head_dim, dtype, causal=True)
        self.tolerance = TOLERANCE[dtype]
        self.extra = mask_extra(kind, args.batch, args.heads, args.seqlen, "cuda")
        self.inputs = [] if self.extra is None else [self.extra]
        self.spec = _spec(kind, problem)
        density = visible_fraction(kind, problem, self.extra)
        self.fwd_flops = (4.0 * args.batch * args.heads * args.head_dim
                          * args.seqlen ** 2 * density)
        self.bwd_flops = 2.5 * self.fwd_flops
        print(f"\n== {kind}: B={args.batch} H={args.heads} N={args.seqlen} "
              f"d={args.head_dim} {args.dtype} causal, {100 * density:.2f}% of pairs "
              f"visible, spec {self.spec.mask or self.spec.score_mod!r}", flush=True)

        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (args.batch, args.heads, args.seqlen, args.head_dim)
        self.q, self.k, self.v, self.dout = (
            torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for _ in range(4))

        # The reference once: SDPA's math backend in fp32 with the mask materialised.
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        mask = _materialised(kind, problem, self.extra, torch.float32)
        q32, k32, v32 = (t.float().requires_grad_() for t in (self.q, self.k, self.v))
        with sdpa_kernel(SDPBackend.MATH):
            out32 = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
        out32.backward(self.dout.float())
        self.want = (out32.detach(), q32.grad, k32.grad, v32.grad)
        del mask, out32, q32, k32, v32
        torch.cuda.empty_cache()

        self.out = torch.empty(shape[:3] + (args.head_dim,), device="cuda", dtype=dtype)
        self.lse = torch.empty(shape[:3], device="cuda", dtype=torch.float32)
        self.dq, self.dk, self.dv = (torch.empty_like(t) for t in (self.q, self.k, self.v))

    # ---- the rendered modules, launched directly --------------------------------------

    def modules(self):
        from ioaware.codegen.cache import device_tag, load_kernel_module

        tag = device_tag(self.q.device)
        return (load_kernel_module("attention_fwd", self.spec, tag),
                load_kernel_module("attention_bwd", self.spec, tag))

    def forward(self, config: Config | None) -> None:
        fwd, _ = self.modules()
        fwd.forward(self.q, self.k, self.v, self.out, self.lse, self.inputs, None,
                    config=config)

    def backward(self, dkdv: Config | None, dq: Config | None) -> None:
        _, bwd = self.modules()
        bwd.backward(self.dout, self.q, self.k, self.v, self.out, self.lse, None, self.dq,
                     self.dk, self.dv, self.inputs, [], None, dkdv_config=dkdv,
                     dq_config=dq)

    # ---- rows ---------------------------------------------------------------------------

    def row(self, label: str, run, flops: float, check, always: bool = False,
            timed=None) -> float | None:
        """Run once, check, time `timed` (default: run); print one line. The time in us,
        or None."""
        if not always and time.monotonic() > self.deadline:
            print(f"  {label:<26} skipped (--budget-s spent)", flush=True)
            return None
        try:
            run()
            torch.cuda.synchronize()
            err = check()
            us = _bench_us(timed or run, self.args.warmup_ms, self.args.rep_ms)
        except Exception as error:  # noqa: BLE001 - a config that cannot run is n/a
            print(f"  {label:<26} n/a  ({_short(error)})", flush=True)
            torch.cuda.empty_cache()
            return None
        verdict = "ok" if err <= self.tolerance else "WRONG"
        print(f"  {label:<26} {us:9.1f} us {flops / (us * 1e-6) / 1e12:7.1f} TFLOP/s  "
              f"err {err:.1e} {verdict}", flush=True)
        return us if verdict == "ok" else None

    def check_forward(self) -> float:
        return _rel_err((self.out,), self.want[:1])

    def check_backward(self) -> float:
        return _rel_err((self.dq, self.dk, self.dv), self.want[1:])

    def sweep(self) -> None:
        args = self.args
        fwd_mod, bwd_mod = self.modules()
        print(f"  shipped defaults: fwd {fwd_mod.DEFAULT_CONFIG}, dkdv "
              f"{bwd_mod.DEFAULT_DKDV}, dq {bwd_mod.DEFAULT_DQ}")
        for name in ("TUNE_CONFIGS", "TUNE_DKDV", "TUNE_DQ"):
            for module in (fwd_mod, bwd_mod):
                if hasattr(module, name):
                    print(f"  {name}: {getattr(module, name)}")
        if not args.no_flex:
            self.flex()

        print("  forward  (BLOCK_M, BLOCK_N, warps, stages)")
        fwd_best = self.best([(c, self.row(f"fwd {c}", lambda c=c: self.forward(c),
                                           self.fwd_flops, self.check_forward))
                              for c in _configs(args.fwd, fwd_mod, "TUNE_CONFIGS",
                                                FWD_EXTRA)])
        if args.no_bwd:
            self.after()
            return
        self.forward(fwd_mod.DEFAULT_CONFIG)  # out and lse the backward reads
        dkdv0, dq0 = bwd_mod.DEFAULT_DKDV, bwd_mod.DEFAULT_DQ
        # Each kernel timed alone (its launcher: block map lookup or build, launch), after
        # a check of the whole backward run with it. delta as the preprocess makes it.
        delta = (self.out.float() * self.dout.float()).sum(-1).reshape(-1, args.seqlen)
        empty_heads = (torch.zeros(args.batch * args.heads, dtype=torch.int32, device="cuda")
                       if getattr(bwd_mod, "SPREAD_NAN", False) else delta)
        q, k, v, dout, lse = self.q, self.k, self.v, self.dout, self.lse
        print(f"  dK/dV kernel alone (executed FLOPs: 8·d per visible pair); dQ at {dq0}")
        dkdv_best = self.best([(c, self.row(
            f"dkdv {c}", lambda c=c: self.backward(c, dq0), 2 * self.fwd_flops,
            self.check_backward, timed=lambda c=c: bwd_mod._launch_dkdv(
                c, dout, q, k, v, lse, delta, empty_heads, self.dk, self.dv, self.inputs,
                None))) for c in _configs(args.dkdv, bwd_mod, "TUNE_DKDV", DKDV_EXTRA)])
        print(f"  dQ kernel alone (executed FLOPs: 6·d per visible pair); dK/dV at {dkdv0}")
        dq_best = self.best([(c, self.row(
            f"dq {c}", lambda c=c: self.backward(dkdv0, c), 1.5 * self.fwd_flops,
            self.check_backward, timed=lambda c=c: bwd_mod._launch_dq(
                c, dout, q, k, v, lse, delta, self.dq, self.inputs, [], None)))
            for c in _configs(args.dq, bwd_mod, "TUNE_DQ", DQ_EXTRA)])
        self.row("whole bwd at the defaults", lambda: self.backward(dkdv0, dq0),
                 self.bwd_flops, self.check_backward)
        if fwd_best and dkdv_best and dq_best:
            print(f"  best: fwd {fwd_best}, dkdv {dkdv_best}, dq {dq_best}")
            self.row("fwd+bwd at the best", lambda: (self.forward(fwd_best),
                                                     self.backward(dkdv_best, dq_best)),
                     self.fwd_flops + self.bwd_flops, self.check_backward)
        self.after()

    def after(self) -> None:
        """The op as shipped, after the sweep: its tuning finds the kernels compiled."""
        if self.args.no_op:
            return
        self.shipped()
        for module in self.modules():  # what the op's tuner chose, per size class
            for key, config in getattr(module, "_CHOSEN", {}).items():
                print(f"  op tuned {key[0]} for (Nq, Nk) ~ {key[2:]}: {config}")

    @staticmethod
    def best(timed: list[tuple[Config, float | None]]) -> Config | None:
        ok = [(us, c) for c, us in timed if us is not None]
        return min(ok)[1] if ok else None

    def shipped(self) -> None:
        """ioaware's op as a user calls it (host path, autotuning, block maps included)."""
        from ioaware.codegen.attention import op as ops

        q, k, v = (t.detach().clone().requires_grad_() for t in (self.q, self.k, self.v))
        got: dict[str, torch.Tensor] = {}

        def fwd() -> None:
            with torch.no_grad():
                got["out"] = ops.attention(q, k, v, self.spec, self.inputs)

        def fwd_bwd() -> None:
            for t in (q, k, v):
                t.grad = None
            ops.attention(q, k, v, self.spec, self.inputs).backward(self.dout)

        def check_fwd_bwd() -> float:
            return _rel_err((q.grad, k.grad, v.grad), self.want[1:])

        self.row("op fwd (as shipped)", fwd, self.fwd_flops,
                 lambda: _rel_err((got["out"],), self.want[:1]), always=True)
        self.row("op fwd+bwd (as shipped)", fwd_bwd, self.fwd_flops + self.bwd_flops,
                 check_fwd_bwd, always=True)

    def flex(self) -> None:
        from ioaware.bench.masks import _flex

        try:
            attention = _flex(self.kind, self.problem, self.extra)
        except Exception as error:  # noqa: BLE001 - no flex_attention in this torch
            print(f"  flex                       n/a  ({_short(error)})")
            return
        q, k, v = (t.detach().clone().requires_grad_() for t in (self.q, self.k, self.v))
        got: dict[str, torch.Tensor] = {}

        def fwd() -> None:
            with torch.no_grad():
                got["out"] = attention(q, k, v)

        def fwd_bwd() -> None:
            for t in (q, k, v):
                t.grad = None
            attention(q, k, v).backward(self.dout)

        self.row("flex fwd", fwd, self.fwd_flops,
                 lambda: _rel_err((got["out"],), self.want[:1]), always=True)
        self.row("flex fwd+bwd", fwd_bwd, self.fwd_flops + self.bwd_flops,
                 lambda: _rel_err((q.grad, k.grad, v.grad), self.want[1:]), always=True)


# The host-time probes run at a tiny size: each launch's GPU work is a few microseconds.
TINY = {"batch": 1, "heads": 2, "n": 256}


def _per_call_us(fn, calls: int) -> float:
    """Wall time per call of fn after 20 warm-up calls, GPU work included (synced)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def _mask_case(kind: str, batch: int, heads: int, n: int):
    """(spec, inputs) of `ioaware bench attention --mask kind` at these sizes (bf16,
    d=128, causal)."""
    from ioaware.bench.attention import AttentionProblem
    from ioaware.bench.masks import _spec, mask_extra

    problem = AttentionProblem(batch, heads, n, 128, torch.bfloat16, causal=True)
    extra = mask_extra(kind, batch, heads, n, "cuda")
    return _spec(kind, problem), [] if extra is None else [extra]


def host_times(kinds: list[str], calls: int = 300, profile: bool = False) -> None:
    """Per-call wall time at a tiny size (B=1, H=2, N=256, d=128): each launch's GPU work
    is a few microseconds, far less than issuing it, so the time per call is the host
    path (Python, torch's op dispatch and autograd, Triton's launches), the part that
    shows when a call's host time exceeds its kernels' time."""
    from ioaware.codegen.attention import op as ops

    q, k, v, dout = (torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def sdpa(q_, k_, v_):
        return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, is_causal=True)

    print("\nhost time per call (us), B=1 H=2 N=256 d=128 bf16 causal:")
    print(f"  {'':<16} {'fwd no_grad':>12} {'fwd (grad)':>12} {'fwd+bwd':>12}")
    rows = [("sdpa (causal)", sdpa)]
    for kind in kinds:
        spec, inputs = _mask_case(kind, **TINY)
        rows.append((kind, lambda q_, k_, v_, spec=spec, inputs=inputs:
                     ops.attention(q_, k_, v_, spec, inputs)))
    for name, fn in rows:
        def no_grad(fn=fn) -> None:
            with torch.no_grad():
                fn(q, k, v)

        def fwd_bwd(fn=fn) -> None:
            fn(qg, kg, vg).backward(dout)

        times = [_per_call_us(f, calls)
                 for f in (no_grad, lambda fn=fn: fn(qg, kg, vg), fwd_bwd)]
        print(f"  {name:<16} " + " ".join(f"{t:12.1f}" for t in times), flush=True)
        if profile and name != "sdpa (causal)":
            _profile(name, fwd_bwd, calls)


def host_layers(kinds: list[str], calls: int = 300) -> None:
    """Host time per call of each layer under the user's call, at the tiny size of
    `host_times`: which layer holds the time (torch's op dispatch, our op body, the
    launcher with its tuner lookup and block map, Triton's launch)."""
    from ioaware.codegen import cache, launch, runtime
    from ioaware.codegen.attention import op as ops

    q, k, v, dout = (torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    device = runtime.kernel_device(q.device)

    def layers(kind: str) -> list[tuple[str, object]]:
        spec, inputs = _mask_case(kind, **TINY)
        text = ops._spec_json(spec)
        fwd = cache.load_kernel_module("attention_fwd", spec, device)
        bwd = cache.load_kernel_module("attention_bwd", spec, device)
        out, lse = ops._empty_outputs(q, v)
        body = ops.attention_op._init_fn  # the Python function torch's custom op wraps
        fwd.forward(q, k, v, out, lse, inputs)
        config = next(iter(getattr(fwd, "_CHOSEN", {}).values()), fwd.DEFAULT_CONFIG)
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        return [
            ("ops.attention (user entry)", lambda: ops.attention(q, k, v, spec, inputs)),
            ("torch.ops.ioaware.attention", lambda: torch.ops.ioaware.attention(
                q, k, v, inputs, text, None)),
            ("op body (no dispatch)", lambda: body(q, k, v, inputs, text, None)),
            ("module.forward (tuner+map+launch)", lambda: fwd.forward(
                q, k, v, out, lse, inputs)),
            ("_launch(config) (map+launch)", lambda: fwd._launch(
                config, q, k, v, out, lse, inputs, None)),
            ("torch.ops.ioaware.attention_backward", lambda: torch.ops.ioaware
             .attention_backward(dout, q, k, v, out, lse, inputs, text, None, None)),
            ("module.backward (3 kernels)", lambda: bwd.backward(
                dout, q, k, v, out, lse, None, dq, dk, dv, inputs, [], None)),
        ]

    print("\nhost time per call by layer (us), B=1 H=2 N=256 d=128 bf16 causal:")
    for kind in kinds:
        print(f"  {kind}:{'Triton launch':>50} {'cached binary':>14}")
        for name, fn in layers(kind):
            times = []
            for fast in (False, True):  # kernel[grid](...), then codegen/launch's path
                launch._ENABLED = fast
                with torch.no_grad():
                    times.append(_per_call_us(fn, calls))
            print(f"    {name:<40} {times[0]:14.1f} {times[1]:14.1f}", flush=True)
        launch._ENABLED = True


def sync_check(kind: str, calls: int = 5) -> None:
    """torch.profiler over fwd+bwd calls at the bench size (B=2, H=16, N=8192): the
    host-device syncs and copies inside a call (each one serialises host and GPU time),
    and the top host-side ops."""
    from torch.profiler import ProfilerActivity, profile

    from ioaware.codegen.attention import op as ops

    b, h, n = 2, 16, 8192
    q, k, v = (torch.randn(b, h, n, 128, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    spec, inputs = _mask_case(kind, b, h, n)

    def step() -> None:
        ops.attention(q, k, v, spec, inputs).backward(dout)

    wall = _per_call_us(step, calls) / 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    rows = prof.key_averages()
    gpu_ms = sum(r.self_device_time_total for r in rows) / calls / 1e3
    syncs = {r.key: r.count // calls for r in rows
             if any(s in r.key for s in ("Synchronize", "Memcpy", "local_scalar", "item"))}
    print(f"\n{kind} fwd+bwd at B={b} H={h} N={n}: wall {wall:.3f} ms per call, GPU "
          f"kernels {gpu_ms:.3f} ms; per call syncs/copies: {syncs or 'none'}")
    print(rows.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


def _profile(name: str, fn, calls: int) -> None:
    """cProfile of `calls` calls of fn: the functions that hold the host time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    print(f"\n  cProfile of {calls} fwd+bwd calls, {name}, by own time:")
    print("\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


def main(argv: list[str] | None = None) -> int:
    from ioaware.bench.masks import MASK_KINDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # padding and bias (a learned table: gradients the sweep's launchers do not pass)
    # are in `ioaware bench attention --mask`, not swept here by default
    parser.add_argument("--kinds", default=",".join(MASK_KINDS[:3]),
                        help=f"comma-separated, of {MASK_KINDS}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--fwd", type=_parse_configs, default=None,
                        help="forward configs 'BM,BN,W,S;...' (default: the tuning "
                             "candidates and FWD_EXTRA)")
    parser.add_argument("--dkdv", type=_parse_configs, default=None)
    parser.add_argument("--dq", type=_parse_configs, default=None)
    parser.add_argument("--no-op", action="store_true",
                        help="skip the op as shipped (its first call autotunes)")
    parser.add_argument("--no-bwd", action="store_true", help="forward configs only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    parser.add_argument("--budget-s", type=float, default=220.0,
                        help="wall seconds after which remaining configs are skipped")
    parser.add_argument("--host", action="store_true",
                        help="only the host time per call at a tiny size (no sweep)")
    parser.add_argument("--profile", action="store_true",
                        help="with --host: cProfile the fwd+bwd calls (top 25 by own time)")
    parser.add_argument("--layers", action="store_true",
                        help="with --host: host time of each layer under the call, and "
                             "torch.profiler's syncs at the bench size")
    parser.add_argument("--warmup-ms", type=float, default=10.0)
    parser.add_argument("--rep-ms", type=float, default=40.0)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in MASK_KINDS:
            parser.error(f"--kinds: {kind!r} is not one of {MASK_KINDS}")
    if not torch.cuda.is_available():
        print("attn_sweep needs a CUDA GPU")
        return 1
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name()}")
    if args.host:
        if args.layers:
            host_layers(kinds)
            for kind in kinds:
                sync_check(kind)
        else:
            host_times(kinds, profile=args.profile)
        return 0
    start = time.monotonic()
    for i, kind in enumerate(kinds):
        Sweep(kind, args, start + args.budget_s * (i + 1) / len(kinds)).sweep()
        torch.cuda.empty_cache()
    print(f"\nwall {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
