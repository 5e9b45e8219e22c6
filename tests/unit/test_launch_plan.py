"""Launch plans (codegen/plan.py): keyed by the call's signature, replaying the body's
launches exactly, and never planning what a replay could not redo.

No GPU here, so the ops take their CUDA path on CPU tensors: kernel modules rendered for
an H100, and every compiled-binary lookup finds a binary whose launcher records its
arguments instead of running (a binary cannot run without a GPU). What is checked is
the host side: which launches, with which arguments, from the body and from a replay.
Replays against eager on a device: tests/gpu/test_launch_plan_gpu.py."""

from __future__ import annotations

import pytest
import torch
from cuda_path import patch_to_cuda_path

from ioaware.codegen import plan
from ioaware.codegen.attention import op as attention_op
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode import op as decode_op
from ioaware.codegen.host import undecorated
from ioaware.config import config
from ioaware.spec import TensorInput

TAG = "plan-test-h100"  # a device tag no real device has: its own modules
LAUNCHED: list[tuple] = []


def _record(*args):
    LAUNCHED.append(args[9:])  # the kernel's arguments (after grid, stream, ...)


@pytest.fixture
def cuda_path(monkeypatch):
    """The ops' CUDA path on CPU tensors (tests/cuda_path.py), launches recorded in
    LAUNCHED."""
    patch_to_cuda_path(monkeypatch.setattr, TAG, _record)
    monkeypatch.setattr(config, "fast_launch", True)
    plan.forget()
    LAUNCHED.clear()
    yield
    plan.forget()


forward = undecorated(attention_op.flash_attention_op)
backward = undecorated(attention_op.flash_attention_backward_op)


def qkv(n=64, d=32, dtype=torch.bfloat16):
    return tuple(torch.randn(1, 2, n, d, dtype=dtype) for _ in range(3))


def calls(fn, times):
    """The launches of each of `times` calls of fn, and its last result."""
    per_call = []
    for _ in range(times):
        LAUNCHED.clear()
        result = fn()
        per_call.append(list(LAUNCHED))
    return per_call, result


