"""The plain forward's sm_90 variants (TMA descriptors, warp specialisation, lazy
rescale; `forward.VARIANTS`) and the dK/dV kernel's TMA variant, each run by Triton's
interpreter through the op, against eager math in float64: outputs, lse and gradients.

The variant is forced by making it the module's untuned config (the interpreter never
tunes), so the op, its autograd and the backward run as in a real call.
"""

from __future__ import annotations

import pytest
import torch
from sm90 import compile_sm90, has_ptx_backend, import_compiled
from test_attention_kernel import (
    TOLERANCE,
    assert_close_rel,
    delta_rounding_bound,
    eager_attention,
    make_input,
)

from ioaware.codegen.attention import backward as bwd_render
from ioaware.codegen.attention import forward as fwd_render
from ioaware.codegen.attention import op as ops
from ioaware.codegen.launch import tma_addressable
from ioaware.codegen.runtime import kernel_module

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

VARIANTS = ["tma", "ws", "lazy", "tma+ws+lazy"]
# dK/dV variants: "atomic" adds dQ inside the dK/dV kernel (no dQ pass); "bulk" by TMA
# reduce-adds when compiled (the interpreter has no descriptor reductions: its launcher
# runs the per-element atomics, so only the launch path is interpreted)
DKDV_VARIANTS = ["atomic", "tma+atomic", "tma+atomic+bulk"]


