"""The `ioaware` command: report what the compiler does to a model, demo it, benchmark it.

    ioaware report TARGET [--device h100|h200|a100|cpu|SAVED] [--dtype bf16|fp16|fp32]
                          [--batch B] [--seq-len N] [--json [PATH]] [--html PATH]
                          [--plot PATH] [--formulas] [--measure]
    ioaware calibrate [--name NAME]
    ioaware demo
    ioaware bench attention [--dtype bf16] [--batch 4 --heads 16 --seqlen 4096 --head-dim 128]
                            [--causal | --no-causal] [--vs sdpa,eager,compile,flex] [--skip-slow]
    ioaware bench decode [--batch 8 --heads 32 --kv-heads 8 --context 4096 32768 --page 16]
                         [--variants PREFIX ...] [--generate | --generate-only]
    ioaware bench scan [--dtype bf16] [--batch 4 --channels 1536 --seqlen 2048 --d-state 16]
                       [--groups 1] [--no-gate] [--eager-len 128] [--skip-slow]
    ioaware bench scan --ssd [--heads 64 --head-dim 64 --d-state 128 --seqlen 4096]
    ioaware bench model NAME [--train | --infer] [--batch 2 --seq-len 2048 --layers 4]
                             [--hidden H --heads N --kv-heads K --vocab V --window W]
                             [--variants eager,sdpa,compile,...] [--dtype bf16] [--json]
                             [--timeout S]
    ioaware --version

TARGET is `path/to/file.py:make` (`:make` may be left out) or the name of a bundled example
(`gpt`, `llama`, `mamba`, `hybrid`, `sdpa_gqa`). `make()` returns (model, args) or
(model, args, kwargs). The report's JSON keys are documented in docs/report.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ioaware.target import (
    DTYPES,
    EXAMPLES,
    TargetError,
    load_target,
    make_overrides,
    on_device,
    one_line,
)

DEVICES = ("h100", "h200", "a100", "cpu")
# Exit status for bad input (a TARGET that cannot be loaded, no GPU for bench).
EXIT_USAGE = 2
# `bench attention --mask` kinds: ioaware.bench.masks.MASK_KINDS, named here so that the
# parser is built without importing torch (a test holds the two equal)
MASK_KIND_NAMES = ("sliding_window", "alibi", "document", "padding", "bias")


# --- report -----------------------------------------------------------------------------------


def build_target_report(options: argparse.Namespace) -> Any:
    """Load TARGET (on the meta device where it can be), capture and price it.

    A model that cannot run on meta tensors (it reads a value with .item(), say) is
    loaded again and run on its own device, at the sizes asked for.
    """
    from ioaware.report import build_report

    overrides = make_overrides(options)
    dtype = DTYPES[options.dtype] if options.dtype else "float32"
    model, args, kwargs = load_target(options.target, overrides, device="meta")
    try:
        model, args, kwargs = on_device(model, args, kwargs)
        return build_report(model, args, kwargs, device=options.device, dtype=dtype,
                            target=options.target, formulas=options.formulas)
    except Exception as error:  # noqa: BLE001 - not meta-friendly: run it for real below
        on_meta = one_line(error)
    model, args, kwargs = load_target(options.target, overrides)
    try:
        report = build_report(model, args, kwargs, device=options.device, dtype=dtype,
                              target=options.target, formulas=options.formulas)
    except Exception as error:  # noqa: BLE001 - the user's model failed: one line, no trace
        raise TargetError(f"TARGET {options.target!r}: running the model raised "
                          f"{one_line(_user_error(error))}") from None
    print(f"ioaware report: the model does not run on the meta device ({on_meta}); "
          "ran it on its own device", file=sys.stderr)
    return report


def _user_error(error: BaseException) -> BaseException:
    """The model's own exception, where dynamo wrapped it in one of its own."""
    while type(error).__module__.startswith("torch._dynamo") and error.__cause__ is not None:
        error = error.__cause__
    return error


def _write(path: str, text: str | bytes) -> None:
    Path(path).write_bytes(text if isinstance(text, bytes) else text.encode())


