"""TARGET, what the tools take: `path/to/file.py:make` or a bundled example, loaded into
(model, args, kwargs).

`make()` returns (model, args) or (model, args, kwargs); the command line's sizes reach it
as keyword arguments (`make_overrides`), and the device as `make(device=...)` where it
takes one. `ioaware report` loads TARGET on the meta device, `--measure` on CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

# Bundled examples, by name: the repository's examples/, installed as ioaware.examples.
EXAMPLES = {name: f"{name}.py" for name in ("gpt", "llama", "mamba", "hybrid", "sdpa_gqa",
                                            "paged_decode")}
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"  # a wheel install
if not EXAMPLES_DIR.is_dir():  # a source checkout (editable install): the top-level folder
    EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# The names --dtype takes, and the torch dtype each builds the model in.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class TargetError(Exception):
    """TARGET could not be turned into (model, args, kwargs); the message names the cause."""


def resolve_target(target: str) -> tuple[Path, str]:
    """`file.py:fn`, `file.py` (fn = make), `name` or `name:fn` of a bundled example."""
    path_text, colon, function = target.rpartition(":")
    if not colon:
        path_text, function = target, "make"
    if not function.isidentifier():
        raise TargetError(f"TARGET {target!r}: {function!r} is not a function name")
    if path_text in EXAMPLES:
        path = EXAMPLES_DIR / EXAMPLES[path_text]
        if not path.is_file():
            raise TargetError(
                f"TARGET {target!r}: bundled example {path_text!r} expected at {path}, not found"
            )
        return path, function
    path = Path(path_text)
    if not path_text.endswith(".py"):
        raise TargetError(
            f"TARGET {target!r}: expected path/to/file.py:make or a bundled example "
            f"({', '.join(sorted(EXAMPLES))})"
        )
    if not path.is_file():
        raise TargetError(f"TARGET {target!r}: no such file {path}")
    return path, function


def load_target(target: str, overrides: dict[str, Any] | None = None,
                device: str | None = None) -> tuple[Any, tuple, dict]:
    """Import TARGET's file, call its function and check it returned (model, args[, kwargs]).

    overrides: keyword arguments for make() (batch, seq_len, dtype); a make() that does
    not take one the user asked for is a bad TARGET. device: passed as make(device=...)
    only if make() takes it (the report builds on "meta" this way).
    """
    path, function = resolve_target(target)
    spec = importlib.util.spec_from_file_location(f"_ioaware_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TargetError(f"TARGET {target!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered as an importable module, as `import` would: dynamo and pickling look
    # classes up by their __module__.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - whatever the user's file raises, TARGET is bad
        sys.modules.pop(spec.name, None)
        raise TargetError(f"TARGET {target!r}: importing {path} raised {one_line(error)}")
    make = getattr(module, function, None)
    if not callable(make):
        raise TargetError(f"TARGET {target!r}: {path} has no function {function!r}")
    kwargs = _make_arguments(target, make, function, overrides or {}, device)
    try:
        made = make(**kwargs)
    except Exception as error:  # noqa: BLE001 - likewise for the user's make()
        raise TargetError(f"TARGET {target!r}: {function}() raised {one_line(error)}")
    return _check_made(target, function, made)


def _accepts(make: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(make).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _make_arguments(target: str, make: Any, function: str, overrides: dict[str, Any],
                    device: str | None) -> dict[str, Any]:
    for name in overrides:
        if not _accepts(make, name):
            flag = "--" + name.replace("_", "-")
            raise TargetError(
                f"TARGET {target!r}: {flag} needs {function}() to take a {name!r} argument; "
                f"it does not"
            )
    kwargs = dict(overrides)
    if device is not None and _accepts(make, "device"):
        kwargs["device"] = device
    return kwargs


def _check_made(target: str, function: str, made: Any) -> tuple[Any, tuple, dict]:
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise TargetError(
            f"TARGET {target!r}: {function}() returned {type(made).__name__}; expected "
            "(model, args) or (model, args, kwargs)"
        )
    model, args, kwargs = made if len(made) == 3 else (*made, {})
    if not callable(model):
        raise TargetError(f"TARGET {target!r}: the model {type(model).__name__} is not callable")
    if not isinstance(args, (tuple, list)):
        raise TargetError(
            f"TARGET {target!r}: args is {type(args).__name__}; expected a tuple, e.g. (x,)"
        )
    if not isinstance(kwargs, dict):
        raise TargetError(f"TARGET {target!r}: kwargs is {type(kwargs).__name__}; expected dict")
    return model, tuple(args), kwargs


def one_line(error: BaseException) -> str:
    """An exception as one line, `Type: first line of its message`, for a user's error."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def on_device(model: Any, args: tuple, kwargs: dict,
              device: str = "meta") -> tuple[Any, tuple, dict]:
    """The same model and inputs on `device` (on "meta", running them computes nothing)."""
    import torch

    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    return model, tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


def make_overrides(options: argparse.Namespace) -> dict[str, Any]:
    """make()'s keyword arguments from the sizes the command line asked for (--batch,
    --seq-len, --dtype); what was not asked for is left to make()'s defaults."""
    import torch

    overrides: dict[str, Any] = {}
    if options.batch is not None:
        overrides["batch"] = options.batch
    if options.seq_len is not None:
        overrides["seq_len"] = options.seq_len
    if options.dtype is not None:
        overrides["dtype"] = getattr(torch, DTYPES[options.dtype])
    return overrides