def _forward_module(d: int, d_v: int, dtype: torch.dtype, causal: bool, scale: float):
    spec = ops._plain_spec(d, d_v, dtype, causal, scale)
    return kernel_module("attention_fwd", spec, torch.device("cpu"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("dtype", "d", "d_v", "n_q", "n_k", "causal", "scale", "layout"), [
    # ragged Nq, Nk against the 32 × 16 interpreter tiles; scale 2: maxima jump by far
    # more than the lazy threshold (rescales), 0.05: they barely move (skipped rescales)
    (torch.float32, 24, 24, 45, 37, False, 2.0, "contiguous"),
    (torch.bfloat16, 40, 24, 50, 50, True, 0.05, "contiguous"),
    (torch.float16, 64, 64, 33, 70, True, 2.0, "bnhd"),
    # head dim not unit-stride: no descriptor can address it, the pointer loads serve
    (torch.float32, 16, 16, 20, 29, True, 0.5, "d_major"),
])
def test_variant_matches_eager(variant, dtype, d, d_v, n_q, n_k, causal, scale, layout,
                               monkeypatch):
    _check_variant(variant, "tma" if "tma" in variant else None, dtype, d, d_v, n_q, n_k,
                   causal, scale, layout, monkeypatch)


@pytest.mark.parametrize("dkdv_variant", DKDV_VARIANTS)
@pytest.mark.parametrize(("dtype", "d", "d_v", "n_q", "n_k", "causal", "scale", "layout"), [
    # ragged Nq and Nk, GQA, causal bands, a padded head dim; the pointer fallback
    (torch.float32, 24, 24, 45, 37, False, 0.5, "contiguous"),
    (torch.bfloat16, 40, 24, 50, 50, True, 0.3, "contiguous"),
    (torch.float16, 64, 64, 33, 70, True, 2.0, "bnhd"),
    (torch.float32, 16, 16, 20, 29, True, 0.5, "d_major"),
])
def test_atomic_dq_matches_eager(dkdv_variant, dtype, d, d_v, n_q, n_k, causal, scale, layout,
                                 monkeypatch):
    """The one-kernel backward: dQ added by atomics inside the dK/dV kernel, then
    scaled and converted; the dQ pass never runs."""
    _check_variant("", dkdv_variant, dtype, d, d_v, n_q, n_k, causal, scale, layout,
                   monkeypatch)


# The backward's study candidates (`backward.CANDIDATE_DKDV`, `CANDIDATE_DQ`: pinnable, not
# tuned), each (dK/dV variant, dQ variant) on a ragged bf16 GQA case with a causal band, a
# padded head dim and d_v != d; both together also on a bnhd layout and on a head dim that
# is not unit-stride (no descriptor can address it: the pointer loads serve)
_RAGGED = (torch.bfloat16, 40, 24, 50, 37, True, 0.3, "contiguous")


@pytest.mark.parametrize(("dkdv_variant", "dq_variant", "case"), [
    ("dpfirst", None, _RAGGED),
    (None, "tma", _RAGGED),
    ("tma+dpfirst", "tma", _RAGGED),
    ("tma+dpfirst", "tma", (torch.float32, 24, 24, 45, 37, False, 0.5, "bnhd")),
    ("tma+dpfirst", "tma", (torch.float32, 16, 16, 20, 29, True, 0.5, "d_major")),
])
def test_backward_candidates_match_eager(dkdv_variant, dq_variant, case, monkeypatch):
    """The backward's study candidates: dPᵀ issued before P's exp2 in dK/dV ("dpfirst"),
    and the dQ kernel reading Q, dO, K, V through TMA descriptors ("tma")."""
    _check_variant("", dkdv_variant, *case, monkeypatch, dq_variant)


def _check_variant(variant, dkdv_variant, dtype, d, d_v, n_q, n_k, causal, scale, layout,
                   monkeypatch, dq_variant=None):
    """Forward config `variant`, dK/dV variant `dkdv_variant` and dQ variant `dq_variant`
    (None: the default) made the modules' untuned configs; outputs, lse and gradients
    against float64 eager."""
    gen = torch.Generator().manual_seed(hash((variant, dkdv_variant, dq_variant, d, n_q)) % 2**31)
    _, q = make_input((2, 2, n_q, d), dtype, layout, gen)
    _, k = make_input((2, 1, n_k, d), dtype, layout, gen)
    _, v = make_input((2, 1, n_k, d_v), dtype, layout, gen)
    module = _forward_module(d, d_v, dtype, causal, scale)
    assert tma_addressable(q, k, v) == (layout != "d_major")
    monkeypatch.setattr(module, "DEFAULT_CONFIG", (*fwd_render.INTERPRET_CONFIG, variant))
    backward = kernel_module("attention_bwd", ops._plain_spec(d, d_v, dtype, causal, scale),
                             torch.device("cpu"))
    if dkdv_variant is not None:
        monkeypatch.setattr(backward, "DEFAULT_DKDV",
                            (*bwd_render.INTERPRET_DKDV, dkdv_variant))
        if "atomic" in dkdv_variant:  # dQ comes from the dK/dV kernel alone
            monkeypatch.setattr(backward, "_bwd_dq", None)
    if dq_variant is not None:
        monkeypatch.setattr(backward, "DEFAULT_DQ", (*bwd_render.INTERPRET_DQ, dq_variant))

    out, lse = torch.ops.ioaware.flash_attention(q, k, v, scale, causal)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, lse64 = eager_attention(q64, k64, v64, scale, causal)
    tol = TOLERANCE[dtype]
    assert_close_rel("out", out, out64, tol)
    assert_close_rel("lse", lse, lse64, tol)

    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
    bound = delta_rounding_bound(q, k, v, dout, scale, causal)
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
        assert_close_rel(name, g, g64, tol, bound[name])


def test_lazy_rescale_skips_and_still_matches():
    """Keys whose logits grow by less than the threshold block after block: the lazy
    kernel keeps its first max (no acc rescale after block 0) and stays exact; a jump
    past the threshold in the last block forces one rescale."""
    n, d = 64, 16
    q = torch.zeros(1, 1, 32, d)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, n, d)
    k[..., 0] = torch.linspace(0.0, 3.0, n)  # logits rise by 3 in all: under 2^8
    k[..., -8:, 0] = 12.0  # then a jump of ~13 log2 units in the last block
    v = torch.randn(1, 1, n, d, generator=torch.Generator().manual_seed(1))
    module = _forward_module(d, d, torch.float32, False, 1.0)
    expected, expected_lse = eager_attention(q.double(), k.double(), v.double(), 1.0, False)
    for variant in ("", "lazy"):
        out, lse = torch.empty(1, 1, 32, d), torch.empty(1, 1, 32)
        module.forward(q, k, v, out, lse, config=(*fwd_render.INTERPRET_CONFIG, variant))
        assert_close_rel(f"out[{variant}]", out, expected, TOLERANCE[torch.float32])
        assert_close_rel(f"lse[{variant}]", lse, expected_lse, TOLERANCE[torch.float32])


def test_variant_configs_are_tuning_candidates():
    """The sm_90 variant configs are in the forward's tuning space on an H100, beside
    the untuned pointer config (the fallback), for d = 64, 128 and 256."""
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    for d in (64, 128, 256):
        spec = ops._plain_spec(d, d, torch.bfloat16, True, d**-0.5)
        configs = fwd_render.forward_configs(spec, h100)
        assert fwd_render.default_forward_config(spec, h100) in configs
        assert len(configs) <= fwd_render.MAX_FORWARD_CONFIGS
        variants = [c for c in configs if len(c) > 4]
        assert any("tma" in c[4] for c in variants)
        assert all(set(c[4].split("+")) <= set(fwd_render.VARIANTS) for c in variants)


