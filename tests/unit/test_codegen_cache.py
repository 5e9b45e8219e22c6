"""The kernel cache and the renderers: keys, atomic writes, valid source. No kernel runs."""

from __future__ import annotations

import ast
import dataclasses
import multiprocessing
import os
import threading

import pytest
import triton

from ioaware.codegen import cache
from ioaware.codegen.attention import backward as attention_bwd
from ioaware.codegen.attention import forward as attention_fwd
from ioaware.codegen.attention.header import MAX_TUNE_CONFIGS
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.attention.tiles import padded_head_dim
from ioaware.config import config

SPEC = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True, scale=0.125)
VERSIONS = {"ioaware": "0.1.0", "torch": "2.13.0", "triton": "3.9.0", "renderers": "abc"}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cache_dir", tmp_path)
    monkeypatch.setattr(cache, "_modules", {})
    return tmp_path


def test_key_changes_with_every_spec_field():
    base = cache.cache_key("attention_fwd", SPEC, "interpret", versions=VERSIONS)
    variants = [
        dataclasses.replace(SPEC, head_dim=80),
        dataclasses.replace(SPEC, head_dim_v=32),
        dataclasses.replace(SPEC, dtype="float16"),
        dataclasses.replace(SPEC, causal=False),
        dataclasses.replace(SPEC, scale=0.126),
    ]
    keys = {cache.cache_key("attention_fwd", s, "interpret", versions=VERSIONS) for s in variants}
    assert base not in keys and len(keys) == len(variants)
    assert base == cache.cache_key("attention_fwd", SPEC, "interpret", versions=dict(VERSIONS))


def test_key_changes_with_versions_device_and_kind():
    base = cache.cache_key("attention_fwd", SPEC, "interpret", versions=VERSIONS)
    for name, version in VERSIONS.items():
        bumped = {**VERSIONS, name: version + ".1"}
        assert cache.cache_key("attention_fwd", SPEC, "interpret", versions=bumped) != base
    assert cache.cache_key("attention_fwd", SPEC, "NVIDIA H100 sm90", versions=VERSIONS) != base
    assert cache.cache_key("attention_bwd", SPEC, "interpret", versions=VERSIONS) != base
    # The live key covers the installed versions.
    assert cache.cache_key("attention_fwd", SPEC, "interpret") != base


def test_device_tag_without_gpu():
    assert cache.device_tag(None) == "interpret"
    assert cache.device_tag("cpu") == "interpret"


@pytest.mark.parametrize("render", [attention_fwd.render_forward, attention_bwd.render_backward])
def test_rendered_source_is_python_and_differs_by_spec(render):
    sources = {}
    for causal in (False, True):
        for interpret in (False, True):
            src = render(dataclasses.replace(SPEC, causal=causal), interpret=interpret)
            ast.parse(src)
            compile(src, "<rendered>", "exec")
            assert all(len(line) <= 100 for line in src.splitlines())
            sources[causal, interpret] = src
    assert len(set(sources.values())) == 4
    assert "CAUSAL = tl.constexpr(True)" in sources[True, False]
    assert "CAUSAL = tl.constexpr(False)" in sources[False, False]
    # The Spec's scale is baked in exactly (repr round-trips).
    assert repr(SPEC.scale) in sources[True, False]


def test_rendered_docstring_prints_text_enums_as_their_text():
    # MaskSemantics is a TextEnum: the Spec a module documents reads as it did when the
    # field was a plain string, so the rendered text (and Triton's binary) is unchanged.
    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=False,
                         scale=0.125, mask="kv_idx <= q_idx", mask_semantics="fill",
                         mask_fill=-1e4)
    assert repr(spec.mask_semantics) == "'fill'"
    for render in (attention_fwd.render_forward, attention_bwd.render_backward):
        assert "    mask_semantics='fill',\n" in render(spec, interpret=True)


