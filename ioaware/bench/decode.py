"""Decode attention side by side on this GPU: one query row per head against a long
KV cache, ioaware's split-KV kernels (dense and paged) against SDPA's backends,
FlexAttention (its decoding path) and torch.compile of the eager spelling.

Every variant computes softmax(q kᵀ / sqrt(d)) v for q [B, Hq, 1, d] against K/V
[B, Hkv, N, d] (GQA: query head h reads KV head h // (Hq/Hkv)), checked first against
fp32 math on the same inputs, then timed twice (median): launched back to back
(`triton.testing.do_bench`: what an eager decode loop pays, host launch cost included)
and replayed from a CUDA graph (`do_bench_cudagraph`: what a decode loop under CUDA
graphs pays, as `generate()` with a static cache and reduce-overhead runs; at short
contexts the first is host-bound). The floor is reading K and V once:
B·Hkv·N·2d·itemsize bytes at the device's HBM bandwidth; each row reports the fraction
of it that each time reaches.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ioaware.bench.common import DTYPES, check_dtype, relative_error, require_cuda, short_error

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-4}
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


@dataclasses.dataclass
class DecodeRow:
    variant: str
    context: int
    ok: bool | None
    rel_err: float | None
    us: float | None
    floor_fraction: float | None  # floor time / measured time
    note: str = ""
    graph_us: float | None = None  # replayed from a CUDA graph (no host launch cost)
    graph_floor_fraction: float | None = None


def _bandwidth() -> float:
    from ioaware.hardware import device_profile

    profile = device_profile(torch.device("cuda"))
    return profile.measured_hbm_bandwidth or profile.hbm_bandwidth


def paged(k: torch.Tensor, v: torch.Tensor, page: int, generator: torch.Generator):
    """K/V [B, Hkv, N, d] scattered into pages [num_pages, page, Hkv, d] (contiguous, as
    a serving engine's pool) in a shuffled order: (k_cache, v_cache, block_table int32
    [B, ⌈N/page⌉])."""
    batch, h_kv, n, d = k.shape
    per_row = -(-n // page)
    order = torch.randperm(batch * per_row, generator=generator).to(k.device)
    table = order.view(batch, per_row).to(torch.int32)
    pad = per_row * page - n

    def pool(x):
        x = F.pad(x, (0, 0, 0, pad)).view(batch, h_kv, per_row, page, d)
        x = x.permute(0, 2, 3, 1, 4).reshape(batch * per_row, page, h_kv, d)
        # Not empty_like: at B = 1 the reshape above is a view with x's permuted strides,
        # which empty_like would keep (the eager gather's .view then failed at B=1, 128k).
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        out[order] = x
        return out

    return pool(k), pool(v), table


def _variants(q, k, v, scale, page, generator) -> dict[str, Callable[[], torch.Tensor]]:
    import ioaware
    from ioaware.codegen.attention.spec import AttentionSpec
    from ioaware.codegen.decode import op as decode_op

    group = q.shape[1] // k.shape[1]
    spec = AttentionSpec(head_dim=q.shape[-1], head_dim_v=v.shape[-1],
                         dtype=str(q.dtype).split(".")[1], causal=False, scale=scale)
    k_cache, v_cache, table = paged(k, v, page, generator)
    n = k.shape[2]

    def eager(q, k, v):
        k = k.repeat_interleave(group, 1)
        v = v.repeat_interleave(group, 1)
        return torch.softmax((q @ k.transpose(-1, -2)).float() * scale, -1).to(q.dtype) @ v

    def sdpa_gqa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

    def paged_gather(q, k_cache, v_cache, table):
        """examples/paged_decode.py's spelling: pages gathered through the table, then SDPA."""
        b, m = table.shape
        k, v = (x[table].view(b, m * page, *x.shape[2:]).transpose(1, 2)[:, :, :n]
                for x in (k_cache, v_cache))
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

    compiled_ioaware = ioaware.compile(sdpa_gqa)
    compiled_paged = ioaware.compile(paged_gather)
    compiled_eager = torch.compile(eager)
    out = {
        "ioaware decode": lambda: decode_op.decode_attention(q, k, v, spec),
        f"ioaware paged (page {page})": lambda: decode_op.paged_decode_attention(
            q, k_cache, v_cache, table, n, spec),
        "ioaware.compile(sdpa)": lambda: compiled_ioaware(q, k, v),
        "ioaware.compile(paged gather + sdpa)": lambda: compiled_paged(q, k_cache, v_cache,
                                                                        table),
        "eager paged gather + sdpa": lambda: paged_gather(q, k_cache, v_cache, table),
        "torch.compile(eager)": lambda: compiled_eager(q, k, v),
    }
    from torch.nn.attention import SDPBackend, sdpa_kernel

    expanded = []  # K/V repeated per query head, made once for the backends without GQA

    for name in SDPA_BACKENDS:
        backend = getattr(SDPBackend, name)

        def gqa(backend=backend):
            with sdpa_kernel(backend):
                return sdpa_gqa(q, k, v)

        def repeated(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, *expanded, scale=scale)

        try:  # decided once, outside the timing: enable_gqa, else K/V expanded beforehand
            gqa()
            out[f"sdpa[{name}]"] = gqa
        except RuntimeError:
            if not expanded:
                expanded.extend(x.repeat_interleave(group, 1) for x in (k, v))
            out[f"sdpa[{name}] (K/V expanded)"] = repeated
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention)
        out["flex (decoding)"] = lambda: flex(q, k, v, scale=scale, enable_gqa=True)
    except ImportError:
        pass
    return out


