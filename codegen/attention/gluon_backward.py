"""When the Gluon dK/dV kernel (gluon_bwd_kernel.py) may run, and its launch.

The kernel is FlashAttention-3's backward schedule for the dK/dV half of the backward;
dQ stays the Triton dQ kernel. Like the Gluon forward it is written against Triton
3.6's Gluon, so its gate shares gluon_forward's environment checks (version, Gluon
importable, sm_90) and adds its own Spec rule (no d = 256: see HEAD_DIMS). Whatever the
gate refuses runs the backward module's default dK/dV config instead, logged once with
the reason; explain shows it beside the forward's ("gluon_backward").

A dK/dV config that names the "gluon" variant (a backward.Config) is
    (BLOCK_M, 2·BLOCK_N, 8, STAGES, "gluon")
BLOCK_M query rows a step, 2·BLOCK_N kv rows a program (two consumer warpgroups of
BLOCK_N = 64 kv rows each), 8 consumer warps (plus one loader warp), the Q/dO ring
STAGES deep: the order of `_bwd_dkdv`'s (BLOCK_M, BLOCK_N, warps, stages) tuple. Its
configs are pinnable (`CANDIDATES`, `backward.gluon_candidate_configs`); those a GPU
measured ahead join the tuning space (`TUNED`).

    (BLOCK_M, 2·BLOCK_N, 8, STAGES, "gluon+atomic")
names the fused-dQ kernel (gluon_bwd_dq_kernel.py): the same program, plus dQ by TMA
reduce-adds into an fp32 accumulator (the one-kernel backward; `is_fused`). Like the
Triton "atomic" configs, the backward module runs it as zero, kernel, `_bwd_dq_convert`
(no dQ pass), and `backward.is_atomic` keeps it out of a tuning space under
torch.use_deterministic_algorithms (reduce-adds land in any order). Its configs are
`FUSED_CANDIDATES` (pinnable: `backward.gluon_fused_candidate_configs`); the measured
winners are in `TUNED`.
"""

from __future__ import annotations

import logging
import math

import torch
import triton

from ..launch import ensure_scratch_allocator, tma_addressable
from ..launch import launch as launch_binary
from . import gluon_forward
from .spec import AttentionSpec

log = logging.getLogger("ioaware.attention")

TRITON_VERSIONS = gluon_forward.TRITON_VERSIONS
# d = 256 does not fit the one-warpgroup-per-64-kv-rows split: dK and dV of 64 × 256
# fp32 are 256 registers a thread before Sᵀ and dPᵀ (docs/kernels.md, "The Gluon dK/dV
# kernel", says what would: FA3's split of the head dim between the warpgroups).
HEAD_DIMS = (64, 128)
DTYPES = gluon_forward.DTYPES
KV_ROWS_PER_WARPGROUP = 64  # one wgmma M per consumer warpgroup

# Pinnable configs per head dim, best guess first (`smem_bytes`: 82 / 115 KB at d = 64,
# 129 / 162 KB at d = 128, of an H100's 227).
CANDIDATES: dict[int, list[tuple]] = {
    64: [(64, 128, 8, 3, "gluon"), (64, 128, 8, 5, "gluon")],
    128: [(64, 128, 8, 2, "gluon"), (64, 128, 8, 3, "gluon")],
}


# The fused-dQ kernel's pinnable configs per head dim (`smem_bytes`: 130 KB at d = 64,
# 193 KB at d = 128; three stages at d = 128 would be 226 KB, at the 227 KB limit).
FUSED_CANDIDATES: dict[int, list[tuple]] = {
    64: [(64, 128, 8, 3, "gluon+atomic"), (64, 128, 8, 2, "gluon+atomic")],
    128: [(64, 128, 8, 2, "gluon+atomic")],
}


