"""When the Gluon forward (gluon_kernel.py) may run, and its launch.

The kernel is written against Triton 3.6's Gluon (the GPU machine's): 3.9 renamed parts
of it (`tma.async_copy_shared_to_global` raises there), so it is gated on the installed
Triton's version as well as on the Spec, the device and the tensors. Whatever the gate
refuses runs today's Triton forward instead, and `unavailable_reason` says why (explain
shows it in the attention rewrite's detail, "gluon_forward").

A config that names the "gluon" variant (forward.VARIANTS) is
    (2·BLOCK_M, BLOCK_N, 8, STAGES, "gluon[+pingpong]")
2·BLOCK_M query rows per program (two consumer warpgroups of BLOCK_M = 64 rows each),
8 consumer warps (plus two loader warps), K and V rings STAGES deep. It is a pinnable
candidate (`candidate_configs`), out of the tuning space until a GPU has measured it.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import triton

from ioaware.config import config as ioaware_config

from ..launch import ensure_scratch_allocator, tma_addressable
from ..launch import launch as launch_binary
from .header import is_plain
from .spec import AttentionSpec

log = logging.getLogger("ioaware.attention")

# Triton (major, minor) versions whose Gluon the kernel compiles with (checked for sm_90
# by tests/unit/test_attention_gluon.py and scripts/gpu_gluon_forward.py).
TRITON_VERSIONS = ((3, 6),)
HEAD_DIMS = (64, 128, 256)
DTYPES = ("float16", "bfloat16")
ROWS_PER_WARPGROUP = 64  # one wgmma M per consumer warpgroup

# Pinnable configs per head dim, best guess first (`smem_bytes`: 145, 193 and 209 KB of
# an H100's 227): d = 64 and 128 take 128-key tiles, d = 256 64-key tiles (its fp32 O
# accumulator is 128 registers a thread).
CANDIDATES: dict[int, list[tuple]] = {
    64: [(128, 128, 8, 3, "gluon+pingpong"), (128, 128, 8, 3, "gluon")],
    128: [(128, 128, 8, 2, "gluon+pingpong"), (128, 128, 8, 2, "gluon")],
    256: [(128, 64, 8, 2, "gluon+pingpong"), (128, 64, 8, 2, "gluon")],
}


# The configs that join the forward's tuning space (`tuned_configs`), per head dim: those
# a GPU measured ahead of the tuned Triton forward. H200, torch 2.11, Triton 3.6,
# B=4 H16 N4096 bf16 (docs/performance.md, sixth session): d = 128 (128, 128, 8, 2,
# "gluon") 613 TFLOP/s dense, 485 causal, against 476 / 403 for the tuned Triton forward
# ("gluon+pingpong" 556 / 487). On an H100 (seventh session) ping-pong won instead, 603
# against 584 dense (cuDNN 623), level causal (510-520), and lost at B1 H16 N16384 causal
# (579 against 596; cuDNN 582): both join, and the tuner picks per device and size class.
# d = 64 lost on both (H100: 383-400 against the Triton forward's 434 dense, 328-332
# against 393 causal); d = 256 is not yet measured. The tuner still times each against
# the Triton configs per size class.
TUNED: dict[int, list[tuple]] = {
    128: [(128, 128, 8, 2, "gluon"), (128, 128, 8, 2, "gluon+pingpong")]}


def smem_bytes(spec: AttentionSpec, config: tuple) -> int:
    """Shared memory of the kernel at `config` (what ptxas reports, to 1 KB): per
    consumer its Q tile (later O) and its P tile, the K and V rings, the mbarriers:
        it·(2·64·d + 2·64·BLOCK_N + STAGES·BLOCK_N·2d) + 8·(4·STAGES + 3).
    All of it is the kernel's own (Gluon adds no layout-conversion scratch), so it is
    held to the device's per-block limit, not to the Triton tiles' budget."""
    _, block_n, _, stages = config[:4]
    d, it = spec.head_dim, spec.torch_dtype.itemsize
    rows = ROWS_PER_WARPGROUP
    return it * (2 * rows * d + 2 * rows * block_n + stages * block_n * 2 * d) + 8 * (
        4 * stages + 3)


def is_gluon(config: tuple) -> bool:
    """Whether a forward config names the Gluon kernel."""
    return len(config) > 4 and "gluon" in config[4].split("+")


def triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


@functools.cache
def _gluon_importable() -> str | None:
    try:
        from triton.experimental.gluon.language.nvidia import hopper  # noqa: F401
    except ImportError as error:
        return f"Gluon is not importable ({error})"
    return None


def spec_reason(spec: AttentionSpec, head_dims: tuple[int, ...] = HEAD_DIMS) -> str | None:
    """Why the Gluon forward (or, with its `head_dims`, the Gluon dK/dV kernel) cannot
    serve `spec` (None: it can, Spec-wise)."""
    if not is_plain(spec):
        return "only dense and causal attention (no mask, score mod, inputs or dropout)"
    if spec.fp8:
        return f"FP8 operands ({spec.fp8}): the Gluon kernel reads 16-bit q, k, v"
    if spec.dtype not in DTYPES:
        return f"dtype {spec.dtype} (needs one of {DTYPES})"
    if spec.head_dim != spec.head_dim_v or spec.head_dim not in head_dims:
        return (f"head dims {spec.head_dim}/{spec.head_dim_v} (needs d = dv in "
                f"{head_dims})")
    return None


def unavailable_reason(spec: AttentionSpec, device: torch.device | None = None
                       ) -> str | None:
    """Why the Gluon forward cannot run `spec` here (None: it can): the Spec, the
    installed Triton, then the device (sm_90 only: the kernel is Hopper wgmma and TMA)."""
    return spec_reason(spec) or environment_reason(device)


def environment_reason(device: torch.device | None) -> str | None:
    """Why the Gluon forward cannot run on `device` with the installed Triton."""
    version = triton_version()
    if version not in TRITON_VERSIONS:
        wanted = " or ".join(f"{a}.{b}" for a, b in TRITON_VERSIONS)
        return f"triton {triton.__version__} (the Gluon kernel is written for {wanted})"
    reason = _gluon_importable()
    if reason:
        return reason
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability(device) != (9, 0):
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor} (the Gluon kernel is for sm_90)"
    return None


def tensors_reason(q, k, v, out) -> str | None:
    """Why the call's tensors cannot go through TMA descriptors (None: they can)."""
    if not tma_addressable(q, k, v, out):
        return ("a tensor a TMA descriptor cannot address (head dim stride 1, 16-byte "
                "aligned base and strides)")
    return None


