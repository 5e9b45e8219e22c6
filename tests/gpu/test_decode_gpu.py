"""The compiled decode kernels on a CUDA GPU: the interpreter tier's properties
(tests/interp/test_decode_kernel.py) at GPU sizes, contexts up to a few thousand, with
the tiles and split counts the op chooses from the device's profile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interp"))
from test_decode_kernel import _check_against_eager, problems


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems(), st.integers(17, 5000), st.sampled_from([64, 128]))
def test_decode_matches_eager_on_gpu(p, n_k, d):
    _check_against_eager({**p, "n_k": n_k, "d": d}, device="cuda")


def _paged_problem(n: int = 3000):
    import math

    from ioaware.bench.decode import paged
    from ioaware.codegen.attention.spec import AttentionSpec

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 1, 128, generator=gen).to("cuda", torch.bfloat16)
    k, v = (torch.randn(2, 2, n, 128, generator=gen).to("cuda", torch.bfloat16)
            for _ in range(2))
    spec = AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False,
                         scale=1 / math.sqrt(128))
    return q, k, v, spec, *paged(k, v, 16, gen)


def test_paged_replays_from_a_cuda_graph_as_dense():
    """The paged op, its in-kernel pool check and asynchronous assert included, is
    captured in a CUDA graph and replays to the dense kernel's output (the same tiles
    and splits: the same sums)."""
    from ioaware.codegen.decode import op as decode_op

    q, k, v, spec, k_cache, v_cache, table = _paged_problem()
    dense = decode_op.decode_attention(q, k, v, spec)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: compiles and picks tiles
        decode_op.paged_decode_attention(q, k_cache, v_cache, table, k.shape[2], spec)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_op.paged_decode_attention(q, k_cache, v_cache, table, k.shape[2], spec)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(out.float(), dense.float(), atol=1e-2, rtol=1e-2)


def test_paged_table_outside_the_pool_is_a_device_assert():
    """A block-table entry outside the pool: the kernel never dereferences it, flags it,
    and the op's asynchronous assert fails the process's next sync (as eager's
    out-of-range index does). In a child process: the assert poisons the context."""
    import subprocess

    code = (
        "import torch\n"
        "from ioaware.bench.decode import paged\n"
        "from ioaware.codegen.attention.spec import AttentionSpec\n"
        "from ioaware.codegen.decode import op\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "q = torch.randn(2, 8, 1, 64, generator=gen).cuda()\n"
        "k, v = (torch.randn(2, 2, 1000, 64, generator=gen).cuda() for _ in range(2))\n"
        "kc, vc, table = paged(k, v, 16, gen)\n"
        "table[1, 3] = kc.shape[0] + 5\n"
        "spec = AttentionSpec(head_dim=64, head_dim_v=64, dtype='float32', causal=False,"
        " scale=0.125)\n"
        "op.paged_decode_attention(q, kc, vc, table, 1000, spec)\n"
        "torch.cuda.synchronize()\n"
        "print('NO ERROR')\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "NO ERROR" not in done.stdout
    assert "device-side assert" in done.stderr or "assert" in done.stderr.lower(), done.stderr


@pytest.mark.parametrize("gather", ["indexing", "index_select", "gather"])
def test_paged_example_materialises_no_gather(gather):
    """examples/paged_decode.py through ioaware.compile on the GPU: equal to eager, and
    the step's peak memory stays far below the gathered K/V that eager allocates (the
    pages are read in place through the table)."""
    import ioaware
    from ioaware.examples import paged_decode

    model, args = paged_decode.make(batch=4, context=4096, block_size=16, gather=gather,
                                    dtype=torch.bfloat16, device="cuda", d_model=1024,
                                    n_heads=8, n_kv_heads=2)
    gathered = 2 * args[3].numel() * 16 * 2 * 128 * 2  # K and V, every table entry's page

    def peak(fn) -> tuple[torch.Tensor, int]:
        fn(*args)  # warm-up: compiles, allocates what persists
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(*args)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base

    with torch.no_grad():
        want, eager_peak = peak(model)
        got, ioaware_peak = peak(ioaware.compile(model))
    assert eager_peak >= gathered, (eager_peak, gathered)  # the measure sees a gather
    assert ioaware_peak < gathered / 4, (ioaware_peak, gathered)
    assert (got.float() - want.float()).norm() / want.float().norm() < 2e-2


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_static_cache_generate_compiles_twice_and_decodes(mode):
    """generate() with a StaticCache as `ioaware bench decode --generate-only` runs it
    (a tiny fp32 model here): greedy tokens equal eager's, two graphs (prefill, the
    decode step), no graph break, no cudagraph skip, and the decode step's attention on
    the decode kernels. Under reduce-overhead through the bench's `graph_steps`."""
    import ioaware
    from ioaware import backend
    from ioaware.bench.decode import (
        compile_counts,
        generate_kwargs,
        generate_model,
        graph_steps,
    )

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = generate_model(2, 128, 4, 2, dtype=torch.float32)
    ids = torch.randint(1, 32000, (1, 24), device="cuda")
    kwargs = generate_kwargs(24)
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
        before = backend.counters["decode"]
        compiled = ioaware.compile(model.forward, mode=mode)
        model.forward = graph_steps(compiled) if mode else compiled
        for _ in range(2):  # compiles (and records the graphs), then replays
            got = model.generate(ids, **kwargs)
            assert got.tolist() == want.tolist()
    assert compile_counts() == (2, 0)
    assert backend.counters["decode"] - before >= 2
    assert not compiled._ioaware_backend.explanation.fallbacks
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