def test_padded_head_dims():
    assert [padded_head_dim(d) for d in (1, 16, 17, 40, 64, 80, 128, 129, 256)] == [
        16, 16, 32, 64, 64, 128, 128, 256, 256]


def test_write_atomic_readers_never_see_partial_text(tmp_path):
    """Writers race on one path; a reader only ever sees a whole version or no file."""
    path = tmp_path / "kernels" / "entry.py"
    versions = [(f"# version {i}\n" + f"x = {i}\n" * 20000) for i in range(4)]
    stop = threading.Event()
    seen, bad = set(), []

    def writer(text: str) -> None:
        for _ in range(25):
            cache.write_atomic(path, text)

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            (seen.add if text in versions else bad.append)(text[:40])

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not bad and seen
    assert path.read_text() in versions
    assert [p.name for p in path.parent.iterdir()] == ["entry.py"]  # no temp files left


def _write_from_process(args: tuple[str, str]) -> None:
    cache.write_atomic(__import__("pathlib").Path(args[0]), args[1])


def test_write_atomic_across_processes(tmp_path):
    path = tmp_path / "entry.py"
    texts = [f"y = {i}\n" * 50000 for i in range(4)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_write_from_process, [(str(path), t) for t in texts * 3])
    assert path.read_text() in texts
    assert os.listdir(tmp_path) == ["entry.py"]


def test_load_module_is_cached_on_disk_and_in_process(cache_dir):
    first = cache.load_kernel_module("attention_fwd", SPEC, "interpret")
    files = list((cache_dir / "kernels").iterdir())
    assert len(files) == 1 and files[0].suffix == ".py"
    assert cache.load_kernel_module("attention_fwd", SPEC, "interpret") is first
    # A new process (empty in-process dict) imports the file written before.
    cache._modules.clear()
    again = cache.load_kernel_module("attention_fwd", SPEC, "interpret")
    assert again is not first and again.__file__ == str(files[0])


def test_interpreted_and_compiled_kernels_coexist(cache_dir, monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    interpreted = cache.load_kernel_module("attention_fwd", SPEC, "interpret")
    compiled = cache.load_kernel_module("attention_fwd", SPEC, "NVIDIA H100 80GB HBM3 sm90")
    assert isinstance(interpreted._attn_fwd, InterpretedFunction)
    assert isinstance(compiled._attn_fwd, JITFunction)
    assert compiled.TUNE_CONFIGS and not interpreted.TUNE_CONFIGS  # no tuning interpreted
    assert not hasattr(compiled, "_attn_fwd_tuned")  # tuned by choose_config, not triton.autotune
    # The switch is restored: env var absent again, knob back to reading the env.
    assert "TRITON_INTERPRET" not in os.environ
    assert not triton.knobs.runtime.interpret
    assert "interpret" not in vars(triton.knobs.runtime)


def test_tuning_candidates_come_from_the_profiles_tiles(monkeypatch):
    """The compiled kernels autotune among their family's tile candidates for the present
    device's profile (issue 5), the masked forward trying the measured 64 x 64 tile right
    after its default, and the scan forward keeping tiles.py's order under its layout rule."""
    from ioaware import hardware
    from ioaware.codegen.attention import tiles as attention_tiles
    from ioaware.codegen.scan import forward as scan_fwd
    from ioaware.codegen.scan import tiles as scan_tiles
    from ioaware.codegen.scan.spec import ScanSpec

    monkeypatch.setattr(hardware, "get_profile", lambda name=None: hardware.PROFILES["h100"])
    masked = dataclasses.replace(SPEC, head_dim=128, head_dim_v=128, mask="q_idx - kv_idx < 512")
    forward = attention_fwd.general_forward_configs(masked)
    fitting = attention_tiles.attention_tile_candidates(hardware.PROFILES["h100"], 128, 128, 2,
                                                        limit=None)
    assert forward[0] == attention_fwd.default_forward_config(masked)
    assert forward[1] == (64, 64, 4, 3) == attention_fwd.MEASURED_FORWARD[0]
    assert all(c in fitting for c in forward[1:])
    assert len(forward) == MAX_TUNE_CONFIGS

    scan = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, delta_dtype="bfloat16",
                    bc_dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                    delta_softplus=True)
    ranked = [c[:3] for c in scan_tiles.scan_chunk_candidates(hardware.PROFILES["h100"], 16, 2,
                                                              limit=None)]
    configs = scan_fwd.tile_configs(scan)
    assert configs == [(8, 16, 1), (4, 16, 1), (4, 32, 1), (16, 16, 2)]  # as measured
    assert [ranked.index(c) for c in configs] == sorted(ranked.index(c) for c in configs)
    assert scan_fwd.default_config(scan) == configs[0]