def bench_decode(batch: int, heads: int, kv_heads: int, contexts: list[int], head_dim: int,
                 dtype: str = "bf16", page: int = 16, warmup_ms: float = 25,
                 rep_ms: float = 100, progress: Callable[[str], None] | None = None,
                 only: Sequence[str] | None = None) -> list[DecodeRow]:
    """One row per (context, variant); see the module docstring. `only`: keep the
    variants whose name starts with one of these prefixes (all when None)."""
    require_cuda()
    check_dtype(dtype)
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
    from triton.testing import do_bench, do_bench_cudagraph

    torch_dtype = DTYPES[dtype]
    bandwidth = _bandwidth()
    scale = 1 / math.sqrt(head_dim)
    rows = []
    for n in contexts:
        gen = torch.Generator().manual_seed(n)
        q = torch.randn(batch, heads, 1, head_dim, generator=gen).to("cuda", torch_dtype)
        k, v = (torch.randn(batch, kv_heads, n, head_dim, generator=gen).to("cuda", torch_dtype)
                for _ in range(2))
        group = heads // kv_heads
        want = F.scaled_dot_product_attention(
            q.float(), k.float().repeat_interleave(group, 1),
            v.float().repeat_interleave(group, 1), scale=scale)
        floor_s = batch * kv_heads * n * 2 * head_dim * q.element_size() / bandwidth
        for name, fn in _variants(q, k, v, scale, page, gen).items():
            if only is not None and not name.startswith(tuple(only)):
                continue
            if progress:
                progress(f"N={n} {name}")
            try:
                err = relative_error([fn()], [want])
                ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
                row = DecodeRow(name, n, err < TOLERANCE[torch_dtype], err, ms * 1e3,
                                floor_s / (ms * 1e-3))
                rows.append(row)
                try:
                    graph_ms = do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
                    row.graph_us, row.graph_floor_fraction = (graph_ms * 1e3,
                                                              floor_s / (graph_ms * 1e-3))
                except Exception as error:  # noqa: BLE001  (not capturable: say so)
                    torch.cuda.synchronize()
                    row.note = f"CUDA graph: {short_error(error)}"
            except Exception as error:  # noqa: BLE001  (a backend that does not take this shape)
                rows.append(DecodeRow(name, n, None, None, None, None, short_error(error)))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def render_decode_bench(rows: list[DecodeRow], title: str) -> str:
    from rich import box
    from rich.table import Table

    from ioaware.tables import render

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("context", "variant", "check", "µs", "floor", "vs fastest SDPA",
                   "graph µs", "graph floor", "graph vs SDPA"):
        table.add_column(header, justify="left" if header == "variant" else "right")

    def fastest_sdpa(r: DecodeRow, field: str) -> float | None:
        times = [getattr(x, field) for x in rows if x.context == r.context and x.ok
                 and x.variant.startswith("sdpa[") and getattr(x, field) is not None]
        return min(times) if times else None

    def cells(r: DecodeRow, us: float | None, fraction: float | None, sdpa: float | None):
        return ("-" if us is None else f"{us:.1f}",
                "-" if fraction is None else f"{fraction:.0%}",
                "-" if us is None or sdpa is None else f"{sdpa / us:.2f}x")

    for r in rows:
        check = "-" if r.ok is None else f"{r.rel_err:.1e} {'ok' if r.ok else 'FAIL'}"
        table.add_row(str(r.context), r.variant, check,
                      *cells(r, r.us, r.floor_fraction, fastest_sdpa(r, "us")),
                      *cells(r, r.graph_us, r.graph_floor_fraction,
                             fastest_sdpa(r, "graph_us")))
    notes = [f"{r.variant} (N={r.context}): {r.note}" for r in rows if r.note]
    return render([table, *notes, *paged_over_dense(rows)], width=160)


