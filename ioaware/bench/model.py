"""Whole models: `ioaware bench model NAME`, a step of a transformers model built from its
config with random weights (nothing is downloaded), under each way of running it.

    variant           attention spelling   compiler
    eager             eager                none
    sdpa              sdpa                 none
    compile           eager                torch.compile (Inductor)
    compile-sdpa      sdpa                 torch.compile
    compile-ro        eager                torch.compile, mode="reduce-overhead"
    compile-sdpa-ro   sdpa                 torch.compile, mode="reduce-overhead"
    ioaware           eager                ioaware.compile
    ioaware-ro        eager                ioaware.compile, mode="reduce-overhead"

A step is a forward (--infer), or a forward and a backward of mean(output²) in fp32
(--train; no optimizer, the same for every variant). Each row: the median ms of the
timed steps, the first call's seconds (compilation included), the peak memory of the
timed steps (CUDA only), the regions ioaware rewrote, and the output's relative error
against the first variant's on the same input. Every variant's model has the same
weights (the same seed). Models without attention (mamba) have no sdpa variants.

On the CPU it runs too (tiny sizes; ioaware's kernels under Triton's interpreter when
IOAWARE_INTERPRET=1), which is what CI runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import signal
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ioaware.bench.common import DTYPES, short_error

# variant -> (attention implementation, compiler, mode)
VARIANTS: dict[str, tuple[str, str | None, str | None]] = {
    "eager": ("eager", None, None),
    "sdpa": ("sdpa", None, None),
    "compile": ("eager", "inductor", None),
    "compile-sdpa": ("sdpa", "inductor", None),
    "compile-ro": ("eager", "inductor", "reduce-overhead"),
    "compile-sdpa-ro": ("sdpa", "inductor", "reduce-overhead"),
    "ioaware": ("eager", "ioaware", None),
    "ioaware-ro": ("eager", "ioaware", "reduce-overhead"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a model is built and run at; a model's own defaults fill what is None."""

    batch: int = 2
    seq_len: int = 2048
    layers: int = 4
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    vocab: int = 32000
    window: int = 1024  # mistral's sliding window


# model -> (defaults for hidden, heads, kv_heads)
DEFAULTS = {
    "llama": (2048, 16, 4), "mistral": (2048, 16, 4), "gpt2": (768, 12, 12),
    "bert": (768, 12, 12), "mamba": (768, None, None), "jamba": (1024, 16, 4),
}
MODELS = tuple(DEFAULTS)


class SizeError(ValueError):
    """A size the model cannot take; the message names the argument."""


def resolve(name: str, sizes: Sizes) -> Sizes:
    """`sizes` with the model's defaults filled in, checked; SizeError names the argument."""
    if name not in DEFAULTS:
        raise ValueError(f"model={name!r} not understood; expected one of {', '.join(MODELS)}")
    hidden, heads, kv_heads = DEFAULTS[name]
    sizes = dataclasses.replace(sizes, hidden=sizes.hidden or hidden,
                                heads=sizes.heads or heads,
                                kv_heads=sizes.kv_heads or sizes.heads or kv_heads)
    for field in ("batch", "seq_len", "layers", "hidden", "vocab", "window"):
        if getattr(sizes, field) < 1:
            raise SizeError(f"--{field.replace('_', '-')}={getattr(sizes, field)}: expected a "
                            "positive integer")
    if heads is not None:
        if sizes.hidden % sizes.heads:
            raise SizeError(f"--hidden={sizes.hidden} is not a multiple of --heads={sizes.heads}"
                            f" ({name} splits the hidden size over the heads)")
        if sizes.heads % sizes.kv_heads:
            raise SizeError(f"--kv-heads={sizes.kv_heads} must divide --heads={sizes.heads}")
        if name in ("gpt2", "bert") and sizes.kv_heads != sizes.heads:
            raise SizeError(f"--kv-heads={sizes.kv_heads}: {name} has no grouped-query "
                            f"attention; leave it out or give --heads={sizes.heads}")
    return sizes


