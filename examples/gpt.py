"""A small GPT-style decoder written the plain way, as people write it before any fusing.

Attention is spelled out (`q @ kᵀ / sqrt(d)`, a `tril` mask through `masked_fill`, softmax,
`@ v`) so ioaware has something to find. Sizes are tiny so it runs in seconds on a CPU.

    python examples/gpt.py          # runs eager, prints the output shape
    ioaware report gpt              # what ioaware makes of it
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"{d_model=} must be a multiple of {n_heads=}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.n_heads
        q, k, v = self.qkv(x).split(c, dim=-1)
        # [b, n, c] -> [b, heads, n, d]
        q, k, v = (t.view(b, n, self.n_heads, d).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(d)
        # The causal mask built where it is used, so the compiler sees it is index-only
        # (a registered buffer reaches the graph as data; see the fallback it gets).
        mask = torch.tril(torch.ones(n, n, device=x.device))
        att = att.masked_fill(mask == 0, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = att @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, d_model: int = 64, n_heads: int = 4,
                 n_layers: int = 2, max_seq: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [batch, seq] token ids -> logits [batch, seq, vocab]."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def make(batch: int = 2, seq_len: int = 64, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", vocab: int = 256) -> tuple[nn.Module, tuple]:
    """(model, (token_ids,)) with fixed random weights and tokens: ids [batch, seq_len].

    The position table has seq_len rows, so any seq_len works (`ioaware report gpt
    --seq-len 32768` builds it on the meta device, where it costs nothing).
    """
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(vocab=vocab, max_seq=seq_len).to(dtype)
        tokens = torch.randint(0, vocab, (batch, seq_len))
    return model, (tokens,)


if __name__ == "__main__":
    model, args = make()
    print(f"logits {tuple(model(*args).shape)}")
