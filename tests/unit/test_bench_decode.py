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
