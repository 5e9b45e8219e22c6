"""The Gluon forward (codegen/attention/gluon_kernel.py): its gate, its pinnable configs,
and, where the installed Triton is one it is written for (3.6), its sm_90 build.

Gluon has no interpreter, so the CPU check of the kernel itself is that it compiles to
sm_90 SASS with the schedule it was written for; its numbers are checked on a GPU
(scripts/gpu_gluon_forward.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from ioaware.codegen.attention import forward as fwd_render
from ioaware.codegen.attention import gluon_forward
from ioaware.codegen.attention.spec import AttentionSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sm90 import has_ptx_backend


def _spec(d=128, causal=False, dtype="bfloat16", **extra) -> AttentionSpec:
    return AttentionSpec(head_dim=d, head_dim_v=extra.pop("dv", d), dtype=dtype,
                         causal=causal, scale=d ** -0.5, **extra)


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_plain_specs_pass_the_spec_gate(d, causal):
    assert gluon_forward.spec_reason(_spec(d, causal)) is None
    assert gluon_forward.spec_reason(_spec(d, causal, "float16")) is None


@pytest.mark.parametrize(("spec", "words"), [
    (_spec(mask="q_idx >= kv_idx"), "only dense and causal"),
    (_spec(dropout_p=0.1), "only dense and causal"),
    (_spec(dtype="float32"), "dtype float32"),
    (_spec(d=96), "head dims 96/96"),
    (_spec(d=64, dv=128), "head dims 64/128"),
])
def test_the_gate_names_what_it_refuses(spec, words):
    reason = gluon_forward.spec_reason(spec)
    assert reason is not None and words in reason
    assert gluon_forward.unavailable_reason(spec) == reason  # the Spec is checked first
    assert gluon_forward.candidate_configs(spec) == []


def test_the_environment_gate(monkeypatch):
    """Another Triton than 3.6 is refused by version; 3.6 without a CUDA device, by
    device; an sm_80 device, by architecture."""
    monkeypatch.setattr(gluon_forward, "triton_version", lambda: (3, 9))
    assert "written for 3.6" in gluon_forward.environment_reason(torch.device("cuda", 0))
    monkeypatch.setattr(gluon_forward, "triton_version", lambda: (3, 6))
    monkeypatch.setattr(gluon_forward, "_gluon_importable", lambda: None)
    assert gluon_forward.environment_reason(None) == "no CUDA device"
    assert gluon_forward.environment_reason(torch.device("cpu")) == "no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "sm_80" in gluon_forward.environment_reason(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert gluon_forward.environment_reason(torch.device("cuda", 0)) is None


def test_candidates_are_pinnable_and_out_of_the_tuning_space():
    """Each head dim has Gluon candidates that fit an H100's shared memory; none is in the
    forward's tuning space, and the rendered module names why a Spec is refused."""
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    for d in (64, 128, 256):
        spec = _spec(d, causal=True)
        candidates = fwd_render.candidate_configs(spec, h100)
        assert candidates and all(gluon_forward.is_gluon(c) for c in candidates)
        assert not set(candidates) & set(fwd_render.forward_configs(spec, h100))
        assert all(gluon_forward.smem_bytes(spec, c) <= h100.sram_per_block
                   for c in candidates)
        assert all(c[0] == 2 * gluon_forward.ROWS_PER_WARPGROUP for c in candidates)
    assert "GLUON_REFUSED = None" in fwd_render.render_forward(_spec(), interpret=True)
    refused = fwd_render.render_forward(_spec(d=96), interpret=True)
    assert "GLUON_REFUSED = 'head dims 96/96" in refused


