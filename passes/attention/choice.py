"""Which implementation an attention region runs as: the generated kernel, or an SDPA
backend where one computes exactly the region's semantics and is measured faster.

SDPA computes a region exactly when it is plain attention (no mask, score modification,
extra input or dropout) or causal with Nq == Nk (SDPA's backends align the diagonal
top-left only there), with as many K/V heads as query heads, at static sizes (the
measurement is of one size class, and the graph keeps its choice). Everything else runs
the generated kernels, and `explain` says why. Where the generated kernels cannot run a
region at all (`generated_cannot`: a head dim above 256, shared memory no tile fits),
SDPA's backends are the only candidates, and with none the region stays eager. The
measuring is `codegen/attention/choice.py`'s; this module decides what may be measured
and records the outcome in the match (`AttentionMatch.implementation`), which the
rewrite reads.

Not chosen yet, though SDPA may compute them: bool and additive masks (the efficient and
cuDNN backends' bias needs an aligned copy), GQA through `enable_gqa`, dropout (SDPA's
random stream differs from the kernels'; both are dropout, not the same mask).
"""

from __future__ import annotations

import torch
from torch import fx

from ioaware.codegen.attention import choice as measured
from ioaware.codegen.attention import tiles
from ioaware.hardware import DeviceProfile
from ioaware.passes.attention.record import AttentionMatch, fake_value
from ioaware.passes.attention.rewrite import spec_of
from ioaware.passes.driver import PassContext
from ioaware.spec import dtype_name
from ioaware.tiles import tile_budget

GENERATED = measured.GENERATED


def not_exact(m: AttentionMatch) -> str | None:
    """Why no SDPA backend computes the region exactly, or None when one does."""
    mods, d = m.mods, m.dims
    if m.fp8:
        return (f"FP8 operands ({','.join(m.fp8)}; SDPA's backends take 16-bit q, k, v: "
                "the generated kernels read them)")
    if mods.general:
        parts = [name for name, present in (
            ("a mask", mods.mask is not None), ("a score modification", mods.score_mod is not None),
            ("dropout", mods.dropout_p > 0), ("extra inputs", bool(mods.data.nodes)),
        ) if present] or ["runtime sizes"]
        return f"{' and '.join(parts)} (SDPA candidates are built for none or causal only)"
    if d["Hq"] != d["Hkv"]:
        return "GQA (SDPA candidates with enable_gqa are not built)"
    if mods.causal and d["Nq"] != d["Nk"]:
        return f"causal with Nq={d['Nq']} != Nk={d['Nk']} (SDPA's diagonal differs)"
    if _dynamic(m):
        return "dynamic sizes (implementations are measured per static size)"
    return None


def _dynamic(m: AttentionMatch) -> bool:
    for node in m.region:
        val = fake_value(node)
        if isinstance(val, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in val.shape):
            return True
    return False


def _differentiated(gm: fx.GraphModule) -> bool:
    """Whether the graph's outputs may be differentiated: grad mode is on and an input
    requires grad (capture records the inputs' flags)."""
    return torch.is_grad_enabled() and any(
        n.meta.get("requires_grad", False) for n in gm.graph.nodes if n.op == "placeholder")


def generated_cannot(m: AttentionMatch, profile: DeviceProfile) -> str | None:
    """Why the generated kernels cannot run region `m` on `profile`'s device (a head
    dim or dtype their Spec refuses; shared memory that no forward or backward tile
    fits), or None when they can."""
    try:
        spec_of(m)
    except ValueError as e:
        return str(e)
    d, dv, itemsize = m.dims["D"], m.dims["Dv"], m.dtype.itemsize
    if not all(isinstance(x, int) for x in (d, dv)):
        return None  # symbolic head dims: the kernels check them per call
    for what, candidates in (("forward", tiles.attention_tile_candidates),
                             ("backward dK/dV", tiles.attention_dkdv_tile_candidates),
                             ("backward dQ", tiles.attention_dq_tile_candidates)):
        if not candidates(profile, d, dv, itemsize, limit=1):
            return (f"no {what} tile fits the {tile_budget(profile)} bytes of shared "
                    f"memory on {profile.name} at head_dim={d}, head_dim_v={dv}, "
                    f"{dtype_name(m.dtype)}")
    return None


def decide(gm: fx.GraphModule, m: AttentionMatch, ctx: PassContext,
           without_generated: str | None = None) -> measured.Choice:
    """The implementation region `m` runs as, and what was measured (for explain).
    without_generated: why the generated kernels cannot run it (`generated_cannot`):
    only SDPA's backends are candidates, and GENERATED means none was chosen."""
    reason = not_exact(m)
    if reason is not None:
        return measured.Choice(measured.GENERATED, why=f"SDPA is not exact here: {reason}")
    if ctx.backend_name != "triton":
        return measured.Choice(measured.GENERATED,
                               why=f"not measured: SDPA backends are timed on CUDA, "
                                   f"the kernels run as {ctx.backend_name} here")
    device = fake_value(m.output).device
    if device.type == "meta":  # `ioaware report`/`demo`: nothing here can be timed
        return measured.Choice(measured.GENERATED,
                               why="not measured: the graph is priced on meta tensors")
    d = m.dims
    problem = measured.Problem(
        batch=d["B"], heads=d["Hq"], n_q=d["Nq"], n_k=d["Nk"], head_dim=d["D"],
        head_dim_v=d["Dv"], dtype=dtype_name(m.dtype), causal=m.mods.causal,
        scale=m.scale, grad=_differentiated(gm))
    return measured.choose(problem, device, without_generated=without_generated)