def paged_over_dense(rows: list[DecodeRow]) -> list[str]:
    """Per context, the paged kernel's time over the dense kernel's under CUDA graphs
    (the issue's bar: within 10 %), where both rows were timed."""
    lines = []
    for n in sorted({r.context for r in rows}):
        times = {r.variant.split(" (")[0]: r.graph_us for r in rows if r.context == n}
        dense, paged_us = times.get("ioaware decode"), times.get("ioaware paged")
        if dense and paged_us:
            lines.append(f"N={n}: paged / dense under CUDA graphs = {paged_us / dense:.3f} "
                         f"({paged_us:.1f} / {dense:.1f} µs; the bar is 1.10)")
    return lines


@dataclasses.dataclass
class GenerateRow:
    variant: str
    tokens_per_s: float | None
    same_tokens: bool | None  # greedy tokens equal eager's (bf16 may drift; informative)
    note: str = ""
    graphs: int | None = None  # graphs dynamo compiled over both generate() calls
    breaks: int | None = None  # graph breaks over both calls


def graph_steps(forward: Callable) -> Callable:
    """`forward` as a generate() loop must call a model compiled with CUDA graphs
    (mode="reduce-overhead"), as transformers does for its own compiled StaticCache path:
    each call starts a new step of cudagraph trees (`cudagraph_mark_step_begin`: the
    previous step's outputs may be overwritten now), and the tensors it returns are
    cloned out of the graph's memory, since generate() reads them after the next replay
    has begun (its logits, in the stopping and token bookkeeping). Without both, the
    second step fails with "accessing tensor output of CUDAGraphs that has been
    overwritten by a subsequent run"."""

    def step(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        out = forward(*args, **kwargs)
        for name, value in list(out.items()):
            if isinstance(value, torch.Tensor):
                out[name] = value.clone()
        return out

    return step


def compile_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) that dynamo counted since its counters were last
    cleared: a generate() that recompiles per step, or breaks its step into pieces,
    shows here."""
    from torch._dynamo.utils import counters

    return (counters["stats"].get("unique_graphs", 0),
            sum(counters["graph_break"].values()))


def generate_kwargs(new_tokens: int) -> dict:
    """generate()'s arguments for the whole-model rows: exactly `new_tokens` greedy
    tokens into a StaticCache, with transformers' own torch.compile off."""
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
            "cache_implementation": "static", "disable_compile": True}


def generate_model(layers: int = 4, hidden: int = 2048, heads: int = 16, kv_heads: int = 4,
                   device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """The whole-model rows' Llama-style model (random weights, SDPA attention, no EOS:
    every generation runs its full length)."""
    import warnings

    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.LlamaConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=4 * hidden, vocab_size=32000,
            bos_token_id=0, eos_token_id=None, pad_token_id=0)
        return transformers.LlamaForCausalLM(config).to(device, dtype).eval()


