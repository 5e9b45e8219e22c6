"""The measured choice between the generated attention kernels and SDPA's backends.

For a region an SDPA backend computes exactly (the attention pass decides which:
`passes/attention/choice.py`), the implementations are timed against each other on the
device, once per (device, versions, dtype, size class, semantics), and the fastest runs:

    generated   ioaware::flash_attention (this family's kernels)
    cudnn       aten._scaled_dot_product_cudnn_attention      (tried in this order:
    flash       aten._scaled_dot_product_flash_attention       a tie goes to the
    efficient   aten._scaled_dot_product_efficient_attention   earlier one)

Each SDPA candidate is first checked against an fp32 reference on the same random inputs
(one head: a backend that errors, or differs by more than the dtype allows, is not a
candidate, with its reason), then timed with `tuning.bench_ms` (median): the forward
alone, or forward and backward when the region is differentiated (`Problem.grad`).
Timing happens at compile time, outside dynamo's tracing and never inside a CUDA-graph
capture; the graph then calls the chosen implementation, so it stays static, and an
SDPA backend's own autograd formula gives the gradients.

Measurements persist in `config.cache_dir/choices/<key>.json`, beside the kernel
modules; a damaged file is measured again and replaced. Tests give `choose` their own
candidates (name → timer); the default builds the real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import triton

from ioaware.config import config
from ioaware.spec import DTYPES
from ioaware.version import __version__

from ..cache import RENDERERS, device_tag, write_atomic
from ..tuning import bench_ms, capturing

log = logging.getLogger("ioaware.choice")

GENERATED = "generated"
# SDPA's backends in the order they are preferred on a tie (cuDNN is the fastest on
# Hopper in the measurements issue 15 starts from).
SDPA_BACKENDS = ("cudnn", "flash", "efficient")
IMPLEMENTATIONS = (GENERATED, *SDPA_BACKENDS)
# Relative (Frobenius) difference from the generated kernel's output a candidate may
# have: two roundings of the output to the dtype, with room for the fp32 accumulations.
AGREE = {"float16": 1e-2, "bfloat16": 3e-2, "float32": 1e-4}

Timer = Callable[[], float]  # milliseconds; raises when the candidate cannot run


@dataclasses.dataclass(frozen=True)
class Problem:
    """One attention region's sizes and semantics: q [batch, heads, n_q, head_dim],
    k, v [batch, heads, n_k, ...], no mask but `causal` (top-left, n_q == n_k), no
    dropout. grad: the region is differentiated (time forward and backward)."""

    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int
    head_dim_v: int
    dtype: str
    causal: bool
    scale: float
    grad: bool

    def size_class(self) -> dict:
        """What the choice is cached under: powers of two of batch·heads, n_q and n_k;
        the rest exactly."""
        def pow2(n: int) -> int:
            return 1 << max(n - 1, 0).bit_length()
        return {"bh": pow2(self.batch * self.heads), "n_q": pow2(self.n_q),
                "n_k": pow2(self.n_k), "head_dim": self.head_dim,
                "head_dim_v": self.head_dim_v, "dtype": self.dtype, "causal": self.causal,
                "scale": self.scale, "grad": self.grad}


@dataclasses.dataclass(frozen=True)
class Choice:
    """What was decided: `chosen` runs; `times` holds each measured candidate's
    milliseconds; `excluded` why the others are not candidates; `why` says why nothing
    was measured (empty when it was)."""

    chosen: str
    times: Mapping[str, float] = dataclasses.field(default_factory=dict)
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)
    why: str = ""

    def describe(self) -> str:
        """For explain: "cudnn 0.910 ms, generated 1.020 ms → cudnn"."""
        if not self.times:
            text = f"{self.chosen} ({self.why})" if self.why else self.chosen
        else:
            text = ", ".join(f"{name} {ms:.3f} ms" for name, ms in
                             sorted(self.times.items(), key=lambda item: item[1]))
            text += f" → {self.chosen}"
        if self.excluded:
            text += "; not candidates: " + "; ".join(f"{name}: {why}" for name, why in
                                                     self.excluded.items())
        return text


def allowed(names: Sequence[str] | None = None) -> tuple[str, ...]:
    """`config.implementations` (or `names`), checked, in IMPLEMENTATIONS order."""
    names = tuple(config.implementations if names is None else names)
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown or not names:
        raise ValueError(f"config.implementations={names!r}: expected a non-empty subset "
                         f"of {IMPLEMENTATIONS}")
    return tuple(n for n in IMPLEMENTATIONS if n in names)


def choose(problem: Problem, device: torch.device,
           candidates: Mapping[str, Timer] | None = None, *,
           without_generated: str | None = None) -> Choice:
    """The implementation to run for `problem` on `device` (see the module docstring).

    candidates: name → timer for each implementation to consider (tests); None builds
    the real ones for the names `config.implementations` allows (on CUDA: the pass
    asks only there). Nothing is measured, and the generated kernel kept, inside a
    CUDA-graph capture, unless an earlier measurement is on disk.

    without_generated: why the generated kernels cannot serve `problem` (a head dim or
    shared memory they do not fit); only SDPA's backends are candidates then, and a
    Choice of GENERATED means none can run it either (the region stays eager).
    """
    names = allowed() if candidates is None else tuple(candidates)
    if without_generated is not None:
        names = tuple(n for n in names if n != GENERATED)
        if candidates is not None:
            candidates = {n: t for n, t in candidates.items() if n != GENERATED}
        if not names:
            return Choice(GENERATED, why=f"{without_generated}; config.implementations "
                                         "allows no SDPA backend")
    elif names == (GENERATED,):
        return Choice(GENERATED, why="config.implementations allows only it")
    path = _choice_path(problem, device, names)
    stored = _read(path, names)
    if stored is not None:
        return stored
    if candidates is None:
        if capturing():
            return Choice(GENERATED, why="not measured inside a CUDA-graph capture")
        candidates = real_candidates(problem, torch.device(device), names)
    times: dict[str, float] = {}
    excluded: dict[str, str] = {}
    for name, timer in candidates.items():
        try:
            ms = float(timer())
        except Exception as e:  # noqa: BLE001 - a backend that cannot take this problem
            excluded[name] = _short(e)
            continue
        if not math.isfinite(ms) or ms <= 0:
            excluded[name] = f"timer gave {ms}"
            continue
        times[name] = ms
    if not times:
        return Choice(GENERATED, excluded=excluded, why="no candidate could be timed")
    if without_generated is not None:  # said beside the times
        excluded = {GENERATED: without_generated, **excluded}
    # the fastest; a tie goes to the first in IMPLEMENTATIONS order
    chosen = min(times, key=lambda n: (times[n], _rank(n)))
    choice = Choice(chosen, times, excluded)
    _write(path, choice)
    return choice


def _rank(name: str) -> int:
    return IMPLEMENTATIONS.index(name) if name in IMPLEMENTATIONS else len(IMPLEMENTATIONS)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


# ---- the real candidates -------------------------------------------------------------

def sdpa_forward(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 causal: bool, scale: float) -> torch.Tensor:
    """The output of SDPA backend `name` (its aten op, as the rewritten graph calls it)."""
    aten = torch.ops.aten
    if name == "cudnn":
        return aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale)[0]
    if name == "flash":
        return aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)[0]
    if name == "efficient":
        return aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale)[0]
    raise ValueError(f"name={name!r} is not one of {SDPA_BACKENDS}")


def _generated_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       scale: float) -> torch.Tensor:
    from .op import flash_attention

    return flash_attention(q, k, v, scale=scale, causal=causal)


def _reference_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    scale: float) -> torch.Tensor:
    """softmax(scale·q kᵀ [causal]) v of batch 0, head 0, in fp32: [n_q, dv] (one head:
    the [n_q, n_k] scores of a long sequence fit where every head's would not)."""
    s = (q[0, 0].float() @ k[0, 0].float().T) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v[0, 0].float()


def real_candidates(problem: Problem, device: torch.device,
                    names: Sequence[str]) -> dict[str, Timer]:
    """name → timer of each implementation in `names` on random inputs of `problem`'s
    sizes; an SDPA timer raises when its output (batch 0, head 0) differs from the fp32
    reference by more than the dtype allows (AGREE)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    dtype = DTYPES[problem.dtype]
    p = problem
    with unset_fake_temporarily():
        def randn(n: int, d: int, grad: bool) -> torch.Tensor:
            return torch.randn(p.batch, p.heads, n, d, device=device, dtype=dtype,
                               requires_grad=grad)

        q, k, v = (randn(p.n_q, p.head_dim, p.grad), randn(p.n_k, p.head_dim, p.grad),
                   randn(p.n_k, p.head_dim_v, p.grad))
        dout = randn(p.n_q, p.head_dim_v, False)

    def run(forward: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def once() -> None:
            with torch.enable_grad():
                out = forward(q, k, v, p.causal, p.scale)
                if p.grad:
                    torch.autograd.grad(out, (q, k, v), dout)
        return once

    def timer(forward: Callable[..., torch.Tensor], check: bool) -> Timer:
        def measure() -> float:
            with unset_fake_temporarily():
                if check:
                    with torch.no_grad():
                        want = _reference_head(q, k, v, p.causal, p.scale)
                        got = forward(q, k, v, p.causal, p.scale)[0, 0].float()
                        err = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
                    if not err <= AGREE[p.dtype]:
                        raise ValueError(f"differs from the fp32 reference by {err:.2e}")
                return bench_ms(run(forward))
        return measure

    out: dict[str, Timer] = {}
    for name in names:
        if name == GENERATED:
            out[name] = timer(_generated_forward, check=False)
        else:
            out[name] = timer(lambda q, k, v, c, s, name=name: sdpa_forward(name, q, k, v, c, s),
                              check=True)
    return out


# ---- on disk -------------------------------------------------------------------------

def _choice_path(problem: Problem, device: torch.device | str, names: Sequence[str]) -> Path:
    """The file of one (device, versions, candidates, size class) measurement."""
    digests = {kind: RENDERERS[kind].digest for kind in ("attention_fwd", "attention_bwd")
               if kind in RENDERERS}  # the generated kernels' templates: their speed
    # the device's name and capability (a device this torch cannot see: as written)
    tag = device_tag(device) if torch.cuda.is_available() else str(device)
    fields = {"device": tag, "ioaware": __version__,
              "torch": torch.__version__, "triton": triton.__version__,
              "templates": digests, "candidates": sorted(names),
              "problem": problem.size_class()}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return Path(config.cache_dir) / "choices" / f"attention-{key}.json"


def _read(path: Path, names: Sequence[str]) -> Choice | None:
    """The stored choice, or None when absent or damaged (then measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        times = {str(n): float(ms) for n, ms in data["times"].items()}
        excluded = {str(n): str(r) for n, r in data["excluded"].items()}
        chosen = data["chosen"]
        if chosen not in times or not set(times) <= set(names):
            raise ValueError(f"chosen={chosen!r} is not among the timed {sorted(times)}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ioaware: implementation choice %s is damaged (%s); measuring again",
                    path.name, e)
        return None
    return Choice(chosen, times, excluded)


def _write(path: Path, choice: Choice) -> None:
    text = json.dumps({"chosen": choice.chosen, "times": dict(choice.times),
                       "excluded": dict(choice.excluded)}, indent=1, sort_keys=True)
    try:
        write_atomic(path, text)
    except OSError as e:  # an unwritable cache: measured again by the next process
        log.debug("ioaware: implementation choice not written (%s)", e)