def same_launch(a: tuple, b: tuple, inputs: tuple) -> bool:
    """Equal scalars; the inputs by identity; other tensors alike in layout."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            if not isinstance(y, torch.Tensor):
                return False
            if any(x is t for t in inputs) or any(y is t for t in inputs):
                if x is not y:
                    return False
            elif (x.shape, x.stride(), x.dtype) != (y.shape, y.stride(), y.dtype):
                return False
        elif x != y:
            return False
    return True


def test_a_plan_is_kept_after_two_agreeing_recordings_and_replays_the_bodys_launches(
        cuda_path):
    q, k, v = qkv()
    unplanned, _ = calls(lambda: forward.__wrapped__(q, k, v, 0.125, True), 1)
    per_call, (out, lse) = calls(lambda: forward(q, k, v, 0.125, True), 5)
    (entry,) = forward.plans.values()
    assert isinstance(entry, plan.Plan)
    for launches in per_call:  # the body (seen, recorded, recorded), then replays
        assert len(launches) == 1 and same_launch(launches[0], unplanned[0][0], (q, k, v))
    assert out.shape == (1, 2, 64, 32) and lse.dtype == torch.float32
    assert per_call[4][0][3] is out and per_call[4][0][4] is lse  # the outputs it returned

    dout = torch.randn_like(q)
    args = (dout, q, k, v, out, lse, 0.125, True, None)
    unplanned, _ = calls(lambda: backward.__wrapped__(*args), 1)
    per_call, grads = calls(lambda: backward(*args), 4)
    assert isinstance(next(iter(backward.plans.values())), plan.Plan)
    assert len(unplanned[0]) == 3  # preprocess, dK/dV, dQ
    assert all(same_launch(a, b, args[:6]) for a, b in zip(per_call[3], unplanned[0]))
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_the_decode_op_is_planned_at_a_static_caches_signature(cuda_path):
    """A decode step of generate() with a StaticCache calls the decode op at one
    signature every step (the cache's full length, its mask): from the fourth call a
    replay makes the body's split and merge launches, with no argument checks, Spec,
    module, tile or split lookups."""
    decode = undecorated(decode_op.decode_attention_op)
    q = torch.randn(1, 4, 1, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 4096, 32, dtype=torch.bfloat16) for _ in range(2))
    mask = torch.ones(1, 1, 1, 4096, dtype=torch.bool)
    spec = AttentionSpec(head_dim=32, head_dim_v=32, dtype="bfloat16", causal=False,
                         scale=32 ** -0.5, mask="Ne(in0[0, 0, 0, kv_idx], 0)",
                         mask_semantics="safe", inputs=(TensorInput("in0", 4, "bool"),))
    args = (q, k, v, [mask], spec.to_json())
    unplanned, _ = calls(lambda: decode.__wrapped__(*args), 1)
    per_call, (out, lse) = calls(lambda: decode(*args), 5)
    assert isinstance(next(iter(decode.plans.values())), plan.Plan)
    assert len(unplanned[0]) == 2  # the split programs, then the merge
    for launches in per_call:
        assert all(same_launch(a, b, (q, k, v, mask)) for a, b in zip(launches, unplanned[0]))
        assert len(launches) == 2
    assert out.shape == q.shape and lse.shape == (1, 4, 1) and lse.dtype == torch.float32
    assert per_call[4][1][1] is out and per_call[4][1][2] is lse  # the merge writes them


def test_the_decode_op_replays_at_the_generate_steps_arguments(cuda_path):
    """The call Inductor's decode step makes in the bench's generate() (Hq 16, Hkv 4,
    d 128, a 256-slot StaticCache; the Spec reads the cache position and the padded
    attention_mask, computed per step in the step's fused kernel; num_splits by keyword):
    the kernel op records a plan and replays it, and a replay allocates out, lse and one
    buffer for the split partials (three allocations, not five: each is a caching-
    allocator call and a profiler event per layer and token on the GPU)."""
    decode = decode_op.decode_attention_forward_op._init_fn
    spec = AttentionSpec(
        head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False, scale=128 ** -0.5,
        mask="Ne(in1[0, kv_idx], 0) & (kv_idx <= q_idx + in0[0])", mask_semantics="safe",
        inputs=(TensorInput("in0", 1, "int64"), TensorInput("in1", 2, "bool"))).to_json()
    q = torch.randn(1, 16, 1, 128, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4, 256, 128, dtype=torch.bfloat16) for _ in range(2))
    step = torch.ops.ioaware.decode_attention_forward.default
    unplanned, _ = calls(lambda: decode.__wrapped__(q, k, v, [torch.tensor([128]),
                                                              torch.ones(1, 256, dtype=torch.bool)],
                                                    spec, 0), 1)
    for _ in range(5):  # the step's mask inputs are new tensors every step
        position, padding = torch.tensor([128]), torch.ones(1, 256, dtype=torch.bool)
        with torch.no_grad():
            LAUNCHED.clear()
            out, lse = step(q, k, v, [position, padding], spec, num_splits=0)
        assert all(same_launch(a, b, (q, k, v)) for a, b in zip(LAUNCHED, unplanned[0]))
        assert any(a is position for a in LAUNCHED[0]) and any(a is padding for a in LAUNCHED[0])
    (entry,) = decode.plans.values()
    assert isinstance(entry, plan.Plan)
    assert len(entry.launches) == 2  # the split programs, then the merge
    assert len(entry.allocations) == 3, entry.allocations  # out, lse, the partials
    assert any(a is out for a in LAUNCHED[1]) and any(a is lse for a in LAUNCHED[1])


def test_a_decode_call_sent_to_the_prefill_op_replays_its_launches(cuda_path):
    """Rows too many for a decode tile (a query of 128 rows through a decode op, as a
    graph with symbolic Nq may call it): the body calls the prefill op, itself planned.
    Whatever the decode op's plan becomes, each call still makes the prefill's launch."""
    decode = undecorated(decode_op.decode_attention_op)
    _, k, v = qkv(n=128)
    q = torch.randn(1, 4, 128, 32, dtype=torch.bfloat16)  # 2·128 packed rows
    spec = AttentionSpec(head_dim=32, head_dim_v=32, dtype="bfloat16", causal=True,
                         scale=0.125).to_json()
    per_call, (out, _) = calls(lambda: decode(q, k, v, [], spec), 6)
    assert all(len(launches) == 1 for launches in per_call), [len(x) for x in per_call]
    assert all(same_launch(a[0], per_call[0][0], (q, k, v)) for a in per_call)
    assert out.shape == q.shape
    assert not any(isinstance(p, plan.Plan) for p in decode.plans.values())  # a nested op


def test_the_plan_key_replans_on_a_new_shape_or_stride_and_reuses_otherwise(cuda_path):
    q, k, v = qkv()
    calls(lambda: forward(q, k, v, 0.125, True), 3)
    assert len(forward.plans) == 1 and isinstance(forward.plans[plan.signature(
        (q, k, v, 0.125, True))], plan.Plan)

    q2, k2, v2 = qkv()  # new tensors, same signature: the same plan, their pointers
    per_call, _ = calls(lambda: forward(q2, k2, v2, 0.125, True), 1)
    assert len(forward.plans) == 1
    assert all(a is b for a, b in zip(per_call[0][0][:3], (q2, k2, v2)))

    longer = qkv(n=96)
    calls(lambda: forward(*longer, 0.125, True), 1)
    assert len(forward.plans) == 2 and not isinstance(
        forward.plans[plan.signature((*longer, 0.125, True))], plan.Plan)

    strided = tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv())
    per_call, _ = calls(lambda: forward(*strided, 0.125, True), 4)
    assert len(forward.plans) == 3
    assert per_call[3][0][5:9] == strided[0].stride()  # q's strides, as the body passes them

    calls(lambda: forward(q, k, v, 0.25, True), 1)  # a scalar argument is in the key too
    calls(lambda: forward(q, k, v, 0.125, False), 1)
    assert len(forward.plans) == 5


def test_a_size_seen_once_is_never_recorded(cuda_path, monkeypatch):
    """A cache read through the op grows every call: no recording cost per call."""
    recordings = []
    record = plan._record
    monkeypatch.setattr(plan, "_record", lambda *a: recordings.append(1) or record(*a))
    for n in range(40, 48):
        forward(*qkv(n=n), 0.125, True)
    assert not recordings and len(forward.plans) == 8


def test_a_tensor_passed_twice_is_not_recorded_but_replays(cuda_path):
    q, k, v = qkv()
    calls(lambda: forward(q, q, q, 0.125, True), 2)  # seen, then not recorded
    assert not isinstance(next(iter(forward.plans.values())), plan.Plan)
    calls(lambda: forward(q, k, v, 0.125, True), 2)  # the same key: now recorded
    assert isinstance(next(iter(forward.plans.values())), plan.Plan)
    per_call, _ = calls(lambda: forward(q, q, q, 0.125, True), 1)
    assert all(t is q for t in per_call[0][0][:3])  # each position gets what it was given


def test_a_body_that_computes_with_torch_is_never_planned(monkeypatch):
    """The reference path (plain torch math on the CPU) makes tensors by computing: the
    signature is NEVER and every call runs the body."""
    monkeypatch.setattr(config, "interpret", False)
    plan.forget()
    q, k, v = qkv(dtype=torch.float32)
    first = forward(q, k, v, 0.125, True)[0]
    forward(q, k, v, 0.125, True)  # the first call only runs it; the second records
    assert list(forward.plans.values()) == [plan.NEVER]
    torch.testing.assert_close(forward(q, k, v, 0.125, True)[0], first, rtol=0, atol=0)
    plan.forget()


def test_plans_off_run_the_body(cuda_path, monkeypatch):
    q, k, v = qkv()
    calls(lambda: forward(q, k, v, 0.125, True), 3)
    replays = []
    monkeypatch.setattr(plan.Plan, "replay", lambda self, values: replays.append(1))
    monkeypatch.setattr(plan, "enabled", False)
    per_call, _ = calls(lambda: forward(q, k, v, 0.125, True), 1)
    assert not replays and len(per_call[0]) == 1
    monkeypatch.setattr(plan, "enabled", True)
    forward(q, k, v, 0.125, True)
    assert replays == [1]


@pytest.mark.parametrize("work, planned", [
    (lambda x, out: out, True),                       # allocations only
    (lambda x, out: (x.contiguous(), out)[1], True),   # a no-op conversion
    (lambda x, out: x, True),                         # an argument, returned as it came
    (lambda x, out: out.zero_(), False),               # in place
    (lambda x, out: out.__iadd__(1), False),
    (lambda x, out: torch.add(x, 1, out=out), False),  # out=
    (lambda x, out: (x.tolist(), out)[1], False),     # reads values
    (lambda x, out: x * 2, False),                    # computes
    (lambda x, out: x[0], False),                     # a view
    (lambda x, out: x.abs_(), False),                 # changes an argument in place
    (lambda x, out: out.to(torch.bfloat16), True),     # a dtype conversion: redone
    (lambda x, out: out.to(dtype=torch.float16).double(), True),
    (lambda x, out: out.to("cpu", torch.float16), False),  # a device in the conversion
    (lambda x, out: out.to(torch.float16, copy=True), False),
    (lambda x, out: torch.empty_like(out.half()), False),  # allocated from a conversion
])
def test_the_recorder_keeps_only_allocations_and_launches(work, planned):
    def body(x):
        out = torch.empty(x.shape, dtype=x.dtype)
        return work(x, out)

    _, recorded = plan._record(body, (torch.randn(4, 4).abs() + 1,))
    assert isinstance(recorded, plan.Plan) is planned, recorded


def test_a_conversion_is_redone_after_the_launches_before_it(monkeypatch):
    """A plan keeps each dtype conversion at its place among the launches: replayed, it
    converts what those launches wrote, into a new tensor in the slot the body's had."""
    from ioaware.codegen import launch

    monkeypatch.setattr(launch, "current_stream", lambda device: 0)  # no GPU here

    def body(x):
        acc = torch.zeros(x.shape, dtype=torch.float32)
        out = torch.zeros(x.shape, dtype=torch.float32)
        # stand-ins for two launches, as launch.launch records them (run writes acc)
        launch._recorded.append((lambda *a: a[-1].add_(a[-2]), (1,), None, None, (x, acc), 0))
        first = acc.to(torch.bfloat16)
        launch._recorded.append((lambda *a: a[-1].add_(1), (1,), None, None, (out,), 0))
        return first, out.half()

    x = torch.randn(4, 4)
    _, recorded = plan._record(body, (x,))
    assert isinstance(recorded, plan.Plan), recorded
    assert [(c[0], c[2]) for c in recorded.conversions] == [(1, torch.bfloat16),
                                                            (2, torch.float16)]
    first, second = recorded.replay([x])
    torch.testing.assert_close(first, x.bfloat16(), rtol=0, atol=0)  # after launch 1
    assert second.dtype == torch.float16 and torch.equal(second, torch.ones(4, 4).half())


def test_the_scan_backward_with_16_bit_inputs_is_planned(cuda_path):
    """The selective-scan backward of a bf16 model (fp32 A and D, as Mamba keeps them)
    converts its fp32 dB, dC buffers to bf16 after the kernel: a plan redoes those
    conversions, so the op is planned and each replay makes the body's launches."""
    from ioaware.codegen.scan import op as scan_op

    body = undecorated(scan_op.selective_scan_backward_op)
    bt, dc, length, n = 1, 64, 64, 16
    bf16 = torch.bfloat16
    u, delta, z, dy = (torch.randn(bt, dc, length, dtype=bf16) for _ in range(4))
    A, D = -torch.rand(dc, n), torch.randn(dc)
    B, C = (torch.randn(bt, 1, length, n, dtype=bf16) for _ in range(2))
    args = (dy, None, u, delta, A, B, C, D, z, None, True, None)
    unplanned, _ = calls(lambda: body.__wrapped__(*args), 1)
    per_call, grads = calls(lambda: body(*args), 5)
    assert isinstance(next(iter(body.plans.values())), plan.Plan), body.plans
    for launches in per_call:
        assert len(launches) == len(unplanned[0])
        assert all(same_launch(a, b, (dy, u, delta, A, B, C, D, z))
                   for a, b in zip(launches, unplanned[0]))
    assert [g.dtype for g in grads[:5]] == [bf16, bf16, torch.float32, bf16, bf16]