GENERATE_VARIANTS = ("eager", "torch.compile(reduce-overhead)",
                     "ioaware.compile(reduce-overhead)", "torch.compile", "ioaware.compile")


def _build_variant(name: str, forward: Callable) -> Callable:
    import ioaware

    mode = "reduce-overhead" if "reduce-overhead" in name else None
    if name == "eager":
        return forward
    compiler = ioaware.compile if name.startswith("ioaware") else torch.compile
    return compiler(forward, mode=mode) if mode else compiler(forward)


def _generate_row(name: str, model, ids: torch.Tensor, new_tokens: int
                  ) -> tuple[GenerateRow, torch.Tensor]:
    """One variant's row (same_tokens left None) and its tokens, in this process."""
    import time

    from torch._dynamo.utils import counters

    eager_forward = model.forward
    try:
        torch._dynamo.reset()
        counters.clear()
        compiled = _build_variant(name, eager_forward)
        model.forward = graph_steps(compiled) if "reduce-overhead" in name else compiled
        kwargs = generate_kwargs(new_tokens)
        with torch.no_grad():
            model.generate(ids, **kwargs)  # compiles, records the CUDA graphs
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        graphs, breaks = compile_counts()
        skips = counters["inductor"].get("cudagraph_skips", 0)
        note = "; ".join(x for x in (_fallbacks(compiled), f"{skips} graphs ran without "
                                     "CUDA graphs" if skips else "") if x)
        return GenerateRow(name, ids.shape[0] * new_tokens / seconds, None, note, graphs,
                           breaks), out
    finally:
        model.forward = eager_forward