def test_measured_winners_join_the_space_where_the_device_admits_them(monkeypatch):
    """Where the installed Triton and the present device admit the Gluon forward, the
    tuning space of a Spec it serves ends with `TUNED[d]` (d = 128 only, as measured),
    within the device's shared memory; a refused Spec, another head dim, no such device,
    or `config.gluon` off keeps the Triton configs alone. The rendered module's tuning
    space is that list."""
    from ioaware.config import config
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    assert gluon_forward.present_environment_reason() is not None  # this CPU: none
    assert not any(map(gluon_forward.is_gluon, fwd_render.forward_configs(_spec(), h100)))
    monkeypatch.setattr(gluon_forward, "present_environment_reason", lambda: None)
    for causal in (False, True):
        space = fwd_render.forward_configs(_spec(128, causal), h100)
        assert space[-len(gluon_forward.TUNED[128]):] == gluon_forward.TUNED[128]
        assert all(gluon_forward.smem_bytes(_spec(), c) <= h100.sram_per_block
                   for c in gluon_forward.TUNED[128])
    for spec in (_spec(64), _spec(256), _spec(mask="q_idx >= kv_idx"), _spec(dtype="float32")):
        assert not any(map(gluon_forward.is_gluon, fwd_render.forward_configs(spec, h100)))
    source = fwd_render.render_forward(_spec(), profile=h100)
    assert repr(gluon_forward.TUNED[128][0]) in source
    monkeypatch.setattr(config, "gluon", False)
    assert not any(map(gluon_forward.is_gluon, fwd_render.forward_configs(_spec(), h100)))


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
@pytest.mark.skipif(gluon_forward.triton_version() not in gluon_forward.TRITON_VERSIONS,
                    reason="the Gluon kernel is written for Triton 3.6's Gluon API")
@pytest.mark.parametrize(("d", "causal"), [(128, True), (64, False)])
def test_the_gluon_forward_compiles_for_sm90(d, causal):
    """The kernel builds for Hopper at a causal and a dense candidate: the partitions'
    register split (240 for each consumer warpgroup, 24 for the loaders), two wgmma
    products per KV block for each consumer, no local memory, and no serialized wgmma
    (ptxas then waits after every one: `WARPGROUP.DEPBAR` as often as HGMMA groups)."""
    config = gluon_forward.CANDIDATES[d][0]
    block_n = config[1]
    kernel = gluon_forward.compile_sm90(config, d, causal)
    ptx = kernel.asm["ptx"]
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+240;", ptx)
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+24;", ptx)
    # per consumer: S_0, S_j and P_{j-1} V_{j-1} in each of two loops, the last P V; one
    # wgmma instruction per 16 of the reduced dim (d for S, BLOCK_N for P V)
    assert ptx.count("wgmma.mma_async") == 2 * 3 * (d // 16 + block_n // 16)
    assert abs(kernel.metadata.shared - gluon_forward.smem_bytes(_spec(d, causal), config)) < 1024
    sass = kernel.asm["sass"]
    assert "STL" not in sass and "LDL" not in sass
    # serialized, each of the 8 instructions of a wgmma would end its own group (gsb0)
    assert sass.count("gsb0;") < sass.count("HGMMA") / 2


def test_explain_says_why_the_gluon_forward_cannot_run(monkeypatch):
    """Where a region's kernels run on a CUDA device, its rewrite's detail says whether a
    Gluon config could be pinned there, or why not; on the CPU, nothing of it."""
    import types

    import ioaware
    from ioaware.passes.attention import describe

    def fn(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=gen, dtype=torch.bfloat16)
               for _ in range(3))
    assert "gluon_forward" not in ioaware.explain(fn, q, k, v).rewrites[0].detail

    # a region whose output lives on a CUDA device, judged on this machine
    on_cuda = types.SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr(describe, "fake_value", lambda node: on_cuda)
    region = types.SimpleNamespace(output=None)
    monkeypatch.setattr(describe, "spec_of", lambda m: _spec(64, True, "float32"))
    assert describe.gluon_forward_status(region, "triton").startswith(
        "not available: dtype float32")
    assert describe.gluon_forward_status(region, "triton-interpret") is None
    monkeypatch.setattr(describe, "spec_of", lambda m: _spec(64, True))
    reason = gluon_forward.environment_reason(torch.device("cuda", 0))
    assert describe.gluon_forward_status(region, "triton") == (
        "pinnable" if reason is None else f"not available: {reason}")
