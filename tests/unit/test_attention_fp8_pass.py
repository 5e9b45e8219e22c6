"""The attention pass on FP8 operands dequantized in plain PyTorch (passes/attention/fp8.py).

Each spelling is captured, rewritten, checked to call ioaware::attention on the FP8
tensors themselves with an FP8 Spec, and run (the CPU reference path: no kernel here)
against eager. The refusals keep the dequantization and say why in the detail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attention_pass import run_pass

from ioaware import capture
from ioaware.codegen.attention import gluon_forward
from ioaware.codegen.attention.price import flash_attention_cost
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.config import config
from ioaware.passes.decode import route
from ioaware.verify import TOLERANCE, relative_error

E4M3 = torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def fp8_attention(monkeypatch):
    """FP8 operands taken: config.fp8_attention is off by default (measured slower)."""
    monkeypatch.setattr(config, "fp8_attention", True)
BF16 = torch.bfloat16
aten = torch.ops.aten


def canonical(fn, *args):
    """(canonical graph, a callable taking fn's arguments): dynamo orders the graph's
    inputs by first use, so the callable passes them in the graph's order."""
    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        box["order"] = [next(i for i, a in enumerate(args) if a is x) for x in example_inputs]
        return gm.forward

    torch.compile(fn, backend=backend)(*args)
    gm, order = box["gm"], box["order"]

    def run(*xs):
        out = gm(*[xs[i] for i in order])
        return out[0] if isinstance(out, (tuple, list)) else out

    return gm, run


def fp8(*shape, dtype=E4M3):
    return torch.randn(*shape).to(dtype)


def attend(q, k, v, scale=0.25):
    return torch.softmax((q @ k.transpose(-2, -1)).float() * scale, -1).to(q.dtype) @ v


# Each: (function of (q8, k8, v8, s) with s a 0-d fp32 tensor, the FP8 operands taken)
SPELLINGS = {
    "float_scale": (lambda q8, k8, v8, s: attend(q8.to(BF16) * 0.7, k8.to(BF16) * 1.3,
                                                 v8.to(BF16) * 0.9), "qkv"),
    "tensor_scale": (lambda q8, k8, v8, s: attend(q8.to(BF16) * s, k8.to(BF16) * s,
                                                  v8.to(BF16) * s), "qkv"),
    "scale_on_the_left": (lambda q8, k8, v8, s: attend(s * q8.to(BF16), 1.3 * k8.to(BF16),
                                                       s * v8.to(BF16)), "qkv"),
    "division": (lambda q8, k8, v8, s: attend(q8.to(BF16) / s, k8.to(BF16) / 1.7,
                                              v8.to(BF16) / s), "qkv"),
    "float_then_bf16": (lambda q8, k8, v8, s: attend(q8.float().to(BF16) * s,
                                                     k8.float().to(BF16) * s,
                                                     v8.float().type(BF16) * s), "qkv"),
    "scaled_in_fp32": (lambda q8, k8, v8, s: attend((q8.float() * s).to(BF16),
                                                    (k8.float() * s).to(BF16),
                                                    (v8.float() * s).to(BF16)), "qkv"),
    "unscaled_cast": (lambda q8, k8, v8, s: attend(q8.to(BF16), k8.to(BF16),
                                                   v8.to(BF16)), "qkv"),
    "kv_cache": (lambda q, k8, v8, s: attend(q, k8.to(BF16) * s, v8.to(BF16) * 0.6), "kv"),
    "sdpa": (lambda q8, k8, v8, s: F.scaled_dot_product_attention(
        q8.to(BF16) * s, k8.to(BF16) * 1.1, v8.to(BF16) / s, is_causal=True), "qkv"),
}


def _operands(name):
    q8, k8, v8 = fp8(2, 4, 24, 16), fp8(2, 4, 24, 16), fp8(2, 4, 24, 16)
    if name == "kv_cache":  # q arrives in 16 bits
        q8 = torch.randn(2, 4, 24, 16).to(BF16)
    return q8, k8, v8, torch.tensor(1.37)


def _call(gm):
    calls = [n for n in gm.graph.nodes if n.target is torch.ops.ioaware.attention.default]
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_each_dequant_spelling_is_read_at_its_source(name):
    fn, taken = SPELLINGS[name]
    args = _operands(name)
    gm, run = canonical(fn, *args)
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["fp8"] == f"fp8 {','.join(taken)} (per-tensor scales)"
    call = _call(gm)
    spec = AttentionSpec.from_json(call.args[4])
    assert spec.fp8 == taken and spec.dtype == "bfloat16"
    for name_, x in zip("qkv", call.args[:3]):
        assert x.meta["val"].dtype == spec.operand_dtype(name_)
    assert len(call.args[3]) == len(taken)  # one scale per FP8 operand
    # the dequantized copies are gone: no cast of an FP8 tensor is left
    assert not [n for n in gm.graph.nodes if n.target is aten._to_copy.default
                and n.args[0].meta["val"].dtype == E4M3]
    assert relative_error(run(*args), fn(*args)) <= TOLERANCE[BF16]


def test_gqa_repeated_after_the_dequant_reads_the_fp8_cache_once():
    def fn(q8, k8, v8, s):
        k = (k8.to(BF16) * s).repeat_interleave(2, dim=1)
        v = (v8.to(BF16) * s).repeat_interleave(2, dim=1)
        return attend(q8.to(BF16) * s, k, v)

    args = fp8(1, 4, 16, 16), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), torch.tensor(0.8)
    gm, run = canonical(fn, *args)
    rewrites, _ = run_pass(gm)
    assert rewrites[0].detail["gqa_groups"] == 2
    assert tuple(_call(gm).args[1].meta["val"].shape) == (1, 2, 16, 16)
    assert relative_error(run(*args), fn(*args)) <= TOLERANCE[BF16]