def build(name: str, sizes: Sizes, attention: str) -> torch.nn.Module:
    """The model `name` at `sizes` (resolved), attention spelled `attention`."""
    import transformers as tf

    h, heads, kv, n = sizes.hidden, sizes.heads, sizes.kv_heads, sizes.layers
    # The configs' default use_cache=True is kept: without a cache transformers adds a
    # packed-sequence mask from position_ids under compile (never eagerly), so every
    # compiled variant would pay a data mask eager does not; the cache costs one cat of
    # each layer's K and V, the same in every variant.
    common = {"vocab_size": sizes.vocab, "bos_token_id": 0, "eos_token_id": 0,
              "pad_token_id": 0, "attn_implementation": attention}
    if name in ("llama", "mistral"):
        cls, model = ((tf.LlamaConfig, tf.LlamaForCausalLM) if name == "llama"
                      else (tf.MistralConfig, tf.MistralForCausalLM))
        extra = {"sliding_window": sizes.window} if name == "mistral" else {}
        cfg = cls(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                  num_key_value_heads=kv, intermediate_size=4 * h,
                  max_position_embeddings=max(sizes.seq_len, 2048), **extra, **common)
        return model(cfg)
    if name == "gpt2":
        cfg = tf.GPT2Config(n_embd=h, n_layer=n, n_head=heads, n_positions=sizes.seq_len,
                            attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **common)
        return tf.GPT2LMHeadModel(cfg)
    if name == "bert":
        cfg = tf.BertConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                            intermediate_size=4 * h, max_position_embeddings=sizes.seq_len,
                            attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
                            **common)
        return tf.BertModel(cfg, add_pooling_layer=False)
    scan = {"use_associative_scan": True, "use_cache": False}
    if name == "mamba":
        common.pop("attn_implementation")
        cfg = tf.MambaConfig(hidden_size=h, num_hidden_layers=n, state_size=16, **scan,
                             **common)
        return tf.MambaForCausalLM(cfg)
    # jamba: one attention layer in four (the third), dense MLPs (one expert)
    cfg = tf.JambaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=4 * h, mamba_d_state=16,
                         attn_layer_period=4, attn_layer_offset=2, num_experts=1,
                         expert_layer_period=1, expert_layer_offset=0, **scan, **common)
    return tf.JambaForCausalLM(cfg)