def test_backward_spaces_are_pruned_and_leave_the_one_kernel_backward_out():
    """On an H100 the dK/dV and dQ spaces hold six configs at most between them, two-kernel
    configs only (the atomic one-kernel backward measured slower there), each within the
    tile budget; the atomic configs, kept for pinning, fit it too (their fp32 dQ tile
    counted) at d = 64, 128 and 256."""
    from ioaware.codegen.render import shared_memory_budget
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    budget = shared_memory_budget(h100)
    for d in (64, 128, 256):
        spec = ops._plain_spec(d, d, torch.bfloat16, False, d**-0.5)
        dkdv, dq = bwd_render.dkdv_configs(spec, h100), bwd_render.dq_configs(spec, h100)
        assert len(dkdv) + len(dq) <= 6
        assert not any(bwd_render.is_atomic(c) for c in dkdv)
        atomic = bwd_render.atomic_dkdv_configs(spec, h100)
        assert atomic and all(bwd_render.is_atomic(c) for c in atomic)
        assert all(bwd_render.dkdv_smem_bytes(spec, c) <= budget for c in dkdv + atomic)
        assert all(set(c[4].split("+")) <= {"tma", "atomic", "bulk"}
                   for c in dkdv + atomic if len(c) > 4)


def test_backward_candidates_fit_and_stay_out_of_the_spaces():
    """The study candidates fit an H100's tile budget at d = 64, 128 and 256, name known
    variants only, and none is in a tuning space (they are timed by the GPU script, not
    by a user's first call)."""
    from ioaware.codegen.render import shared_memory_budget
    from ioaware.hardware import get_profile

    h100 = get_profile("h100")
    budget = shared_memory_budget(h100)
    for d in (64, 128, 256):
        spec = ops._plain_spec(d, d, torch.bfloat16, True, d**-0.5)
        dkdv, dq = bwd_render.candidate_configs(spec, h100)
        assert dkdv and dq
        assert not set(dkdv) & set(bwd_render.dkdv_configs(spec, h100))
        assert not set(dq) & set(bwd_render.dq_configs(spec, h100))
        assert all(bwd_render.dkdv_smem_bytes(spec, c) <= budget for c in dkdv)
        assert all(set(c[4].split("+")) <= {"tma", "dpfirst"} for c in dkdv)
        assert all(c[4] == "tma" for c in dq)
        assert not any(bwd_render.is_atomic(c) for c in dkdv)


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
@pytest.mark.parametrize("variant", ["lazy", "tma+ws+lazy"])
def test_variants_compile_for_sm90(variant, tmp_path):
    """The compiled (not interpreted) variant kernels build for Hopper: the causal
    two-loop forward, every switch of the variant on."""
    from ioaware.codegen.attention.spec import AttentionSpec

    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                         scale=0.125)
    module = import_compiled(fwd_render.render_forward(spec), tmp_path / "variant_fwd.py")
    kernel = compile_sm90(module._attn_fwd, {
        "BLOCK_M": 128, "BLOCK_N": 64, "TMA": "tma" in variant, "WARP_SPEC": "ws" in variant,
        "LAZY": "lazy" in variant},
        lambda a: {"Lse": "*fp32"}.get(a, "*bf16" if a in ("Q", "K", "V", "Out") else "i32"),
        num_warps=8)
    assert kernel.asm["sass" if "sass" in kernel.asm else "ptx"]


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
def test_one_kernel_backward_compiles_for_sm90(tmp_path):
    """The compiled atomic dK/dV kernel (causal: the band, whole and tail sweeps, each
    with its atomic adds), per element and by TMA reduce-adds, and the dQ conversion
    build for Hopper."""
    from ioaware.codegen.attention.spec import AttentionSpec

    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                         scale=0.125)
    module = import_compiled(bwd_render.render_backward(spec), tmp_path / "atomic_bwd.py")
    pointers = {"Lse": "*fp32", "Delta": "*fp32", "DqAcc": "*fp32"}

    def arg_type(a):
        return pointers.get(a, "*bf16" if a in ("Q", "K", "V", "dO", "dK", "dV", "dQ")
                            else "i32")
    dkdv = compile_sm90(module._bwd_dkdv, {"BLOCK_M": 64, "BLOCK_N": 64, "TMA": True,
                                           "ATOMIC": True}, arg_type, num_warps=8)
    bulk = compile_sm90(module._bwd_dkdv, {"BLOCK_M": 64, "BLOCK_N": 64, "TMA": True,
                                           "ATOMIC": True, "BULK": True}, arg_type,
                        num_warps=8)
    convert = compile_sm90(module._bwd_dq_convert, {"BLOCK_M": 64}, arg_type, num_warps=4)
    for kernel in (dkdv, bulk, convert):
        assert kernel.asm["sass" if "sass" in kernel.asm else "ptx"]
    assert "atom.global" in dkdv.asm["ptx"] or "red.global" in dkdv.asm["ptx"]
    assert "cp.reduce.async.bulk" in bulk.asm["ptx"]