def cmd_report(options: argparse.Namespace) -> int:
    from ioaware import hardware
    from ioaware.report import render_html, render_roofline, render_terminal

    try:
        hardware.get_profile(options.device)
    except ValueError as error:
        print(f"ioaware report: --device: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = build_target_report(options)
    except TargetError as error:
        print(f"ioaware report: {error}", file=sys.stderr)
        return EXIT_USAGE
    data = report.to_json()
    if options.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(render_terminal(report, formulas=options.formulas), end="")
        if options.json:
            _write(options.json, json.dumps(data, indent=2) + "\n")
    if options.html:
        _write(options.html, render_html(report))
    if options.plot:
        try:
            render_roofline(report, options.plot)
        except RuntimeError as error:  # matplotlib missing
            print(f"ioaware report: --plot: {error}", file=sys.stderr)
            return EXIT_USAGE
    if options.measure:
        from ioaware.measure import measure_report

        out = sys.stderr if options.json == "-" else sys.stdout
        print(measure_report(options, report), file=out, end="")
    return 0


# --- calibrate ---------------------------------------------------------------------------------


def cmd_calibrate(options: argparse.Namespace) -> int:
    from ioaware.calibrate import CalibrationError, calibrate

    try:
        profile, path = calibrate(options.name, progress=lambda message: print(
            f"[calibrate] {message}", file=sys.stderr, flush=True))
    except CalibrationError as error:
        print(f"ioaware calibrate: {error}", file=sys.stderr)
        return EXIT_USAGE
    from ioaware.calibrate import describe

    print(describe(profile), end="")
    print(f"saved {path}; use it with: ioaware report TARGET --device {profile.name}")
    return 0


# --- demo -------------------------------------------------------------------------------------

# fp32 on the CPU: the fused kernel sums in a different order, nothing more.
DEMO_ATOL, DEMO_RTOL = 1e-4, 1e-3


def _max_abs_diff(a: Any, b: Any) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def _loss_and_grads(model: Any, tokens: Any) -> tuple[Any, list]:
    import torch.nn.functional as F

    logits = model(tokens)
    # Next-token prediction on the same random tokens: a real loss, so backward is real.
    targets = tokens.roll(-1, dims=1)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return logits, [p.grad for p in model.parameters()]


def cmd_demo(options: argparse.Namespace) -> int:
    import torch

    start = time.perf_counter()
    model, args, _ = load_target("gpt")
    (tokens,) = args
    eager_model = copy.deepcopy(model)
    import ioaware

    compiled = ioaware.compile(model)

    eager_logits, eager_grads = _loss_and_grads(eager_model, tokens)
    from ioaware.backend import counters

    rewritten_before = counters["attention"]
    logits, grads = _loss_and_grads(compiled, tokens)
    rewritten = counters["attention"] - rewritten_before

    forward_diff = _max_abs_diff(logits, eager_logits)
    forward_ok = torch.allclose(logits, eager_logits, atol=DEMO_ATOL, rtol=DEMO_RTOL)
    backward_diff = max(_max_abs_diff(g, e) for g, e in zip(grads, eager_grads))
    backward_ok = all(
        torch.allclose(g, e, atol=DEMO_ATOL, rtol=DEMO_RTOL) for g, e in zip(grads, eager_grads)
    )
    print(f"gpt example: logits {tuple(logits.shape)}, {len(grads)} parameter gradients, "
          f"{rewritten} attention regions rewritten in the compiled model")
    print(f"forward  vs eager: max |diff| = {forward_diff:.2e}  "
          f"{'pass' if forward_ok else 'FAIL'}")
    print(f"backward vs eager: max |diff| = {backward_diff:.2e}  "
          f"{'pass' if backward_ok else 'FAIL'}")
    print()
    from ioaware.report import build_report, render_terminal

    print(render_terminal(build_report(*on_device(model, args, {}), device=options.device,
                                       target="gpt")), end="")
    print(f"demo took {time.perf_counter() - start:.1f} s")
    return 0 if forward_ok and backward_ok else 1


# --- bench ------------------------------------------------------------------------------------


def _parse_vs(text: str) -> list[str]:
    from ioaware.bench.attention import BASELINES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown)} not understood; expected a comma-separated subset of "
            f"{','.join(BASELINES)}"
        )
    return names


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_bench(rows: Sequence[Any], title: str, reference: str | None = None) -> str:
    from rich import box
    from rich.table import Table

    from ioaware.bench.attention import REFERENCE_VARIANT
    from ioaware.tables import format_bytes, render

    reference = reference or REFERENCE_VARIANT  # the row the speeds compare to

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("variant", "check", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms",
                   "fwd+bwd TFLOP/s", f"speed vs {reference}", "peak fwd / fwd+bwd"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for r in rows:
        check = "-" if r.ok is None else f"{r.rel_err:.1e} {'ok' if r.ok else 'FAIL'}"
        speed = f"{_cell(r.speedup_fwd, '.2f')} / {_cell(r.speedup_fwd_bwd, '.2f')}"
        peak = "-" if r.fwd_peak_bytes is None else (
            f"{format_bytes(r.fwd_peak_bytes)} / "
            + ("-" if r.fwd_bwd_peak_bytes is None else format_bytes(r.fwd_bwd_peak_bytes))
        )
        table.add_row(r.variant, check, _cell(r.fwd_ms, ".3f"), _cell(r.fwd_tflops, ".1f"),
                      _cell(r.fwd_bwd_ms, ".3f"), _cell(r.fwd_bwd_tflops, ".1f"), speed, peak)
    notes = [f"{r.variant}: {r.note}" for r in rows if r.note]
    return render([table, *notes], width=160)


def _bench_progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _print_json(rows: list) -> int:
    """Every bench row as a JSON object, on stdout; the exit status."""
    print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    return 0


def cmd_bench(options: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("ioaware bench: needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return EXIT_USAGE
    if options.mask != "none":
        return _cmd_bench_masked(options)
    from ioaware.bench.attention import bench_attention

    rows = bench_attention(
        options.batch, options.heads, options.seqlen, options.head_dim, options.dtype,
        options.causal, options.vs, skip_slow=options.skip_slow,
        warmup_ms=options.warmup, rep_ms=options.rep,
        progress=_bench_progress,
    )
    if options.json:
        return _print_json(rows)
    device = torch.cuda.get_device_name()
    for causal in options.causal:
        title = (
            f"attention on {device}: B={options.batch} H={options.heads} N={options.seqlen} "
            f"d={options.head_dim} {options.dtype}, {'causal' if causal else 'no mask'}"
        )
        print(render_bench([r for r in rows if r.causal == causal], title), end="")
    return 0


def _cmd_bench_masked(options: argparse.Namespace) -> int:
    """`bench attention --mask KIND|all`: ioaware vs FlexAttention vs a materialised mask;
    with `all`, every kind in turn, then the compiled row's speed-ups over Flex."""
    import torch

    from ioaware.bench.masks import (
        MASK_KINDS,
        bench_masked,
        mask_density,
        mask_extra,
        masked_problem,
    )

    kinds = MASK_KINDS if options.mask == "all" else (options.mask,)
    results = {}
    for kind in kinds:
        rows = bench_masked(
            kind, options.batch, options.heads, options.seqlen, options.head_dim,
            options.dtype, options.vs, warmup_ms=options.warmup, rep_ms=options.rep,
            skip_slow=options.skip_slow,
            progress=_bench_progress,
        )
        results[kind] = rows
        if options.json:
            continue
        problem = masked_problem(kind, options.batch, options.heads, options.seqlen,
                                 options.head_dim, options.dtype)
        extra = mask_extra(kind, options.batch, options.heads, options.seqlen, "cuda")
        density = mask_density(kind, problem, extra)
        title = (f"attention on {torch.cuda.get_device_name()}: B={options.batch} "
                 f"H={options.heads} N={options.seqlen} d={options.head_dim} "
                 f"{options.dtype}, {kind}: {100 * density.visible:.1f}% of pairs visible "
                 f"(TFLOP/s over them), {100 * density.tiles:.1f}% of 128x128 tiles "
                 f"visited, {100 * density.partial:.1f}% of those partial")
        print(render_bench(rows, title, reference="flex_attention"), end="")
    if options.json:  # {kind: [row, ...]}
        print(json.dumps({kind: [dataclasses.asdict(r) for r in rows]
                          for kind, rows in results.items()}, indent=2))
        return 0
    if len(kinds) > 1:
        print(render_masked_summary(results), end="")
    return 0


def render_masked_summary(results: dict[str, list]) -> str:
    """One line per mask kind: each ioaware row's speed over flex_attention's, forward
    and forward+backward, against the issue's 1.25x."""
    from rich import box
    from rich.table import Table

    from ioaware.tables import render

    table = Table(title="ioaware over flex_attention (target 1.25x)", box=box.SIMPLE_HEAD,
                  title_justify="left")
    variants = ("ioaware.compile(eager)", "ioaware kernel")
    table.add_column("mask")
    for variant in variants:
        table.add_column(f"{variant} fwd / fwd+bwd", justify="right")
    for kind, rows in results.items():
        by_name = {r.variant: r for r in rows}
        cells = []
        for variant in variants:
            r = by_name.get(variant)
            cells.append("-" if r is None else
                         f"{_cell(r.speedup_fwd, '.2f')} / {_cell(r.speedup_fwd_bwd, '.2f')}")
        table.add_row(kind, *cells)
    return render([table], width=160)


def cmd_bench_scan(options: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("ioaware bench: needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return EXIT_USAGE
    if options.ssd:
        return _bench_ssd(options)
    from ioaware.bench.scan import bench_scan, render_scan_bench

    options.seqlen = options.seqlen or 2048
    options.d_state = options.d_state or 16
    rows = bench_scan(
        options.batch, options.channels, options.seqlen, options.d_state, options.groups,
        options.dtype, options.gate, eager_len=options.eager_len, skip_slow=options.skip_slow,
        warmup_ms=options.warmup, rep_ms=options.rep,
        progress=_bench_progress,
    )
    if options.json:
        return _print_json(rows)
    title = (f"selective scan on {torch.cuda.get_device_name()}: B={options.batch} "
             f"D={options.channels} L={options.seqlen} N={options.d_state} G={options.groups} "
             f"{options.dtype}{', silu(z) gate' if options.gate else ''}")
    print(render_scan_bench(rows, title), end="")
    return 0


def _bench_ssd(options: argparse.Namespace) -> int:
    """`ioaware bench scan --ssd`: Mamba-2's SSD, ioaware vs transformers' torch_forward."""
    import torch

    from ioaware.bench.ssd import bench_ssd, render_ssd_bench

    seqlen, d_state = options.seqlen or 4096, options.d_state or 128
    rows, info = bench_ssd(
        options.batch, options.heads, options.head_dim, d_state, options.groups, seqlen,
        options.dtype, loop_len=options.eager_len, skip_slow=options.skip_slow,
        compile_timeout_s=options.compile_timeout, warmup_ms=options.warmup,
        rep_ms=options.rep, progress=_bench_progress)
    if options.json:
        return _print_json(rows)
    title = (f"SSD (Mamba-2) on {torch.cuda.get_device_name()}: B={options.batch} "
             f"H={options.heads} P={options.head_dim} N={d_state} G={options.groups} "
             f"L={seqlen} {options.dtype}")
    print(render_ssd_bench(rows, info, title), end="")
    return 0


def cmd_bench_model(options: argparse.Namespace) -> int:
    """`bench model NAME`: a whole transformers model, a step per variant."""
    from ioaware.bench.model import SizeError, Sizes, bench_model, render_model_bench

    variants = [v.strip() for v in options.variants.split(",") if v.strip()]
    sizes = Sizes(batch=options.batch, seq_len=options.seq_len, layers=options.layers,
                  hidden=options.hidden, heads=options.heads, kv_heads=options.kv_heads,
                  vocab=options.vocab, window=options.window)
    try:
        rows = bench_model(options.name, sizes, variants, train=options.train,
                           dtype=options.dtype, steps=options.steps, warmup=options.warmup,
                           timeout=options.timeout, progress=_bench_progress)
    except (SizeError, ValueError) as e:
        print(f"ioaware bench model: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    if options.json:
        return _print_json(rows)
    title = (f"{options.name}, {'training' if options.train else 'inference'} step, "
             f"{options.dtype}, B={options.batch}, L={options.seq_len}, "
             f"{options.layers} layers")
    print(render_model_bench(rows, title), end="")
    return 1 if any(r.note for r in rows) else 0


def cmd_bench_decode(options: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("ioaware bench: needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return EXIT_USAGE
    from ioaware.bench.decode import bench_decode, render_decode_bench

    if not options.generate_only:
        rows = bench_decode(options.batch, options.heads, options.kv_heads, options.context,
                            options.head_dim, options.dtype, options.page, options.warmup,
                            options.rep, progress=_bench_progress, only=options.variants)
        if options.json:
            return _print_json(rows)
        title = (f"decode attention on {torch.cuda.get_device_name()}: B={options.batch} "
                 f"Hq={options.heads} Hkv={options.kv_heads} d={options.head_dim} "
                 f"{options.dtype}, one query row")
        print(render_decode_bench(rows, title), end="")
    if options.generate or options.generate_only:
        from ioaware.bench.decode import bench_generate, render_generate_bench

        rows = bench_generate(budget_s=options.generate_budget, progress=_bench_progress)
        if options.json:
            return _print_json(rows)
        print(render_generate_bench(rows, "generate(), 4-layer Llama-style (hidden 2048, "
                                    "GQA 16/4), bf16, StaticCache, 128 + 128 tokens, on "
                                    f"{torch.cuda.get_device_name()}"), end="")
    return 0


# --- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _version() -> str:
    """`ioaware X (torch Y, triton Z)`: what a bug report needs first."""
    import importlib.metadata

    from ioaware.version import __version__

    def of(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return f"ioaware {__version__} (torch {of('torch')}, triton {of('triton')})"


def build_parser() -> argparse.ArgumentParser:
    from ioaware.config import config

    parser = argparse.ArgumentParser(
        prog="ioaware", description="IO-aware graph compiler for PyTorch."
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    report = commands.add_parser(
        "report", help="what ioaware rewrites in a model, and the HBM bytes it saves",
        description="Price TARGET on a device profile: every attention and scan region "
        "(rewritten, or left and why) and the whole graph, before and after, in HBM bytes "
        "read and written, FLOPs, arithmetic intensity, bound and modelled time. The model "
        "is built on the meta device, so large sizes cost nothing. JSON keys: docs/report.md.",
    )
    report.add_argument(
        "target", metavar="TARGET",
        help="path/to/file.py:make, or a bundled example: " + ", ".join(sorted(EXAMPLES)),
    )
    report.add_argument("--device", default=config.default_device, metavar="NAME",
                        help=f"device profile to price against: {', '.join(DEVICES)} or one "
                        "saved by `ioaware calibrate` (default: %(default)s)")
    report.add_argument("--dtype", choices=sorted(DTYPES),
                        help="build the model in this dtype (make(dtype=...))")
    report.add_argument("--batch", type=_positive_int, help="make(batch=...)")
    report.add_argument("--seq-len", type=_positive_int,
                        help="make(seq_len=...): e.g. 32768 for \"what at 32k?\"")
    report.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="JSON (docs/report.md) to PATH, or alone: to stdout, "
                        "instead of the tables")
    report.add_argument("--html", metavar="PATH", help="write a self-contained HTML page")
    report.add_argument("--plot", metavar="PATH",
                        help="write a roofline PNG, each region before and after "
                        "(needs matplotlib: pip install 'ioaware[plot]')")
    report.add_argument("--formulas", action="store_true",
                        help="also derive the formulas in the batch and sequence sizes "
                        "(B, N): a second, symbolic capture; in the tables, JSON and HTML")
    report.add_argument("--measure", action="store_true",
                        help="on a CUDA GPU: time the kernels, read DRAM bytes with Nsight "
                        "Compute where allowed, and print measured beside modelled")
    report.set_defaults(run=cmd_report)

    calibrate = commands.add_parser(
        "calibrate", help="measure this GPU's matmul rate and copy bandwidth, save a profile",
        description="Measure the CUDA GPU present (dense matmul rate per dtype, device copy "
        "bandwidth; SM count, shared memory and L2 from its properties) and save a device "
        "profile that `ioaware report --device NAME` can use. Needs a CUDA GPU.",
    )
    calibrate.add_argument("--name", default=None,
                           help="profile name (default: the GPU's name + '-calibrated')")
    calibrate.set_defaults(run=cmd_calibrate)

    demo = commands.add_parser(
        "demo", help="compile the bundled GPT, check it against eager, show the report",
        description="Compile the bundled GPT example, run forward and backward once, "
        "check both against eager, then print the explanation and the IO report.",
    )
    demo.add_argument("--device", default=config.default_device, metavar="NAME",
                      help="device profile for the report (default: %(default)s)")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser("bench", help="benchmarks on this GPU",
                                description="Benchmarks on this GPU.")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    attention = benches.add_parser(
        "attention", help="attention: ioaware vs SDPA backends, eager, Inductor, Flex",
        description="Time attention forward and forward+backward for ioaware's kernel, "
        "ioaware.compile, SDPA's backends, eager, torch.compile and FlexAttention.",
    )
    attention.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                           help="default: %(default)s")
    attention.add_argument("--batch", type=_positive_int, default=4, help="default: %(default)s")
    attention.add_argument("--heads", type=_positive_int, default=16, help="default: %(default)s")
    attention.add_argument("--seqlen", type=_positive_int, default=4096,
                           help="default: %(default)s")
    attention.add_argument("--head-dim", type=_positive_int, default=128,
                           help="default: %(default)s")
    mask = attention.add_mutually_exclusive_group()
    mask.add_argument("--causal", dest="causal", action="store_const", const=[True],
                      help="causal only (default: both causal and unmasked)")
    mask.add_argument("--no-causal", dest="causal", action="store_const", const=[False],
                      help="unmasked only")
    attention.set_defaults(causal=[False, True])
    attention.add_argument("--mask", choices=("none", *MASK_KIND_NAMES, "all"),
                           default="none",
                           help="a masked / modified variant (all: each in turn), vs "
                           "FlexAttention and a materialised mask at the issue's B=2 H=16 "
                           "N=8192 when given those sizes (default: %(default)s)")
    attention.add_argument("--vs", type=_parse_vs, default="sdpa,eager,compile,flex",
                           help="baselines, comma-separated (default: %(default)s)")
    attention.add_argument("--skip-slow", action="store_true",
                           help="drop SDPA's math backend and eager")
    attention.add_argument("--warmup", type=float, default=25,
                           help="do_bench warmup in ms (default: %(default)s)")
    attention.add_argument("--rep", type=float, default=100,
                           help="do_bench repetition time in ms (default: %(default)s)")
    attention.add_argument("--json", action="store_true", help="print JSON rows")
    attention.set_defaults(run=cmd_bench)
    scan = benches.add_parser(
        "scan", help="selective scan: ioaware vs an eager loop and compiled associative_scan",
        description="Time Mamba's selective scan forward and forward+backward for ioaware's "
        "kernel, torch.compile(associative_scan) and an eager time loop, as fractions of "
        "the memory floor.",
    )
    scan.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                      help="default: %(default)s")
    for flag, default in (("--batch", 4), ("--channels", 1536), ("--groups", 1),
                          ("--heads", 64), ("--head-dim", 64)):
        scan.add_argument(flag, type=_positive_int, default=default,
                          help="default: %(default)s (--heads, --head-dim: with --ssd)")
    scan.add_argument("--seqlen", type=_positive_int, default=None,
                      help="default: 2048, with --ssd 4096")
    scan.add_argument("--d-state", type=_positive_int, default=None,
                      help="default: 16, with --ssd 128")
    scan.add_argument("--ssd", action="store_true",
                      help="Mamba-2's SSD instead: ioaware's chunked kernels vs transformers' "
                      "torch_forward (eager, torch.compile) and the plain recurrent loop")
    scan.add_argument("--compile-timeout", type=float, default=150,
                      help="seconds torch.compile's baseline may take, in a child process "
                      "(--ssd; default: %(default)s)")
    scan.add_argument("--no-gate", dest="gate", action="store_false",
                      help="no silu(z) gate (default: gated, as Mamba)")
    scan.add_argument("--eager-len", type=_positive_int, default=128,
                      help="L the eager loop is timed at, then scaled (default: %(default)s)")
    scan.add_argument("--skip-slow", action="store_true", help="drop the eager loop")
    scan.add_argument("--warmup", type=float, default=25,
                      help="do_bench warmup in ms (default: %(default)s)")
    scan.add_argument("--rep", type=float, default=100,
                      help="do_bench repetition time in ms (default: %(default)s)")
    scan.add_argument("--json", action="store_true", help="print JSON rows")
    scan.set_defaults(run=cmd_bench_scan)
    _add_model_bench(benches)
    decode = benches.add_parser(
        "decode", help="decode attention: ioaware split-KV (dense, paged) vs SDPA, Flex",
        description="Time one query row per head against a long KV cache: ioaware's "
        "split-KV kernels dense and paged, SDPA's backends, FlexAttention and "
        "torch.compile of the eager spelling, as fractions of reading K and V once.",
    )
    decode.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                        help="default: %(default)s")
    for flag, default in (("--batch", 8), ("--heads", 32), ("--kv-heads", 8),
                          ("--head-dim", 128), ("--page", 16)):
        decode.add_argument(flag, type=_positive_int, default=default,
                            help="default: %(default)s")
    decode.add_argument("--context", type=_positive_int, nargs="+", default=[4096, 32768],
                        help="KV lengths (default: %(default)s)")
    decode.add_argument("--warmup", type=float, default=25,
                        help="do_bench warmup in ms (default: %(default)s)")
    decode.add_argument("--rep", type=float, default=100,
                        help="do_bench repetition time in ms (default: %(default)s)")
    decode.add_argument("--variants", nargs="+", metavar="PREFIX",
                        help="only the variants whose name starts with one of these "
                        "(e.g. 'ioaware decode' 'ioaware paged' sdpa; default: all)")
    decode.add_argument("--generate", action="store_true",
                        help="also tokens/s of generate() on a 4-layer Llama-style model: "
                        "eager, torch.compile and ioaware.compile, default and "
                        "reduce-overhead")
    decode.add_argument("--generate-only", action="store_true",
                        help="only the generate() table")
    decode.add_argument("--generate-budget", type=float, default=170,
                        help="seconds the generate() variants may take; those not "
                        "started by then are rows saying so (default: %(default)s)")
    decode.add_argument("--json", action="store_true", help="print JSON rows")
    decode.set_defaults(run=cmd_bench_decode)
    return parser


def _add_model_bench(benches: Any) -> None:
    from ioaware.bench.model import MODELS, VARIANTS

    model = benches.add_parser(
        "model", help="a whole transformers model: eager, SDPA, torch.compile, ioaware",
        description="A training (or inference) step of a transformers model built from its "
        "config with random weights, per variant: median ms a step, first-call seconds, "
        "peak memory (CUDA), regions rewritten, relative error against the first variant. "
        "Variants: " + ", ".join(VARIANTS) + ". Runs on the CPU too (tiny sizes).",
    )

    def one_line_error(message: str) -> None:  # bad input: exit 2, one line
        print(f"ioaware bench model: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    model.error = one_line_error  # type: ignore[method-assign]
    model.add_argument("name", metavar="NAME", help="one of " + ", ".join(MODELS))
    phase = model.add_mutually_exclusive_group()
    phase.add_argument("--train", dest="train", action="store_true", default=True,
                       help="forward and backward (default)")
    phase.add_argument("--infer", dest="train", action="store_false", help="forward only")
    for flag, default in (("--batch", 2), ("--seq-len", 2048), ("--layers", 4),
                          ("--vocab", 32000), ("--window", 1024), ("--steps", 10),
                          ("--warmup", 3)):
        model.add_argument(flag, type=int, default=default, help="default: %(default)s")
    for flag in ("--hidden", "--heads", "--kv-heads"):
        model.add_argument(flag, type=int, default=None, help="default: the model's")
    model.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                       help="default: %(default)s")
    model.add_argument("--timeout", type=float, default=0,
                       help="seconds a variant may take, compile included; one past it is "
                       "a row saying so (default: no limit)")
    model.add_argument("--variants", default=",".join(VARIANTS),
                       help="comma-separated (default: %(default)s)")
    model.add_argument("--json", action="store_true", help="print JSON rows")
    model.set_defaults(run=cmd_bench_model)


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return options.run(options)


if __name__ == "__main__":
    sys.exit(main())