def _refused(fn, *args):
    gm, run = canonical(fn, *args)
    rewrites, _ = run_pass(gm)
    assert len(rewrites) == 1
    detail = rewrites[0].detail["fp8"]
    assert detail.startswith("not taken: ")
    # the region still runs, reading the dequantized 16-bit tensors
    assert all(n.meta["val"].dtype != E4M3 for n in (
        next(c for c in gm.graph.nodes if c.op == "call_function" and c.target in (
            torch.ops.ioaware.flash_attention.default,
            torch.ops.ioaware.attention.default)).args[:3]))
    assert relative_error(run(*args), fn(*args)) <= TOLERANCE[BF16]
    return detail


@pytest.mark.parametrize("dtype", [torch.int32, torch.float8_e5m2])
def test_a_cast_that_changes_the_values_is_not_a_dequantization(dtype):
    """x8.to(int32) truncates and x8.to(e5m2) rounds: the region must read what eager
    computed from them, never the FP8 tensor itself."""
    def fn(q8, k8, v8, s):
        q = q8.to(dtype).to(torch.float32) * s
        return attend(q, k8.float() * s, v8.float() * s)

    args = (torch.randn(1, 2, 16, 16) * 3).to(E4M3), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), \
        torch.tensor(0.9)
    gm, run = canonical(fn, *args)
    rewrites, _ = run_pass(gm)
    assert len(rewrites) == 1
    # int32: k and v are still read in FP8; e5m2: refused as a format for the region
    assert rewrites[0].detail["fp8"] == {
        torch.int32: "fp8 k,v (per-tensor scales)",
        torch.float8_e5m2: "not taken: _to_copy is torch.float8_e5m2 (only float8_e4m3fn "
                           "is served); the region reads the dequantized tensors"}[dtype]
    assert relative_error(run(*args), fn(*args)) <= TOLERANCE[torch.float32]


def test_fp8_operands_are_read_only_when_configured(monkeypatch):
    """Off by default (config.fp8_attention; an H200 ran the FP8 forward slower than the
    16-bit one): the region is rewritten on the dequantized 16-bit tensors, explain says
    why, and the output still equals eager's."""
    from ioaware.passes.attention import fp8 as fp8_pass

    monkeypatch.setattr(config, "fp8_attention", False)
    fn, _ = SPELLINGS["tensor_scale"]
    args = _operands("tensor_scale")
    gm, run = canonical(fn, *args)
    rewrites, fallbacks = run_pass(gm)
    assert len(rewrites) == 1 and not fallbacks, fallbacks
    assert rewrites[0].detail["fp8"].startswith(f"not taken: {fp8_pass.OFF_REASON};")
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.ioaware.attention.default
                and AttentionSpec.from_json(n.args[4]).fp8]
    assert relative_error(run(*args), fn(*args)) <= TOLERANCE[BF16]


def test_gpus_before_sm89_read_the_dequantized_tensors(monkeypatch):
    """Triton has no e4m3 before sm_89: there the region keeps its 16-bit operands (the
    capability is the only thing faked: no such GPU here)."""
    from ioaware.passes.attention import fp8 as fp8_pass

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    for capability, reason in (((8, 0), "need sm_89 or later; this GPU is sm_80"),
                               ((8, 9), None), ((9, 0), None)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: c)
        got = fp8_pass.device_reason(cuda)
        assert got == reason or (reason and reason in got), (capability, got)
    assert fp8_pass.device_reason(torch.device("cpu")) is None
    assert fp8_pass.device_reason(torch.device("meta")) is None


def test_a_per_channel_scale_is_refused():
    def fn(q8, k8, v8, s):
        return attend(q8.to(BF16), k8.to(BF16) * s, v8.to(BF16))

    detail = _refused(fn, fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16),
                      (torch.rand(16) + 0.5).bfloat16())
    assert "shape [16] (per-channel or per-block)" in detail


