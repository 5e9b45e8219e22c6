"""GPU tier: every ioaware kernel under CUDA graphs, and no launch that syncs the host.

- `torch.cuda.graph` capture of the ops' forward and backward (plain, masked and GQA
  attention, the selective and linear scans), replayed on new inputs copied into the
  static ones: outputs and gradients equal to the same ops run eagerly;
- `ioaware.compile(mode="reduce-overhead")` (Inductor's cudagraph trees), inference and
  training steps of a module, against eager;
- launches under `torch.cuda.set_sync_debug_mode("error")` (a host sync raises);
- a graph reading a CPU tensor: with Inductor's graph partitioning (the default) its
  CUDA part is captured; without it the graph cannot be captured, runs without CUDA
  graphs with the reason Inductor counts (and explain shows), and gives eager's answer.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import ioaware
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.verify import TOLERANCE, relative_error

pytestmark = pytest.mark.gpu

DTYPE = torch.bfloat16


def rand(*shape, dtype=DTYPE, grad=True, scale=1.0, shift=0.0):
    """A leaf tensor scale·N(0, 1) + shift."""
    t = (torch.randn(*shape, device="cuda") * scale + shift).to(dtype)
    return t.requires_grad_() if grad else t


@contextlib.contextmanager
def sync_is_an_error():
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def attention_call(kind):
    """(make inputs, step) of one attention op: step(inputs) -> outputs and grads."""
    def plain(q, k, v):
        return torch.ops.ioaware.flash_attention(q, k, v, 0.125, True)[0]

    masked_spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype="bfloat16", causal=True,
                                scale=0.125, mask="q_idx - kv_idx < 96")
    text = masked_spec.to_json()

    def masked(q, k, v):
        return torch.ops.ioaware.attention(q, k, v, [], text)[0]

    hkv = 2 if kind == "gqa" else 4
    fn = masked if kind == "masked" else plain

    def make():
        return [rand(2, 4, 256, 64), rand(2, hkv, 256, 64), rand(2, hkv, 256, 64),
                rand(2, 4, 256, 64, grad=False)]

    def step(q, k, v, dout):
        out = fn(q, k, v)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    return make, step


def scan_call(kind):
    def make_selective():
        bt, dc, length, n = 2, 64, 256, 16
        return [rand(bt, dc, length), rand(bt, dc, length, scale=0.1),
                rand(dc, n, scale=0.1, shift=-1.0, dtype=torch.float32),
                rand(bt, 1, length, n), rand(bt, 1, length, n), rand(dc), rand(bt, dc, length),
                rand(bt, dc, length, grad=False)]

    def step_selective(u, delta, A, B, C, D, z, dy):
        y, _ = torch.ops.ioaware.selective_scan(u, delta, A, B, C, D, z, None, True, None)
        return (y, *torch.autograd.grad(y, (u, delta, A, B, C, D, z), dy))

    def make_linear():
        return [torch.rand(4, 256, 32, device="cuda").requires_grad_(),
                rand(4, 256, 32, dtype=torch.float32), rand(4, 256, 32, dtype=torch.float32,
                                                            grad=False)]

    def step_linear(a, b, dh):
        h = torch.ops.ioaware.linear_scan(a, b, None, False)
        return (h, *torch.autograd.grad(h, (a, b), dh))

    return (make_selective, step_selective) if kind == "selective" else (make_linear,
                                                                           step_linear)


CALLS = {"attention": lambda: attention_call("plain"), "attention-gqa": lambda:
         attention_call("gqa"), "attention-masked": lambda: attention_call("masked"),
         "selective-scan": lambda: scan_call("selective"), "linear-scan": lambda:
         scan_call("linear")}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_forward_and_backward_replay_under_torch_cuda_graph(name):
    make, step = CALLS[name]()
    static = make()
    # Warm up on a side stream (compiles, tunes and caches every launch), as torch's
    # CUDA-graph docs ask.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(*static)
    for _ in range(2):  # new inputs each replay, copied into the captured ones
        fresh = make()
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        expected = step(*fresh)
        for got, want in zip(captured, expected):
            # The same kernels; atomic adds (the scan's dA, dD) may sum in another order.
            assert relative_error(got, want) <= TOLERANCE[DTYPE], name


@pytest.mark.parametrize("name", sorted(CALLS))
def test_launches_never_sync_the_host(name):
    make, step = CALLS[name]()
    inputs = make()
    step(*inputs)  # compiles and tunes (which syncs: outside the check)
    torch.cuda.synchronize()
    with sync_is_an_error():
        for _ in range(2):
            step(*inputs)
    torch.cuda.synchronize()


class Block(torch.nn.Module):
    """A causal GQA attention block in the eager spelling, then a gated MLP."""

    def __init__(self, hidden=256, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, hidden // heads
        self.qkv = torch.nn.Linear(hidden, (heads + 2 * kv_heads) * self.d, bias=False)
        self.o = torch.nn.Linear(hidden, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, 2 * hidden, bias=False)
        self.down = torch.nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.d, self.kv_heads * self.d,
                                     self.kv_heads * self.d], -1)
        q = q.view(b, n, self.heads, self.d).transpose(1, 2)
        k = k.view(b, n, self.kv_heads, self.d).transpose(1, 2)
        v = v.view(b, n, self.kv_heads, self.d).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-2, -1) / self.d ** 0.5
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        p = s.masked_fill(~causal, float("-inf")).softmax(-1)
        h = x + self.o((p @ v).transpose(1, 2).reshape(b, n, -1))
        a, g = self.up(h).chunk(2, -1)
        return h + self.down(F.silu(g) * a)


@pytest.mark.parametrize("train", [False, True], ids=["infer", "train"])
def test_reduce_overhead_matches_eager(train):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Block().cuda().to(DTYPE)
    compiled = ioaware.compile(model, mode="reduce-overhead")
    tol = TOLERANCE[DTYPE]
    for step in range(4):  # warm-up, recording, then replays
        x = rand(2, 128, 256, grad=False)
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration, as a training loop says
        with torch.set_grad_enabled(train):
            out = compiled(x)
            if train:
                out.float().square().mean().backward()
                got = [p.grad.clone() for p in model.parameters()]
                model.zero_grad(set_to_none=True)
            out = out.clone()  # cudagraph trees reuse the output's memory next replay
        with torch.set_grad_enabled(train):
            ref = model(x)
            if train:
                ref.float().square().mean().backward()
                want = [p.grad.clone() for p in model.parameters()]
                model.zero_grad(set_to_none=True)
        assert relative_error(out, ref) <= tol, step
        if train:
            for g, w in zip(got, want):
                assert relative_error(g, w, floor=0.1) <= tol, step
    from torch._dynamo.utils import counters

    assert ioaware.counters["attention"] >= 1
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def attention_plus_cpu_tensor(q, k, v, shift):
    """Attention, then a CPU tensor of many elements moved to the GPU and added."""
    return ((q @ k.transpose(-2, -1)) * 0.125).softmax(-1) @ v + shift.cuda()


def test_cpu_work_is_partitioned_out_and_the_cuda_part_captured():
    """Inductor's graph partitioning (`graph_partition`, on by default in recent torch)
    splits CPU work off and captures the CUDA partitions: a CPU input is no reason to
    skip then, which is why torch 2.11 counted no skip for the first version of the test
    below (it left partitioning on)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    if not inductor_config.graph_partition:
        pytest.skip("graph partitioning is off in this torch")
    counters.clear()
    q, k, v = (rand(1, 2, 128, 64, grad=False) for _ in range(3))
    shift = torch.randn(64)
    fast = ioaware.compile(attention_plus_cpu_tensor, mode="reduce-overhead")
    for _ in range(3):  # warm-up, recording, replay
        out = fast(q, k, v, shift).clone()
        want = attention_plus_cpu_tensor(q, k, v, shift)
        assert relative_error(out, want) <= TOLERANCE[DTYPE]
    assert ioaware.counters["attention"] >= 1
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def test_uncapturable_graph_runs_without_cudagraphs_and_says_why():
    """With partitioning off, a graph that reads a CPU tensor cannot be captured whole:
    it runs compiled without CUDA graphs, gives eager's answer, Inductor counts the skip
    and explain names the CPU device."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    q, k, v = (rand(1, 2, 128, 64, grad=False) for _ in range(3))
    shift = torch.randn(64)  # 64 elements: not a scalar Inductor might move itself
    fast = ioaware.compile(attention_plus_cpu_tensor,
                           options={"triton.cudagraphs": True, "graph_partition": False})
    for _ in range(2):
        out = fast(q, k, v, shift)
        assert relative_error(out, attention_plus_cpu_tensor(q, k, v, shift)) <= \
            TOLERANCE[DTYPE]
    assert ioaware.counters["attention"] >= 1
    assert counters["inductor"]["cudagraph_skips"] >= 1
    said = [f for f in fast._ioaware_backend.explanation.fallbacks if f.kind == "cudagraphs"]
    assert said and "cpu device" in said[0].reason, said
