"""A minimal paged-KV-cache decoder step in plain PyTorch (vLLM's cache layout).

The cache is a pool of fixed-size pages, `[num_blocks, block_size, kv_heads, head_dim]`
for K and for V; a block allocator hands out free pages; each sequence's block table row
lists its pages in order, so memory is reserved a page at a time, not for the longest
sequence. A decode step appends the new token's K/V at slot len % block_size of its last
page (allocating a page when that one is full), then attends by gathering the pages
through the block table:

    k = k_pages[block_table].view(B, M * block_size, kv_heads, head_dim).transpose(1, 2)

ioaware compiles the step with no code change and reads the pages in-kernel through the
table (no gathered copy). The other spellings of the gather (`index_select`,
`torch.gather`) are in `GATHERS`.

    python examples/paged_decode.py
    ioaware report paged_decode
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BlockAllocator:
    """Free-list allocator of page ids in [0, num_blocks)."""

    def __init__(self, num_blocks: int) -> None:
        self.free = list(range(num_blocks - 1, -1, -1))

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError("paged cache is full: no free block")
        return self.free.pop()

    def release(self, block: int) -> None:
        self.free.append(block)


class PagedKVCache:
    """K/V pages, the block table [B, max_blocks] (int32) and each sequence's length."""

    def __init__(self, batch: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, max_blocks: int, dtype=torch.float32, device="cpu") -> None:
        self.block_size = block_size
        self.k_pages = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype,
                                   device=device)
        self.v_pages = torch.zeros_like(self.k_pages)
        self.block_table = torch.zeros(batch, max_blocks, dtype=torch.int32, device=device)
        self.lengths = [0] * batch
        self.allocator = BlockAllocator(num_blocks)

    def append(self, k: torch.Tensor, v: torch.Tensor, rows=None) -> None:
        """Write one token's k, v [B, kv_heads, head_dim] at the end of each sequence
        (of the sequences `rows` only, when given)."""
        for b in range(len(self.lengths)) if rows is None else rows:
            n = self.lengths[b]
            page, slot = divmod(n, self.block_size)
            if slot == 0:
                self.block_table[b, page] = self.allocator.allocate()
            block = int(self.block_table[b, page])
            self.k_pages[block, slot] = k[b]
            self.v_pages[block, slot] = v[b]
            self.lengths[b] = n + 1

    def seq_lens(self) -> torch.Tensor:
        return torch.tensor(self.lengths, device=self.block_table.device)


def gather_indexing(pages, table):
    """pages[table]: [B, M, block, H, d]."""
    return pages[table]


def gather_index_select(pages, table):
    return pages.index_select(0, table.reshape(-1)).view(*table.shape, *pages.shape[1:])


def gather_torch_gather(pages, table):
    index = table.reshape(-1, 1, 1, 1).long().expand(-1, *pages.shape[1:])
    return torch.gather(pages, 0, index).view(*table.shape, *pages.shape[1:])


GATHERS = {"indexing": gather_indexing, "index_select": gather_index_select,
           "gather": gather_torch_gather}


class PagedDecoderStep(nn.Module):
    """One attention layer's decode step over a paged cache (GQA, RoPE left out)."""

    def __init__(self, d_model: int = 256, n_heads: int = 8, n_kv_heads: int = 2,
                 gather: str = "indexing") -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.gather = GATHERS[gather]

    def forward(self, x: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                block_table: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """x [B, 1, d_model] (the new token, its K/V already appended) -> [B, 1, d_model]."""
        b, n, c = x.shape
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        block = k_pages.shape[1]
        keys = block_table.shape[1] * block
        k = self.gather(k_pages, block_table).view(b, keys, self.n_kv_heads, self.head_dim)
        v = self.gather(v_pages, block_table).view(b, keys, self.n_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        # keys past a sequence's length (its last page's tail, pages it has not yet got)
        visible = torch.arange(keys, device=x.device)[None, :] < seq_lens[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :],
                                           enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(b, n, c))


def make(batch: int = 4, context: int = 1000, block_size: int = 16, gather: str = "indexing",
         dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         d_model: int = 256, n_heads: int = 8, n_kv_heads: int = 2
         ) -> tuple[nn.Module, tuple]:
    """(step, (x, k_pages, v_pages, block_table, seq_lens)): a cache filled with
    sequences of about `context` tokens (each a little shorter than the last), its
    pages handed out interleaved across sequences as a server's allocator would."""
    torch.manual_seed(0)
    model = PagedDecoderStep(d_model, n_heads, n_kv_heads, gather).to(device, dtype)
    head_dim = d_model // n_heads
    max_blocks = -(-context // block_size)
    # filled on the CPU (the allocator reads the table), then moved (the report's meta)
    cache = PagedKVCache(batch, batch * max_blocks + 4, block_size, n_kv_heads, head_dim,
                         max_blocks, dtype)
    lengths = [context - 7 * b for b in range(batch)]
    for t in range(max(lengths)):
        k, v = (torch.randn(batch, n_kv_heads, head_dim, dtype=dtype) for _ in range(2))
        cache.append(k, v, rows=[b for b in range(batch) if t < lengths[b]])
    x = torch.randn(batch, 1, d_model, dtype=dtype, device=device)
    tensors = (cache.k_pages, cache.v_pages, cache.block_table, cache.seq_lens())
    return model, (x, *(t.to(device) for t in tensors))


if __name__ == "__main__":
    model, args = make()
    print(f"output {tuple(model(*args).shape)}")
