"""One config object for every knob ioaware has (no scattered environment switches).

Environment variables are read once, at import, into `config`; tests and users change
the attributes directly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


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


config = Config()