# The configs that join the dK/dV tuning space (`tuned_configs`), per head dim: those a
# GPU measured ahead of the tuned Triton dK/dV. H200, torch 2.11, Triton 3.6, B=4 N4096
# bf16 (docs/performance.md, sixth session), dK/dV kernel alone: d = 128, H16, 1.71 ms
# dense against 2.13 (causal 1.37 against 1.26: the tuner keeps Triton there); d = 64,
# H32, 2.27 against 3.29 dense, 1.47 against 1.77 causal. The fused-dQ configs, timed
# as whole backwards (zero, kernel, convert) on an H100 (seventh session), beat the
# two-kernel Gluon backward at all four shapes: d = 128 2.71 ms against 3.10 dense (cuDNN
# 2.70), 1.71 against 2.14 causal (cuDNN 1.51); d = 64 3.46 against 4.02 dense (cuDNN
# 3.15), 2.02 against 2.45 causal (cuDNN 1.80). They add dQ by atomics, so
# torch.use_deterministic_algorithms drops them from the space (`backward.is_atomic`).
TUNED: dict[int, list[tuple]] = {
    64: [(64, 128, 8, 3, "gluon"), (64, 128, 8, 2, "gluon+atomic")],
    128: [(64, 128, 8, 3, "gluon"), (64, 128, 8, 2, "gluon+atomic")]}


def tuned_configs(spec: AttentionSpec) -> list[tuple]:
    """This kernel's `TUNED` configs for `spec` where the Spec, the installed Triton and
    the present device admit it and `config.gluon` is on (`gluon_forward.tuned_configs`)."""
    return [] if spec_reason(spec) else gluon_forward.tuned_configs(spec, TUNED)