@pytest.mark.skipif(not has_ptx_backend(), reason="this triton has no NVIDIA backend")
def test_backward_candidates_compile_for_sm90(tmp_path):
    """The study candidates build for Hopper (causal: band, whole and tail sweeps): dK/dV
    with dPᵀ issued before P's exp2 through TMA, and dQ reading its tiles through TMA
    descriptors (bulk tensor copies in the PTX of both)."""
    from ioaware.codegen.attention.spec import AttentionSpec

    spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                         scale=0.125)
    module = import_compiled(bwd_render.render_backward(spec), tmp_path / "candidate_bwd.py")

    def arg_type(a):
        return {"Lse": "*fp32", "Delta": "*fp32", "DqAcc": "*fp32"}.get(
            a, "*bf16" if a in ("Q", "K", "V", "dO", "dK", "dV", "dQ") else "i32")
    dkdv = compile_sm90(module._bwd_dkdv, {"BLOCK_M": 64, "BLOCK_N": 64, "TMA": True,
                                           "DP_FIRST": True}, arg_type, num_warps=8)
    dq = compile_sm90(module._bwd_dq, {"BLOCK_M": 64, "BLOCK_N": 64, "TMA": True},
                      arg_type, num_warps=4)
    for kernel in (dkdv, dq):
        assert "cp.async.bulk.tensor" in kernel.asm["ptx"]


@pytest.mark.parametrize("deterministic", [False, True])
def test_one_kernel_backward_is_a_tuning_decision(deterministic, monkeypatch):
    """The dK/dV tuning times each candidate with the dQ work it implies: the dQ pass
    for a two-kernel config, none for an atomic one. With timings that favour one
    kernel, the atomic config is chosen and the dQ pass never launches afterwards; under
    torch.use_deterministic_algorithms it is never a candidate. Gradients stay eager's."""
    from ioaware.codegen import tuning

    dtype, d, n_q, n_k, causal, scale = torch.float32, 16, 40, 36, True, 0.5
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, n, d, generator=gen).requires_grad_()
               for n in (n_q, n_k, n_k))
    spec = ops._plain_spec(d, d, dtype, causal, scale)
    module = kernel_module("attention_bwd", spec, torch.device("cpu"))
    atomic = (*bwd_render.INTERPRET_DKDV, "atomic")
    monkeypatch.setattr(module, "INTERPRET", False)  # tune, still interpreted kernels
    monkeypatch.setattr(module, "TUNE_MIN_SCORES", 0)
    monkeypatch.setattr(module, "TUNE_DKDV", [bwd_render.INTERPRET_DKDV, atomic])
    monkeypatch.setattr(module, "TUNE_DQ", [bwd_render.INTERPRET_DQ])
    monkeypatch.setattr(module, "_CHOSEN", {})
    launched = []
    real_launch = module.launch

    def recording_launch(kernel, *args, **kwargs):
        launched.append(kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__)
        return real_launch(kernel, *args, **kwargs)

    def fake_bench_ms(fn):  # one run; a two-kernel backward "costs" more
        before = len(launched)
        fn()
        return 2.0 if "_bwd_dq" in launched[before:] else 1.0

    monkeypatch.setattr(module, "launch", recording_launch)
    monkeypatch.setattr(tuning, "bench_ms", fake_bench_ms)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)

    out, _ = torch.ops.ioaware.flash_attention(q, k, v, scale, causal)
    dout = torch.randn(out.shape, generator=gen)
    expected_launches = (["_bwd_dkdv", "_bwd_dq"] if deterministic
                         else ["_bwd_dkdv", "_bwd_dq_convert"])
    grads = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)  # tunes
    chosen = [c for key, c in module._CHOSEN.items() if key[0] == "dkdv"]
    assert chosen == [bwd_render.INTERPRET_DKDV if deterministic else atomic]
    assert launched[-2:] == expected_launches
    launched.clear()  # a second call reuses the choice: no trials
    grads = torch.autograd.grad(out, (q, k, v), dout)
    assert launched == ["_bwd_preprocess", *expected_launches]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64, _ = eager_attention(q64, k64, v64, scale, causal)
    expected = torch.autograd.grad(out64, (q64, k64, v64), dout.double())
    bound = delta_rounding_bound(q, k, v, dout, scale, causal)
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, expected):
        assert_close_rel(name, g, g64, TOLERANCE[dtype], bound[name])