def inputs(name: str, sizes: Sizes, device: torch.device) -> dict[str, torch.Tensor]:
    """Token ids; for bert an attention_mask with the second half of row 0 padded."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, sizes.vocab, (sizes.batch, sizes.seq_len), generator=gen)
    kw = {"input_ids": ids.to(device)}
    if name == "bert":
        mask = torch.ones(sizes.batch, sizes.seq_len, dtype=torch.long)
        mask[0, sizes.seq_len // 2:] = 0
        kw["attention_mask"] = mask.to(device)
    return kw


@dataclasses.dataclass
class ModelRow:
    model: str
    variant: str
    train: bool
    ms: float | None = None  # median per step
    first_call_s: float | None = None
    peak_bytes: int | None = None  # CUDA only
    regions: int | None = None  # rewritten by ioaware
    rel_err: float | None = None  # output against the first variant's
    note: str = ""


def variants_for(name: str, asked: Sequence[str]) -> list[str]:
    """The variants asked that the model has (no sdpa spellings without attention)."""
    return [v for v in asked if not (name == "mamba" and VARIANTS[v][0] == "sdpa")]


def bench_model(name: str, sizes: Sizes, variants: Sequence[str], *, train: bool = True,
                dtype: str = "bf16", device: str | None = None, steps: int = 10,
                warmup: int = 3, timeout: float = 0, deadline: float | None = None,
                progress: Callable[[str], None] = lambda _: None) -> list[ModelRow]:
    """One row per variant (see the module docstring). timeout: seconds a variant may
    take, compilation included (0: no limit); one past it is a row saying so.
    deadline: a `time.monotonic()` by which the whole call ends: each variant's limit is
    cut to what is left, and a variant with under MIN_VARIANT_S left is a row saying
    it did not run."""
    sizes = resolve(name, sizes)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: {', '.join(unknown)} not understood; expected a "
                         f"comma-separated subset of {','.join(VARIANTS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows, reference = [], None
    for variant in variants_for(name, variants):
        row = ModelRow(name, variant, train)
        limit = timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < MIN_VARIANT_S:
                row.note = "not run: the time given to this table was spent"
                progress(f"{name} {variant}: {row.note}")
                rows.append(row)
                continue
            limit = min(limit, left) if limit > 0 else left
        progress(f"{name} {variant}: building and compiling "
                 f"({'train' if train else 'infer'}, B={sizes.batch}, L={sizes.seq_len})")
        try:
            with _time_limit(limit, f"--timeout={limit:g} s" if limit == timeout
                             else f"the {limit:.0f} s left to this table"):
                out = _run_variant(row, name, sizes, variant, train, DTYPES[dtype], dev,
                                   steps, warmup)
            if reference is None:
                reference = out
            else:
                row.rel_err = (((out - reference).norm() / reference.norm().clamp_min(1e-30))
                               .item())
        except Exception as e:  # noqa: BLE001 - one failing variant is a row, not the end
            row.note = short_error(e)
        finally:
            torch._dynamo.reset()
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        progress(f"{name} {variant}: " + (row.note or f"{row.ms:.2f} ms a step, first call "
                                           f"{row.first_call_s:.1f} s"))
        rows.append(row)
    return rows


def _run_variant(row: ModelRow, name: str, sizes: Sizes, variant: str, train: bool,
                 dtype: torch.dtype, dev: torch.device, steps: int, warmup: int
                 ) -> torch.Tensor:
    """Fill the row's timings; return the first call's output (fp32, on the CPU)."""
    attention, compiler, mode = VARIANTS[variant]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name, sizes, attention).to(device=dev, dtype=dtype)
    model.train(train)
    backend = None
    if compiler == "inductor":
        run = torch.compile(model, mode=mode)
    elif compiler == "ioaware":
        from ioaware.api import UNTRACEABLE, eager_when_untraceable
        from ioaware.backend import IoawareBackend

        backend = IoawareBackend(mode=mode)
        # as ioaware.compile runs it: a call dynamo cannot trace runs eagerly, and says so
        run = eager_when_untraceable(torch.compile(model, backend=backend), model, backend)
    else:
        run = model
    kw = inputs(name, sizes, dev)
    marks = mode == "reduce-overhead"

    def step() -> torch.Tensor:
        if marks:  # a new iteration: the previous step's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.set_grad_enabled(train):
            result = run(**kw)
            out = result.logits if hasattr(result, "logits") else result.last_hidden_state
            if train:
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)
        return out

    start = time.perf_counter()
    first = step().detach().float().cpu()
    _sync(dev)
    row.first_call_s = time.perf_counter() - start
    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(dev)
        times.append((time.perf_counter() - start) * 1e3)
    row.ms = statistics.median(times)
    if dev.type == "cuda":
        row.peak_bytes = torch.cuda.max_memory_allocated(dev)
    if backend is not None:
        row.regions = len(backend.explanation.rewrites)
        untraced = [f.reason for f in backend.explanation.fallbacks
                    if f.reason.startswith(UNTRACEABLE)]
        if untraced:
            row.note = untraced[0][:300]
    return first


# Seconds a variant needs at the least to be worth starting under a deadline.
MIN_VARIANT_S = 10.0


class VariantTimeout(Exception):
    """A variant ran past --timeout (a compile that does not finish, say)."""


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """Raise VariantTimeout in the block after `seconds` (SIGALRM: the main thread on a
    POSIX system; elsewhere, or for 0, no limit); `what` names the limit."""
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise VariantTimeout(f"did not finish within {what}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def render_model_bench(rows: Sequence[ModelRow], title: str) -> str:
    """The rows as a table; speed against the fastest torch.compile row."""
    from rich import box
    from rich.table import Table

    from ioaware.tables import format_bytes, render

    compiled = [r.ms for r in rows if r.ms is not None and r.variant.startswith("compile")]
    best = min(compiled) if compiled else None
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("variant", "ms / step", "vs best torch.compile", "first call s", "peak",
                   "regions", "rel err"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for r in rows:
        table.add_row(
            r.variant, _fmt(r.ms, ".2f"),
            "-" if best is None or r.ms is None else f"{r.ms / best:.2f}x",
            _fmt(r.first_call_s, ".1f"),
            "-" if r.peak_bytes is None else format_bytes(r.peak_bytes),
            "-" if r.regions is None else str(r.regions), _fmt(r.rel_err, ".1e"))
    notes = [f"{r.variant}: {r.note}" for r in rows if r.note]
    return render([table, *notes], width=140)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