def test_a_smaller_shared_memory_gives_smaller_configs():
    """The configs a module is rendered with fit the tile budget of the profile it is
    rendered for (render.shared_memory_budget), not a number in the template."""
    from ioaware import hardware
    from ioaware.codegen.render import shared_memory_budget

    h100 = hardware.PROFILES["h100"]
    small = dataclasses.replace(h100, name="small", sram_per_block=64 * 1024)
    spec = dataclasses.replace(SPEC, head_dim=128, head_dim_v=128)
    assert shared_memory_budget(h100) == 200 * 1024  # the H100's 227 KB less the headroom
    for configs in (attention_fwd.forward_configs, attention_bwd.dq_configs,
                    attention_bwd.dkdv_configs):
        big, little = configs(spec, h100), configs(spec, small)
        assert little != big and len(little) < len(big)
    budget = shared_memory_budget(small)
    fwd = attention_fwd.forward_configs(spec, small)
    assert all(attention_fwd.forward_smem_bytes(spec, *c) <= budget for c in fwd)
    # 2·(128·128 + 3·64·256) = 128 KB: the H100's first forward tile does not fit
    assert (128, 64, 8, 3) in attention_fwd.forward_configs(spec, h100)
    assert (128, 64, 8, 3) not in fwd
    default = attention_fwd.default_forward_config(spec, small)
    assert attention_fwd.forward_smem_bytes(spec, *default) <= budget // 2
    assert default != attention_fwd.default_forward_config(spec, h100)
    # ... and the rendered module carries them
    src = attention_fwd.render_forward(spec, profile=small)
    assert f"DEFAULT_CONFIG = {default!r}" in src
    assert src != attention_fwd.render_forward(spec, profile=h100)


def test_the_profile_is_in_the_key():
    from ioaware import hardware

    h100 = hardware.PROFILES["h100"]
    small = dataclasses.replace(h100, sram_per_block=64 * 1024)
    keys = {cache.cache_key("attention_fwd", SPEC, "NVIDIA H100 sm90", versions=VERSIONS,
                            profile=p) for p in (None, h100, small)}
    assert len(keys) == 3


def test_config_gluon_is_in_the_key(monkeypatch):
    """config.gluon decides an attention module's tuning space, so a module rendered
    with it off (a script's Triton-only baseline) is not the one a later run with it on
    loads, from disk or from this process."""
    from ioaware.config import config

    keys = set()
    for on in (True, False):
        monkeypatch.setattr(config, "gluon", on)
        keys.add(cache.cache_key("attention_fwd", SPEC, "NVIDIA H100 sm90", versions=VERSIONS))
    assert len(keys) == 2
    monkeypatch.setattr(config, "gluon", True)
    cache.load_kernel_module("attention_fwd", SPEC, cache.INTERPRET_DEVICE)
    assert cache.cached_module("attention_fwd", SPEC, cache.INTERPRET_DEVICE) is not None
    monkeypatch.setattr(config, "gluon", False)
    assert cache.cached_module("attention_fwd", SPEC, cache.INTERPRET_DEVICE) is None
