"""Compile generated kernels for sm_90 on a machine without a GPU.

The interpreter forgives what compiled Triton rejects (loop-carried shapes, block
conditions, inline PTX), so the CPU tiers also build the compiled kernels for Hopper:
a break shows up in CI, not first on the lent GPU.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


def has_ptx_backend() -> bool:
    """Whether this triton can compile for NVIDIA GPUs (it has the backend, not a GPU)."""
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


def import_compiled(source: str, path: Path) -> ModuleType:
    """Write a rendered kernel module to `path` and import it with the interpreter off,
    so its kernels are JITFunctions that compile (not interpreted ones)."""
    from ioaware.codegen.cache import triton_interpret

    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with triton_interpret(False):
        spec.loader.exec_module(module)
    return module


def compile_sm90(fn: Any, constexprs: dict[str, Any], arg_type: Callable[[str], str],
                 num_warps: int, num_stages: int | None = None,
                 aligned: Callable[[str], bool] = lambda name: False) -> Any:
    """triton.compile `fn` for sm_90: the named constexprs fixed, a constexpr parameter
    left unnamed at its default (as a launch that omits it), every other argument typed
    by arg_type(name) ("*bf16", "i32", ...); num_stages as given, else Triton's default;
    the arguments `aligned` names specialised as divisible by 16 (what a launch with
    aligned tensors and strides gives: what lets loads become 16-byte copies).
    Returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {**{p.name: p.default for p in fn.params
                     if p.is_constexpr and p.has_default}, **constexprs}
    signature = {a: "constexpr" if a in constexprs else arg_type(a) for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constexprs and aligned(a)}
    source = ASTSource(fn=fn, signature=signature, constexprs={
        (fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps,
                                   **({} if num_stages is None else {"num_stages": num_stages})})
