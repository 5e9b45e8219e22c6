"""Kernel families and what they share.

A kernel family is a folder `codegen/<family>/`: its op (schema, fake, autograd), its
templates, its torch reference and its price, registered when the folder is imported.
What every family uses sits here: `cache` (rendered modules on disk), `runtime` (where an
op runs), `launch` (cached-binary launches), `expr` (the sympy -> Triton printer),
`render` (the module preamble, primitives and tuner text the templates share).

FAMILIES is the one registration a new family adds (docs/architecture.md, "Adding a
kernel family").
"""

from __future__ import annotations

import importlib

FAMILIES = ("attention", "scan", "decode", "ssd")


def load_families() -> None:
    """Import every family: registers its torch ops, fakes, renderers and prices."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
