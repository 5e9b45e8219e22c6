"""The kernel cache under stress (issue 14): processes racing on one directory,
damaged entries, an unwritable directory, entries of other versions. Real processes,
real rendered modules, on the CPU (the modules are imported, no kernel runs, except
one interpreted launch from a module kept in memory)."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os

import pytest
import torch

from ioaware.codegen import cache
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.config import config

BASE = AttentionSpec(head_dim=16, head_dim_v=16, dtype="float32", causal=False, scale=0.25)
SHARED = [dataclasses.replace(BASE, scale=0.25 + i / 8) for i in range(3)]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cache_dir", tmp_path)
    monkeypatch.setattr(cache, "_modules", {})
    monkeypatch.setattr(cache, "_warned_unwritable", False)
    return tmp_path


def _compile_specs(args: tuple[str, int]) -> list[str]:
    """In a fresh process: load the shared Specs and one of its own, fwd and bwd."""
    directory, worker = args
    from ioaware.codegen import load_families

    load_families()
    config.cache_dir = directory
    own = dataclasses.replace(BASE, scale=1.0 + worker / 64, causal=bool(worker % 2))
    names = []
    for spec in [*SHARED, own]:
        for kind in ("attention_fwd", "attention_bwd"):
            module = cache.load_kernel_module(kind, spec, cache.INTERPRET_DEVICE)
            names.append(os.path.basename(module.__file__))
    return names


def _entries(directory) -> list:
    return sorted((directory / "kernels").iterdir())


def _all_checked(directory) -> None:
    for path in _entries(directory):
        assert path.suffix == ".py", f"left behind: {path.name}"  # no temp files
        kind = path.name.split("-")[0]
        assert cache.checked(path, cache._versions(kind)) is not None, path.name


def test_eight_processes_leave_only_whole_entries(cache_dir):
    from ioaware.codegen import load_families

    load_families()
    # fork: the children start with torch, triton and ioaware imported (spawn would
    # import them 8 times over); they render and import modules, no torch compute
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        results = pool.map(_compile_specs, [(str(cache_dir), w) for w in range(8)])
    # 3 shared Specs and 8 own ones, each a forward and a backward module
    assert len(_entries(cache_dir)) == 2 * (len(SHARED) + 8)
    _all_checked(cache_dir)
    # every process imported the same files for the shared Specs
    assert len({tuple(r[:2 * len(SHARED)]) for r in results}) == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "no_header"])
def test_damaged_entry_is_detected_and_rebuilt(cache_dir, damage, caplog):
    from ioaware.codegen import load_families

    load_families()
    cache.load_kernel_module("attention_fwd", BASE, cache.INTERPRET_DEVICE)
    (path,) = _entries(cache_dir)
    good = path.read_text()
    bad = {"truncated": good[: len(good) // 2], "flipped": good.replace("tl.", "tl_", 1),
           "empty": "", "no_header": good.partition("\n")[2]}[damage]
    path.write_text(bad)
    cache._modules.clear()
    with caplog.at_level(logging.WARNING, logger="ioaware.cache"):
        module = cache.load_kernel_module("attention_fwd", BASE, cache.INTERPRET_DEVICE)
    assert "damaged" in caplog.text
    assert path.read_text() == good and module.__file__ == str(path)
    assert hasattr(module, "_attn_fwd")


def test_entry_of_another_version_is_never_loaded(cache_dir):
    from ioaware.codegen import load_families

    load_families()
    cache.load_kernel_module("attention_fwd", BASE, cache.INTERPRET_DEVICE)
    (path,) = _entries(cache_dir)
    good = path.read_text()
    body = good.partition("\n")[2]
    versions = cache._versions("attention_fwd")
    for name in ("torch", "triton", "ioaware"):
        other = {**versions, name: versions[name] + ".other"}
        # a whole, self-consistent entry, as another version would write it, at this key
        path.write_text(cache.with_header(body + "\nPLANTED = True\n", other))
        cache._modules.clear()
        module = cache.load_kernel_module("attention_fwd", BASE, cache.INTERPRET_DEVICE)
        assert not hasattr(module, "PLANTED"), name
        assert path.read_text() == good


def test_unwritable_directory_keeps_modules_in_memory_with_one_warning(cache_dir, caplog):
    from ioaware.codegen import load_families

    load_families()
    # a file where the directory should be: no process, root included, can write there
    blocker = cache_dir / "blocker"
    blocker.write_text("")
    config.cache_dir = blocker / "cache"
    with caplog.at_level(logging.WARNING, logger="ioaware.cache"):
        fwd = cache.load_kernel_module("attention_fwd", BASE, cache.INTERPRET_DEVICE)
        other = dataclasses.replace(BASE, causal=True)
        cache.load_kernel_module("attention_fwd", other, cache.INTERPRET_DEVICE)
        bwd = cache.load_kernel_module("attention_bwd", BASE, cache.INTERPRET_DEVICE)
    assert caplog.text.count("not writable") == 1
    # the module kept in memory runs: a forward under the interpreter
    assert fwd.__file__.startswith("<") and bwd.__file__.startswith("<")
    q, k, v = (torch.randn(1, 1, 5, 16) for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(1, 1, 5)
    fwd.forward(q, k, v, out, lse)
    want = torch.softmax(q @ k.mT * BASE.scale, -1) @ v
    assert torch.allclose(out, want, atol=1e-5)


def test_header_records_versions_and_digest():
    text = cache.with_header("x = 1\n", {"torch": "1"})
    head = text.partition("\n")[0]
    assert json.loads(head[len(cache.HEADER) + 1:head.index(" sha256=")]) == {"torch": "1"}