def smem_bytes(spec: AttentionSpec, config: tuple) -> int:
    """Shared memory of the kernel at `config` (what ptxas reports, to 1 KB): K and V
    of both warpgroups (later dK, dV), the Q and dO ring, the lse and delta ring, the
    mbarriers:
        it·(2·2·64·d + STAGES·2·BLOCK_M·d) + STAGES·2·BLOCK_M·4 + 8·(2·STAGES + 1).
    A fused-dQ config (`is_fused`) adds the double-buffered dSᵀ tiles of both
    warpgroups, their dQ staging tiles and two mbarriers:
        + it·2·2·64·BLOCK_M + 2·BLOCK_M·(d/2)·4 + 8·2."""
    block_m, _, _, stages = config[:4]
    d, it = spec.head_dim, spec.torch_dtype.itemsize
    rows = KV_ROWS_PER_WARPGROUP
    two_kernel = (it * (2 * 2 * rows * d + stages * 2 * block_m * d)
                  + stages * 2 * block_m * 4 + 8 * (2 * stages + 1))
    if not is_fused(config):
        return two_kernel
    return two_kernel + it * 2 * 2 * rows * block_m + 2 * block_m * (d // 2) * 4 + 8 * 2


# Whether a dK/dV config names the Gluon kernel: the forward's test of the variant string.
is_gluon = gluon_forward.is_gluon


def is_fused(config: tuple) -> bool:
    """Whether a dK/dV config names the fused-dQ Gluon kernel ("gluon+atomic"): dQ by
    TMA reduce-adds inside the dK/dV kernel, no dQ pass."""
    return is_gluon(config) and "atomic" in config[4].split("+")


def spec_reason(spec: AttentionSpec) -> str | None:
    """Why the Gluon dK/dV kernel cannot serve `spec` (None: it can, Spec-wise): the
    forward's rules at this kernel's head dims."""
    return gluon_forward.spec_reason(spec, HEAD_DIMS)


def unavailable_reason(spec: AttentionSpec, device: torch.device | None = None
                       ) -> str | None:
    """Why the Gluon dK/dV kernel cannot run `spec` here (None: it can): the Spec, then
    the installed Triton and the device (gluon_forward's checks: the same Gluon)."""
    return spec_reason(spec) or gluon_forward.environment_reason(device)


def tensors_reason(*tensors) -> str | None:
    """Why the call's tensors cannot go through TMA descriptors (None: they can). The
    lse and delta rows are read by cp.async, 4 bytes at a time: no rule for them."""
    if not tma_addressable(*tensors):
        return ("a tensor a TMA descriptor cannot address (head dim stride 1, 16-byte "
                "aligned base and strides)")
    return None


def call_reason(q, k, v, do, dk, dv) -> str | None:
    """Why this call cannot take the Gluon dK/dV kernel (None: it can): the environment
    of q's device (cached per device), then the tensors."""
    return (gluon_forward._environment_reason_cached(q.device)
            or tensors_reason(q, k, v, do, dk, dv))


_noted: set[str] = set()


def note_fallback(reason: str) -> None:
    """Log, once per reason, that a pinned Gluon dK/dV config ran the Triton one."""
    if reason not in _noted:
        _noted.add(reason)
        log.warning("a pinned Gluon dK/dV config runs the Triton dK/dV kernel instead: %s",
                    reason)


def candidate_configs(spec: AttentionSpec) -> list[tuple]:
    """The Gluon configs a GPU run may pin for `spec` (none where the Spec is refused)."""
    return [] if spec_reason(spec) else list(CANDIDATES[spec.head_dim])


def fused_candidate_configs(spec: AttentionSpec) -> list[tuple]:
    """The fused-dQ configs a GPU run may pin for `spec` (none where the Spec is
    refused): apart from `candidate_configs`, so the two-kernel Gluon's checks and
    tests stay as they were."""
    return [] if spec_reason(spec) else list(FUSED_CANDIDATES[spec.head_dim])


def _constexprs(config: tuple, head_dim: int, causal: bool) -> dict:
    block_m, kv_rows, _, stages = config[:4]
    assert kv_rows == 2 * KV_ROWS_PER_WARPGROUP, f"{config=}: 2·BLOCK_N must be 128"
    return {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": kv_rows // 2,
            "STAGES": stages, "CAUSAL": causal}


def _kernel(config: tuple):
    """The Gluon kernel a config names (imported only past the gate: Gluon 3.6)."""
    if is_fused(config):
        from .gluon_bwd_dq_kernel import attention_bwd_fused_ws
        return attention_bwd_fused_ws
    from .gluon_bwd_kernel import attention_bwd_dkdv_ws
    return attention_bwd_dkdv_ws


def compile_sm90(config: tuple, head_dim: int, causal: bool, dtype: str = "bfloat16"):
    """The kernel at `config` built for sm_90 without a GPU (Triton ships ptxas): the
    CompiledKernel, its "ptx" and "sass" in `.asm`. For the build test and the SASS
    counts of scripts/attention_templates_sm90.py --gluon. A fused-dQ config builds
    gluon_bwd_dq_kernel's kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = _kernel(config)
    constexprs = _constexprs(config, head_dim, causal)
    element = {"bfloat16": "*bf16", "float16": "*fp16"}[dtype]
    types = {"Lse": "*fp32", "Delta": "*fp32", "DqAcc": "*fp32", "qk_scale": "fp32",
             "scale": "fp32",
             **{name: element for name in ("Q", "K", "V", "dO", "dK", "dV")}}
    signature = {a: "constexpr" if a in constexprs else types.get(a, "i32")
                 for a in fn.arg_names}
    source = GluonASTSource(fn=fn, signature=signature, constexprs={
        (fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def launch(config: tuple, q, k, v, do, dk, dv, lse, delta, scale: float, causal: bool,
           dq_acc=None) -> None:
    """Run the Gluon dK/dV kernel at `config` (see the module docstring): q, do
    [B,Hq,Nq,d], k, v, dk, dv [B,Hkv,Nk,d], lse and delta [B·Hq, Nq] fp32 contiguous.
    Writes dk (times `scale`) and dv whole; a fused-dQ config also adds dS K (unscaled)
    into `dq_acc`, [B·Hq, Nq, d] fp32 contiguous and zeroed. The caller has checked
    `call_reason`."""
    kernel = _kernel(config)  # Gluon: imported only past the gate
    fused = is_fused(config)
    assert fused == (dq_acc is not None), f"{config=}: dq_acc is for a fused config"
    constexprs = _constexprs(config, q.shape[-1], causal)
    ensure_scratch_allocator()  # the in-kernel TMA descriptors live in global scratch
    batch, h_q, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    kv_rows = config[1]
    # through the cached binary, as every launch of the family: the op's launch plan
    # (codegen/plan.py) records and replays only launches made there
    launch_binary(
        kernel, (-(-n_k // kv_rows), batch * h_kv),
        q, k, v, do, dk, dv, lse, delta, *((dq_acc,) if fused else ()),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], h_q, h_kv, h_q // h_kv, n_q,
        n_k, scale * math.log2(math.e), scale, **constexprs, num_warps=4)
