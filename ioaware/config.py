"""One config object for every knob ioaware has (no scattered environment switches).

Environment variables are read here and only here, once, at import, into `config`;
the rest of the package reads `config.<field>`, and tests and users change the
attributes directly.

    IOAWARE_INTERPRET=1       interpret      generated kernels under Triton's interpreter
    IOAWARE_CACHE_DIR=DIR     cache_dir      where compiled kernel sources live
    IOAWARE_DEVICE=NAME       default_device the profile priced against without a GPU
    IOAWARE_PROFILE_DIR=DIR   profile_dir    where `ioaware calibrate` saves profiles
    IOAWARE_FAST_LAUNCH=0     fast_launch    launch through Triton's own path always
    IOAWARE_IMPLEMENTATIONS=generated,cudnn
                              implementations what an attention region may run as
    IOAWARE_OP_ROUTE=custom_op op_route     register the ops as torch.library.custom_op
    IOAWARE_GLUON=0           gluon          keep the Gluon attention kernels out of tuning
    IOAWARE_FP8_ATTENTION=1   fp8_attention  read FP8 q, k, v in the attention kernel
    IOAWARE_SSD_BACKWARD=chunked ssd_backward the SSD backward split parallel over chunks
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def _env_flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _implementations() -> tuple[str, ...]:
    names = os.environ.get("IOAWARE_IMPLEMENTATIONS")
    if not names:
        return ("generated", "cudnn", "flash", "efficient")
    return tuple(n.strip() for n in names.split(",") if n.strip())


def _profile_dir() -> Path:
    override = os.environ.get("IOAWARE_PROFILE_DIR")
    if override:
        return Path(override)
    # The user's config dir, as the XDG base-directory spec names it.
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "ioaware" / "profiles"


@dataclasses.dataclass
class Config:
    # Run generated Triton kernels under Triton's interpreter on the CPU (tests, CI).
    interpret: bool = dataclasses.field(default_factory=lambda: _env_flag("IOAWARE_INTERPRET"))
    # Where compiled kernel sources live; one file per (Spec, versions, device) key.
    cache_dir: Path = dataclasses.field(
        default_factory=lambda: Path(
            os.environ.get("IOAWARE_CACHE_DIR", Path.home() / ".cache" / "ioaware")
        )
    )
    # Device profile the cost model prices against when no GPU is present.
    default_device: str = dataclasses.field(
        default_factory=lambda: os.environ.get("IOAWARE_DEVICE", "h100")
    )
    # Where saved device profiles live (what `ioaware calibrate` measured):
    # $IOAWARE_PROFILE_DIR, else ioaware/profiles under $XDG_CONFIG_HOME (~/.config).
    profile_dir: Path = dataclasses.field(default_factory=_profile_dir)
    # Launch a cached kernel's binary directly once its key is known (codegen/launch.py);
    # IOAWARE_FAST_LAUNCH=0 takes `kernel[grid]` always (to compare, or to rule it out).
    fast_launch: bool = dataclasses.field(
        default_factory=lambda: os.environ.get("IOAWARE_FAST_LAUNCH", "1") != "0"
    )
    # What an attention region that SDPA computes exactly may run as, chosen by measuring
    # them on the device (codegen/attention/choice.py): "generated" (ioaware's kernels)
    # and SDPA's "cudnn", "flash", "efficient" backends. ("generated",) keeps the
    # generated kernels always; a region SDPA cannot compute exactly runs them anyway.
    implementations: tuple[str, ...] = dataclasses.field(default_factory=_implementations)
    # The SSD backward sums dB and dC over the heads of a group by fp32 atomic adds in the
    # kernel (True) instead of per-head partials that torch sums (False: deterministic,
    # but 2·2·Bt·L·H·N·4 bytes of HBM traffic). Off until measured faster on a GPU.
    ssd_bc_atomic: bool = False
    # The SSD backward's shape (codegen/ssd/backward.py): "sequential" (one program per
    # head_dim block and batch·head walks every chunk, carrying dS) or "chunked" (only
    # an elementwise pass over the chunk-boundary dS is sequential; the intra-chunk
    # products run in parallel over chunks). Sequential until a GPU measures the other.
    ssd_backward: str = dataclasses.field(
        default_factory=lambda: os.environ.get("IOAWARE_SSD_BACKWARD", "sequential")
    )
    # How the kernel families' ops are registered with torch (codegen/library.py), read
    # once when they are: "auto" (the lean torch.library route where this torch has it),
    # "library", or "custom_op" (torch.library.custom_op: to compare, or to rule it out).
    op_route: str = dataclasses.field(
        default_factory=lambda: os.environ.get("IOAWARE_OP_ROUTE", "auto")
    )
    # Whether the attention tuning spaces hold the Gluon kernels' configs where they were
    # measured to win (gluon_forward.TUNED, gluon_backward.TUNED) and the device and
    # Triton admit them. Read when a module is rendered (its tuning space is written into
    # it): False keeps the Triton kernels only (a baseline, or to rule the Gluon ones out).
    gluon: bool = dataclasses.field(default_factory=lambda: _env_flag("IOAWARE_GLUON", "1"))
    # Whether an attention region whose q, k, v are dequantized from FP8 just before reads
    # the FP8 tensors in its kernel (passes/attention/fp8.py). Off: the region reads the
    # dequantized 16-bit tensors, which an H200 ran faster (docs/performance.md, sixth
    # session: the FP8 forward 0.82x the 16-bit one dense, 0.92x causal).
    fp8_attention: bool = dataclasses.field(
        default_factory=lambda: _env_flag("IOAWARE_FP8_ATTENTION"))


config = Config()
