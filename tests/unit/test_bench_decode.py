"""`ioaware bench decode`'s paged cache: contiguous pools, pages that hold K/V."""

from __future__ import annotations

import pytest
import torch

from ioaware.bench.decode import paged


@pytest.mark.parametrize("batch", [1, 3])
def test_paged_pools_are_contiguous_and_gather_back_to_kv(batch):
    # B = 1 once gave a pool with the permuted strides of a view (the bench's eager
    # gather then failed in .view at 128k on the GPU).
    k, v = torch.randn(2, batch, 2, 37, 8).unbind(0)
    k_cache, v_cache, table = paged(k, v, 16, torch.Generator().manual_seed(0))
    pages = -(-37 // 16)
    assert table.shape == (batch, pages) and table.dtype == torch.int32
    assert sorted(table.flatten().tolist()) == list(range(batch * pages))
    for pool, want in ((k_cache, k), (v_cache, v)):
        assert pool.shape == (batch * pages, 16, 2, 8) and pool.is_contiguous()
        got = pool[table].view(batch, pages * 16, 2, 8).transpose(1, 2)[:, :, :37]
        assert torch.equal(got, want)


def test_cli_parses_the_generate_and_variant_options():
    from ioaware.cli import build_parser

    options = build_parser().parse_args(
        ["bench", "decode", "--variants", "ioaware paged", "sdpa", "--generate-only",
         "--generate-budget", "60"])
    assert options.variants == ["ioaware paged", "sdpa"]
    assert options.generate_only and options.generate_budget == 60
    options = build_parser().parse_args(["bench", "decode"])
    assert options.variants is None and not options.generate and not options.generate_only


def test_generate_bench_turns_transformers_own_compile_off():
    """generate() with a StaticCache on CUDA wraps the forward in torch.compile
    (reduce-overhead) unless told not to: every row would time that. The flag the bench
    passes is one this transformers' GenerationConfig takes."""
    import transformers

    from ioaware.bench.decode import generate_kwargs

    config = transformers.GenerationConfig(**generate_kwargs(8))
    config.validate(strict=True)
    assert config.disable_compile is True and config.cache_implementation == "static"
    assert config.max_new_tokens == config.min_new_tokens == 8 and not config.do_sample


def test_paged_over_dense_is_printed_per_context():
    from ioaware.bench.decode import DecodeRow, paged_over_dense, render_decode_bench

    rows = [DecodeRow("ioaware decode", 4096, True, 1e-3, 150.0, 0.3, graph_us=50.0),
            DecodeRow("ioaware paged (page 16)", 4096, True, 1e-3, 160.0, 0.3, graph_us=54.0),
            DecodeRow("ioaware decode", 32768, True, 1e-3, 400.0, 0.9, graph_us=380.0)]
    assert paged_over_dense(rows) == [
        "N=4096: paged / dense under CUDA graphs = 1.080 (54.0 / 50.0 µs; the bar is 1.10)"]
    assert "paged / dense" in render_decode_bench(rows, "t")


def test_graph_steps_mark_a_step_and_clone_what_generate_keeps(monkeypatch):
    """Under reduce-overhead, generate() reads a step's logits after the next replay has
    begun: each call must start a cudagraph-trees step and hand back clones."""
    import transformers

    from ioaware.bench.decode import graph_steps

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    kept = torch.randn(1, 1, 8)  # stands for the graph's output memory

    def forward(input_ids, past_key_values=None):
        return transformers.modeling_outputs.CausalLMOutputWithPast(
            logits=kept, past_key_values=past_key_values)

    cache = object()
    out = graph_steps(forward)(torch.zeros(1, 1, dtype=torch.long), past_key_values=cache)
    assert marks == [1]
    assert torch.equal(out.logits, kept) and out.logits.data_ptr() != kept.data_ptr()
    assert out["logits"] is out.logits and out.past_key_values is cache


def test_generate_rows_show_graphs_breaks_and_fallbacks():
    from ioaware.bench.decode import GenerateRow, compile_counts, render_generate_bench

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    def f(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    torch.compile(f, backend="eager")(torch.ones(2))
    assert compile_counts() == (2, 1)
    text = render_generate_bench(
        [GenerateRow("ioaware.compile", 400.0, True, "graph: Inductor failed", 2, 0)], "t")
    assert "graphs" in text and "breaks" in text and "Inductor failed" in text


def test_fallbacks_of_an_ioaware_row_are_counted():
    import ioaware
    from ioaware.bench.decode import _fallbacks
    from ioaware.explain import Fallback

    compiled = ioaware.compile(lambda x: x + 1)
    assert _fallbacks(compiled) == "" and _fallbacks(lambda x: x) == ""
    compiled._ioaware_backend.explanation.fallbacks += [Fallback("graph", "Inductor failed")] * 2
    assert _fallbacks(compiled) == "graph: Inductor failed (x2)"
