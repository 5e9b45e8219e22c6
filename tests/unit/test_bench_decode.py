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