def call_reason(q, k, v, out) -> str | None:
    """Why this call cannot take the Gluon forward (None: it can): the environment of
    q's device, then the tensors. Cached per device: a launch asks every call."""
    return _environment_reason_cached(q.device) or tensors_reason(q, k, v, out)


@functools.cache
def _environment_reason_cached(device: torch.device) -> str | None:
    return environment_reason(device)


def present_environment_reason() -> str | None:
    """`environment_reason` of the present CUDA device (the one modules are rendered
    for), or why there is none."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _environment_reason_cached(torch.device("cuda", torch.cuda.current_device()))


def tuned_configs(spec: AttentionSpec, tuned: dict[int, list[tuple]] | None = None
                  ) -> list[tuple]:
    """`tuned[d]` (this module's `TUNED` for None) where the Spec, the installed Triton
    and the present device admit the Gluon kernel and `config.gluon` is on, else none:
    the Gluon configs a rendered module's tuning space holds."""
    if not ioaware_config.gluon or spec_reason(spec) or present_environment_reason():
        return []
    return list((TUNED if tuned is None else tuned).get(spec.head_dim, ()))


_noted: set[str] = set()


def note_fallback(reason: str) -> None:
    """Log, once per reason, that a pinned Gluon config ran today's Triton forward."""
    if reason not in _noted:
        _noted.add(reason)
        log.warning("a pinned Gluon forward config runs the Triton forward instead: %s",
                    reason)


def candidate_configs(spec: AttentionSpec) -> list[tuple]:
    """The Gluon configs a GPU run may pin for `spec` (none where the Spec is refused)."""
    return [] if spec_reason(spec) else list(CANDIDATES[spec.head_dim])


def compile_sm90(config: tuple, head_dim: int, causal: bool, dtype: str = "bfloat16"):
    """The kernel at `config` built for sm_90 without a GPU (Triton ships ptxas): the
    CompiledKernel, its "ptx" and "sass" in `.asm`. For the build test and the SASS
    counts of scripts/attention_templates_sm90.py --gluon."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from .gluon_kernel import attention_fwd_ws

    fn = attention_fwd_ws
    rows, block_n, _, stages, variant = config
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": rows // 2, "BLOCK_N": block_n,
                  "STAGES": stages, "CAUSAL": causal,
                  "PINGPONG": "pingpong" in variant.split("+")}
    element = {"bfloat16": "*bf16", "float16": "*fp16"}[dtype]
    types = {"Q": element, "K": element, "V": element, "Out": element, "Lse": "*fp32",
             "qk_scale": "fp32"}
    signature = {a: "constexpr" if a in constexprs else types.get(a, "i32")
                 for a in fn.arg_names}
    source = GluonASTSource(fn=fn, signature=signature, constexprs={
        (fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def launch(config: tuple, q, k, v, out, lse, scale: float, causal: bool) -> None:
    """Run the Gluon forward at `config` (see the module docstring): q [B,Hq,Nq,d],
    k, v [B,Hkv,Nk,d], out [B,Hq,Nq,d], lse [B,Hq,Nq] fp32 contiguous. The caller has
    checked `unavailable_reason` and `tensors_reason`."""
    from .gluon_kernel import attention_fwd_ws  # Gluon: imported only past the gate

    rows, block_n, _, stages = config[:4]
    block_m = rows // 2
    assert block_m == ROWS_PER_WARPGROUP, f"{config=}: 2·BLOCK_M must be 128"
    ensure_scratch_allocator()  # the in-kernel TMA descriptors live in global scratch
    batch, h_q, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    # through the cached binary, as every launch of the family: the op's launch plan
    # (codegen/plan.py) records and replays only launches made there
    launch_binary(
        attention_fwd_ws, (-(-n_q // rows), batch * h_q),
        q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *out.stride()[:3], h_q, h_q // h_kv, n_q, n_k, scale * math.log2(math.e),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, CAUSAL=causal,
        PINGPONG="pingpong" in config[4].split("+"), num_warps=4)