def test_a_per_head_scale_is_refused():
    def fn(q8, k8, v8, s):
        return attend(q8.to(BF16) * s, k8.to(BF16), v8.to(BF16))

    detail = _refused(fn, fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16),
                      torch.rand(2, 1, 1).bfloat16() + 0.5)
    assert "per-channel or per-block" in detail


def test_e5m2_is_refused():
    def fn(q8, k8, v8, s):
        return attend(q8.to(BF16) * s, k8.to(BF16) * s, v8.to(BF16) * s)

    e5 = torch.float8_e5m2
    detail = _refused(fn, fp8(1, 2, 16, 16, dtype=e5), fp8(1, 2, 16, 16, dtype=e5),
                      fp8(1, 2, 16, 16, dtype=e5), torch.tensor(0.9))
    assert "float8_e5m2 (only float8_e4m3fn is served)" in detail


def test_a_scale_that_requires_grad_is_refused():
    def fn(q8, k8, v8, s):
        return attend(q8.to(BF16) * s, k8.to(BF16) * s, v8.to(BF16) * s)

    detail = _refused(fn, fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16),
                      torch.tensor(0.9, requires_grad=True))
    assert "requires grad and the FP8 forward has no backward" in detail


def test_a_16_bit_query_that_requires_grad_keeps_the_region_in_16_bits():
    def fn(q, k8, v8, s):
        return attend(q, k8.to(BF16) * s, v8.to(BF16) * s)

    q = torch.randn(1, 2, 16, 16).bfloat16().requires_grad_()
    detail = _refused(fn, q, fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), torch.tensor(0.9))
    assert "(q) requires grad" in detail


def test_without_grad_mode_a_learned_scale_is_taken():
    def fn(q8, k8, v8, s):
        return attend(q8.to(BF16) * s, k8.to(BF16) * s, v8.to(BF16) * s)

    with torch.no_grad():
        gm, _ = canonical(fn, fp8(1, 2, 16, 16), fp8(1, 2, 16, 16), fp8(1, 2, 16, 16),
                       torch.tensor(0.9, requires_grad=True))
        rewrites, _ = run_pass(gm)
    assert rewrites[0].detail["fp8"] == "fp8 q,k,v (per-tensor scales)"


def test_sdpa_choice_decode_and_gluon_refuse_fp8():
    gm, _ = canonical(SPELLINGS["sdpa"][0], *_operands("sdpa"))
    rewrites, _ = run_pass(gm)
    assert "FP8 operands (q,k,v; SDPA's backends take 16-bit" in \
        rewrites[0].detail["implementation"]
    spec = AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=True,
                         scale=0.1, fp8="kv")
    assert "FP8 operands (k,v)" in route.unsupported(spec)
    assert "FP8 operands (kv)" in gluon_forward.spec_reason(spec)


def test_fp8_operands_cost_one_byte_an_element():
    b, h, n, d = 1, 2, 256, 64
    bf16 = flash_attention_cost(b, h, h, n, n, d, d, 2, False)
    fp8_cost = flash_attention_cost(b, h, h, n, n, d, d, 2, False,
                                    operand_itemsize=(1, 1, 1), qk_flop_weight=0.5)
    out_and_lse = b * h * n * (d * 2 + 4)  # O in bf16 and lse in fp32: unchanged
    assert fp8_cost.write_bytes == bf16.write_bytes == out_and_lse
    assert 2 * fp8_cost.read_bytes == bf16.read_bytes  # Q once, K/V per query block
    # QKᵀ (half the matmul FLOPs at d = dv) at twice the rate: 3/4 of the time
    assert fp8_cost.tensor_flops == pytest.approx(0.75 * float(bf16.tensor_flops))
    kv_only = flash_attention_cost(b, h, h, n, n, d, d, 2, False, operand_itemsize=(2, 1, 1))
    q_bytes = b * h * n * d * 2  # Q in bf16, read once
    assert kv_only.read_bytes == q_bytes + (bf16.read_bytes - q_bytes) / 2


def test_a_head_dim_the_kernels_refuse_stays_eager_with_the_reason():
    fn = SPELLINGS["tensor_scale"][0]
    args = fp8(1, 2, 16, 320), fp8(1, 2, 16, 320), fp8(1, 2, 16, 320), torch.tensor(0.9)
    gm, run = canonical(fn, *args)
    rewrites, fallbacks = run_pass(gm)
    assert not rewrites and len(fallbacks) == 1
    assert "head_dim=320 must be between 1 and 256" in fallbacks[0].reason
    assert aten._softmax.default in [n.target for n in gm.graph.nodes]
    assert relative_error(run(*args), fn(*args)) == 0
