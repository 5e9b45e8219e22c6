"""On-disk cache of rendered kernel modules, keyed by Spec, versions and device.

A kernel module is the Python text a renderer returns for a Spec. It is written once
to `config.cache_dir/<kind>-<key>.py` and imported from there with importlib (Triton
reads a kernel's source back through `inspect`, so it must live in a real file). The
key hashes everything that can change the text or what Triton makes of it:

    kind, spec.key(), ioaware / torch / triton versions, the kind's template sources,
    the device ("NVIDIA H100 80GB HBM3 sm90", or "interpret") and the device profile
    the module's configs are sized for (its shared memory decides which tiles fit).

Writes are atomic (temp file in the same directory, then `os.replace`), so a process
that finds the file finds all of it, however many processes race to create it. Each
file starts with a header line naming the versions it was rendered under and the
sha256 of the text below it; an entry whose header does not check out (truncated or
corrupted on disk, or written by another torch / triton / ioaware) is never imported:
it is rendered again and replaced. A cache directory that cannot be written leaves
the modules in memory (imported from their text, registered with `linecache` so that
Triton and `inspect` read their source back), with one warning per process.

Interpreted kernels: Triton decides at `@triton.jit` decoration time whether a
function is compiled or interpreted (`triton.knobs.runtime.interpret`, which reads the
env var `TRITON_INTERPRET` unless set explicitly; triton 3.6 and 3.9 alike). The
module is imported with both set, and both restored afterwards, so interpreted and
compiled kernels coexist in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import linecache
import logging
import operator
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch
import triton

from ioaware import hardware
from ioaware.config import config
from ioaware.hardware import DeviceProfile
from ioaware.version import __version__

INTERPRET_DEVICE = "interpret"
HEADER = "# ioaware kernel module"
log = logging.getLogger("ioaware.cache")


class Spec(Protocol):
    """What the cache needs of a kernel family's Spec: a stable hash of its fields."""

    def key(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Renderer:
    """How one kind of kernel module is made: `render(spec, interpret=..., profile=...)`
    returns its source, its configs sized for the DeviceProfile `profile`; `sources` are
    the modules whose text decides that source (the templates and what they print
    through), hashed into the cache key so that editing one invalidates the entries it
    made."""

    render: Callable[..., str]
    sources: tuple[ModuleType, ...]

    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for mod in self.sources:
            h.update(Path(mod.__file__).read_bytes())
        return h.hexdigest()[:16]


# kind ("attention_fwd", "scan_bwd", ...) -> its Renderer; each kernel family registers
# its own kinds when its op module is imported (see register_renderer).
RENDERERS: dict[str, Renderer] = {}

# Keyed by cache_key and by (kind, spec, device), the per-call lookup.
_modules: dict[object, ModuleType] = {}
# Guards the in-process dict and the process-global interpret switch during imports.
_lock = threading.RLock()


def register_renderer(kind: str, render: Callable[..., str], *sources: ModuleType) -> None:
    """Make `load_kernel_module(kind, ...)` render with `render`. `sources`: the modules
    whose text the rendered source depends on (render's own module is always one)."""
    own = sys.modules[render.__module__]
    RENDERERS[kind] = Renderer(render, (own, *(m for m in sources if m is not own)))


def device_tag(device: torch.device | str | None) -> str:
    """What the compiled code depends on: GPU name and capability, or "interpret"."""
    if device is None or device == INTERPRET_DEVICE:
        return INTERPRET_DEVICE
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRET_DEVICE
    return _cuda_tag(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_tag(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm{major}{minor}"


def _versions(kind: str) -> dict[str, str]:
    return {"ioaware": __version__, "torch": torch.__version__, "triton": triton.__version__,
            "renderer": RENDERERS[kind].digest}


# The config switches a renderer reads: a module rendered under other values is another
# module, on disk and in this process. config.gluon decides whether the attention tuning
# spaces hold the Gluon configs; without it in the key, a script that turned it off for a
# baseline left Gluon-free modules (and their tuned configs) on disk for every later run.
RENDER_OPTIONS = ("gluon",)
# Their values now, for the in-process memo (a hashable: one value, or a tuple of
# several): a C-level getter, since every op call that is not a plan replay looks its
# module up by them (`cached_module`).
_option_values = operator.attrgetter(*RENDER_OPTIONS)


def render_options() -> dict:
    """`RENDER_OPTIONS` and their values now (the disk key's part)."""
    return {name: getattr(config, name) for name in RENDER_OPTIONS}


def cache_key(
    kind: str,
    spec: Spec,
    device: str,
    *,
    versions: dict[str, str] | None = None,
    profile: DeviceProfile | None = None,
) -> str:
    """Hex key of one kernel module: sha256 over kind, spec.key(), versions, device, the
    config switches renderers read (`RENDER_OPTIONS`) and the profile rendered for (its
    fields: a recalibrated profile is another module)."""
    if versions is None:
        versions = _versions(kind)
    fields = {"kind": kind, "spec": spec.key(), "device": device, "versions": versions,
              "options": render_options()}
    if profile is not None:
        fields["profile"] = profile.to_json()
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one filesystem
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def triton_interpret(enabled: bool) -> Iterator[None]:
    """Make `@triton.jit` produce interpreter functions (or not) inside the block."""
    knobs = getattr(triton, "knobs", None)
    runtime = getattr(knobs, "runtime", None)
    had_env = "TRITON_INTERPRET" in os.environ
    old_env = os.environ.get("TRITON_INTERPRET")
    # A value set explicitly on the knob lives in the instance dict; absent means
    # "read the env var", which is what we restore to.
    had_knob = runtime is not None and "interpret" in vars(runtime)
    old_knob = vars(runtime).get("interpret") if runtime is not None else None
    try:
        os.environ["TRITON_INTERPRET"] = "1" if enabled else "0"
        if runtime is not None:
            runtime.interpret = enabled
        yield
    finally:
        if runtime is not None:
            if had_knob:
                runtime.interpret = old_knob
            else:
                with contextlib.suppress(AttributeError, KeyError):
                    del runtime.interpret
        # Setting the knob may have written the env var; restore it last.
        if had_env:
            os.environ["TRITON_INTERPRET"] = old_env  # type: ignore[assignment]
        else:
            os.environ.pop("TRITON_INTERPRET", None)


def _import_file(name: str, path: Path, interpret: bool) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    # Registered before execution: Triton and inspect look modules up by name.
    sys.modules[name] = module
    try:
        with triton_interpret(interpret):
            module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_text(name: str, text: str, interpret: bool) -> ModuleType:
    """A module from `text` with no file: its lines go to `linecache` under a name no
    file has, where `inspect` (and so Triton) reads a function's source back."""
    filename = f"<{name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    try:
        with triton_interpret(interpret):
            exec(compile(text, filename, "exec"), module.__dict__)  # noqa: S102
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def with_header(text: str, versions: dict[str, str]) -> str:
    """`text` under the header line that `checked` verifies."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{HEADER} {json.dumps(versions, sort_keys=True)} sha256={digest}\n{text}"


def checked(path: Path, versions: dict[str, str]) -> str | None:
    """The text of a cache entry if it is whole and was written under `versions`, else
    None (missing, truncated, corrupted, or another version's)."""
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    head, sep, body = data.partition("\n")
    want = f"{HEADER} {json.dumps(versions, sort_keys=True)} sha256="
    if not sep or not head.startswith(want):
        return None
    if head[len(want):] != hashlib.sha256(body.encode()).hexdigest():
        return None
    return data


_warned_unwritable = False


def _store(path: Path, text: str) -> bool:
    """Write an entry atomically; False (one warning per process) when the cache
    directory cannot be written."""
    global _warned_unwritable
    try:
        write_atomic(path, text)
        return True
    except OSError as e:
        if not _warned_unwritable:
            _warned_unwritable = True
            log.warning("ioaware: kernel cache %s is not writable (%s); kernels stay in "
                        "memory for this process", path.parent, e)
        return False


def kernel_path(kind: str, key: str) -> Path:
    return Path(config.cache_dir) / "kernels" / f"{kind}-{key}.py"


def cached_module(kind: str, spec: Spec, device: str) -> ModuleType | None:
    """The module `load_kernel_module` returned for (kind, spec, device) in this process
    (under today's `render_options`), or None: the per-call lookup, with nothing to
    render or hash."""
    with _lock:
        return _modules.get((kind, spec, device, _option_values(config)))


def load_kernel_module(kind: str, spec: Spec, device: str,
                       profile: DeviceProfile | None = None) -> ModuleType:
    """The module of kernels `kind` for `spec` on `device` (a `device_tag`), its configs
    sized for `profile` (the present device's for None; the ops pass the profile of
    the device their tensors live on, `runtime.kernel_module`).

    Looked up in-process, then on disk; rendered and written atomically if absent.
    """
    # Called on every op call: this entry (`cached_module`'s key) skips hashing the spec.
    memo = (kind, spec, device, _option_values(config))
    with _lock:
        module = _modules.get(memo)
        if module is not None:
            return module
        profile = hardware.get_profile(profile)
        key = cache_key(kind, spec, device, profile=profile)
        module = _modules.get(key)
        if module is None:
            interpret = device == INTERPRET_DEVICE
            path = kernel_path(kind, key)
            versions = _versions(kind)
            name = f"ioaware_kernels_{kind}_{key}"
            if checked(path, versions) is not None:
                module = _import_file(name, path, interpret)
            else:  # absent, or not to be trusted: rendered again (and replaced)
                if path.exists():
                    log.warning("ioaware: kernel cache entry %s is damaged or from another "
                                "version; rebuilding it", path.name)
                text = with_header(
                    RENDERERS[kind].render(spec, interpret=interpret, profile=profile),
                    versions)
                if _store(path, text) and checked(path, versions) == text:
                    module = _import_file(name, path, interpret)
                else:  # unwritable, or replaced meanwhile by a damaged copy: from memory
                    module = _import_text(name, text, interpret)
            _modules[key] = module
        _modules[memo] = module
        return module
