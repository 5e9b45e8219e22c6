"""A small Llama-style decoder with grouped-query attention, written out in plain PyTorch.

RMSNorm, rotary position embeddings (cos/sin built from the positions inside forward),
grouped-query attention (8 query heads share 2 key/value heads through `expand` +
`reshape`, as transformers' `repeat_kv` does), a causal `tril` mask through
`masked_fill`, softmax, and a SwiGLU MLP. Tiny sizes, so it runs in seconds on a CPU.

    python examples/llama.py
    ioaware report llama --seq-len 32768 --device h100
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(n: int, head_dim: int, device: torch.device, dtype: torch.dtype,
           base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n, head_dim] for positions 0..n-1 (RoFormer, §3.4.2; Llama's layout)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(n, device=device).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class GQAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"{d_model=} must divide by {n_heads=}, which must divide by {n_kv_heads=}"
            )
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """[b, kv_heads, n, d] -> [b, heads, n, d]: each kv head serves a group of queries."""
        b, h, n, d = x.shape
        groups = self.n_heads // self.n_kv_heads
        return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary(n, self.head_dim, x.device, x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        y = torch.matmul(probs, v)
        return self.wo(y.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)) (Shazeer, GLU Variants Improve Transformer)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = GQAttention(d_model, n_heads, n_kv_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, 4 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TokenLM(nn.Module):
    """Token ids → embedding → `blocks` → RMSNorm → logits over the vocabulary: the shell
    the Llama, Mamba and hybrid examples share."""

    def __init__(self, blocks: list[nn.Module], vocab: int, d_model: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [batch, seq] token ids -> logits [batch, seq, vocab]."""
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def make_token_lm(build: Callable[[int], nn.Module], batch: int, seq_len: int,
                  dtype: torch.dtype, device: str | torch.device, vocab: int
                  ) -> tuple[nn.Module, tuple]:
    """(build(vocab), (token_ids,)) with fixed random weights and tokens [batch, seq_len]."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build(vocab).to(dtype)
        tokens = torch.randint(0, vocab, (batch, seq_len))
    return model, (tokens,)


class Llama(TokenLM):
    def __init__(self, vocab: int = 256, d_model: int = 64, n_heads: int = 8,
                 n_kv_heads: int = 2, n_layers: int = 2) -> None:
        blocks = [LlamaBlock(d_model, n_heads, n_kv_heads) for _ in range(n_layers)]
        super().__init__(blocks, vocab, d_model)


def make(batch: int = 2, seq_len: int = 64, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", vocab: int = 256) -> tuple[nn.Module, tuple]:
    """(model, (token_ids,)) with fixed random weights and tokens: ids [batch, seq_len]."""
    return make_token_lm(lambda v: Llama(vocab=v), batch, seq_len, dtype, device, vocab)


if __name__ == "__main__":
    model, args = make()
    print(f"logits {tuple(model(*args).shape)}")