def _generate_row_in_subprocess(name: str, sizes: dict, ids: torch.Tensor, new_tokens: int,
                                timeout_s: float) -> tuple[GenerateRow, torch.Tensor | None]:
    """`_generate_row` in a fresh Python process on the same model (the same seed, the
    same prompt): a reduce-overhead row that kills its process (both such rows ended
    the H200 run of 2026-12-07 with SIGSEGV, after the default rows) loses that row
    only, and no CUDA graph pool, cudagraph tree or StaticCache of an earlier row is
    alive in it."""
    import json
    import subprocess
    import sys

    request = json.dumps({"name": name, "sizes": sizes, "ids": ids.tolist(),
                          "new_tokens": new_tokens})
    code = "from ioaware.bench.decode import generate_row_main; generate_row_main()"
    try:
        done = subprocess.run([sys.executable, "-c", code], input=request, text=True,
                              capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return GenerateRow(name, None, None, f"its process ran past {timeout_s:.0f} s"), None
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        how = (f"signal {-done.returncode}" if done.returncode < 0
               else f"exit {done.returncode}")
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return GenerateRow(name, None, None, f"its process died ({how}) {tail[0][:200]}"), None
    answer = json.loads(lines[-1])
    if answer.get("error"):
        return GenerateRow(name, None, None, answer["error"]), None
    row = GenerateRow(name, answer["tokens_per_s"], None, answer["note"], answer["graphs"],
                      answer["breaks"])
    return row, torch.tensor(answer["tokens"], device=ids.device)


def generate_row_main() -> None:
    """The child of `_generate_row_in_subprocess`: a JSON request on stdin, one JSON
    line (the row and its tokens, or the error) on stdout."""
    import json
    import sys

    request = json.loads(sys.stdin.read())
    torch.manual_seed(0)
    model = generate_model(**request["sizes"])
    ids = torch.tensor(request["ids"], device="cuda")
    try:
        row, out = _generate_row(request["name"], model, ids, request["new_tokens"])
        answer = {"tokens_per_s": row.tokens_per_s, "note": row.note, "graphs": row.graphs,
                  "breaks": row.breaks, "tokens": out.tolist()}
    except Exception as error:  # noqa: BLE001  (a variant that fails is a row)
        answer = {"error": short_error(error)}
    print(json.dumps(answer), flush=True)


def bench_generate(layers: int = 4, hidden: int = 2048, heads: int = 16, kv_heads: int = 4,
                   batch: int = 1, prompt: int = 128, new_tokens: int = 128,
                   budget_s: float = 170.0,
                   progress: Callable[[str], None] | None = None,
                   isolate: bool = True) -> list[GenerateRow]:
    """Tokens/s of greedy generate() with a StaticCache on a Llama-style model with random
    weights (bf16): eager, torch.compile and ioaware.compile, each by default and with
    mode="reduce-overhead" (CUDA graphs), each timed on its second generate() (the first
    compiles and records the graphs), its tokens compared with eager's. The
    reduce-overhead rows call the forward through `graph_steps` and, with `isolate`,
    run each in its own process (`_generate_row_in_subprocess`: a crash there is a row
    saying so); every row counts the graphs dynamo compiled and its graph breaks (two
    graphs, prefill and the decode step, is what a StaticCache needs), and the ioaware
    rows say what fell back.

    transformers' own compile is off (`disable_compile`): with a StaticCache on CUDA,
    generate() otherwise wraps the forward in torch.compile(mode="reduce-overhead")
    itself, and every row would time that. Variants run in order of the acceptance
    (eager, the two reduce-overhead rows, then the default modes), each started only
    while the slowest so far would still end within `budget_s` seconds; a variant not
    started is a row saying so.
    """
    require_cuda()
    import time

    sizes = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads}
    torch.manual_seed(0)  # the same weights in a row's own process
    model = generate_model(**sizes)
    ids = torch.randint(1, 32000, (batch, prompt), device="cuda")
    rows, reference, start_all, slowest = [], None, time.perf_counter(), 0.0
    for name in GENERATE_VARIANTS:
        started = time.perf_counter()
        left = budget_s - (started - start_all)
        if slowest > left:  # the slowest so far would overrun
            rows.append(GenerateRow(name, None, None, f"not run: the {budget_s:.0f} s budget "
                                                      "would be spent"))
            continue
        if progress:
            progress(f"generate {name}")
        try:
            if isolate and "reduce-overhead" in name:
                row, out = _generate_row_in_subprocess(name, sizes, ids, new_tokens,
                                                       max(left, 60.0))
            else:
                row, out = _generate_row(name, model, ids, new_tokens)
            if out is not None:
                reference = out if reference is None else reference
                row.same_tokens = bool(torch.equal(out, reference))
            rows.append(row)
        except Exception as error:  # noqa: BLE001  (a variant that fails is a row, not a crash)
            rows.append(GenerateRow(name, None, None, short_error(error)))
        finally:
            slowest = max(slowest, time.perf_counter() - started)
    return rows


def _fallbacks(compiled: Callable) -> str:
    """What ioaware left as it was in a row's graphs, from the backend `ioaware.compile`
    returned (an Inductor failure runs a graph unfused: about eager's speed); "" for the
    other rows or when nothing fell back."""
    backend = getattr(compiled, "_ioaware_backend", None)
    if backend is None:
        return ""
    reasons = collections.Counter(f"{f.kind}: {f.reason}" for f in backend.explanation.fallbacks)
    return "; ".join(f"{why} (x{n})" if n > 1 else why for why, n in reasons.items())


def render_generate_bench(rows: list[GenerateRow], title: str) -> str:
    from rich import box
    from rich.table import Table

    from ioaware.tables import render

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("variant", "tokens/s", "tokens = eager's", "graphs", "breaks"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for r in rows:
        table.add_row(r.variant, "-" if r.tokens_per_s is None else f"{r.tokens_per_s:.1f}",
                      "-" if r.same_tokens is None else str(r.same_tokens),
                      *("-" if x is None else str(x) for x in (r.graphs, r.breaks)))
    return render([table, *[f"{r.variant}: {r.note}" for r in rows if r.note]], width=160)
