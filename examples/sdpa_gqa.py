"""A Llama-style decoder block that already calls SDPA, with grouped-query attention.

4 query heads share 2 key/value heads (`enable_gqa=True`); RMSNorm and a SwiGLU MLP as
in Llama. ioaware should recognise the SDPA call and route it to its own kernel.

    python examples/sdpa_gqa.py
    ioaware report sdpa_gqa
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ioaware.examples.llama import RMSNorm


class GQABlock(nn.Module):
    def __init__(self, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"{d_model=} must divide by {n_heads=}, which must divide by {n_kv_heads=}"
            )
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.norm1 = RMSNorm(d_model)
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = RMSNorm(d_model)
        hidden = 4 * d_model
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, seq, d_model] -> same shape."""
        b, n, c = x.shape
        h = self.norm1(x)
        q = self.wq(h).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(h).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(h).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(y.transpose(1, 2).reshape(b, n, c))
        h = self.norm2(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


def make(batch: int = 2, seq_len: int = 64, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", d_model: int = 64) -> tuple[nn.Module, tuple]:
    """(block, (x,)) with fixed random weights and input x [batch, seq_len, d_model]."""
    torch.manual_seed(0)
    with torch.device(device):
        model = GQABlock(d_model=d_model).to(dtype)
        x = torch.randn(batch, seq_len, d_model, dtype=dtype)
    return model, (x,)


if __name__ == "__main__":
    model, args = make()
    print(f"output {tuple(model(*args).shape)}")
