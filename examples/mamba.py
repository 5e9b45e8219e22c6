"""A small Mamba-style model: the selective scan written as a plain Python loop over time.

This is the form of transformers' slow path (`MambaMixer.slow_forward`): discretise
(Ā = exp(Δ·A), B̄u = Δ·B·u), then for t = 0..L-1: h = Ā_t·h + B̄u_t, y_t = h·C_t; add D·u
and gate with silu(z). Written this way every step's (batch, d_inner, d_state) state
goes through memory; a scan kernel keeps it on chip (Gu & Dao, Mamba, §3.3). dynamo
unrolls the loop, so the sequence length is fixed when the graph is captured and small
defaults keep that quick.

    python examples/mamba.py
    ioaware report mamba
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ioaware.examples.llama import RMSNorm, TokenLM, make_token_lm


class MambaMixer(nn.Module):
    """in_proj → causal depthwise conv → silu → selective scan → gate → out_proj."""

    def __init__(self, d_model: int, d_state: int = 8, expand: int = 2,
                 d_conv: int = 4) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        # S4D-real initialisation: A = -(1, 2, ..., d_state) for every channel.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, seq, d_model] -> same shape."""
        b, n, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [b, n, d_inner] each
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :n]).transpose(1, 2)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # [b, n, d_inner]
        A = -torch.exp(self.A_log.float())  # [d_inner, d_state]
        # Discretise (zero-order hold for A, Euler for B): [b, n, d_inner, d_state]
        dA = torch.exp(delta[..., None] * A)
        dBu = delta[..., None] * B[:, :, None, :] * u[..., None]
        h = torch.zeros(b, self.d_inner, self.d_state, device=x.device, dtype=dA.dtype)
        ys = []
        for t in range(n):
            h = dA[:, t] * h + dBu[:, t]
            ys.append(torch.matmul(h, C[:, t, :, None].to(h.dtype))[..., 0])
        y = torch.stack(ys, dim=1).to(x.dtype) + u * self.D
        return self.out_proj(y * F.silu(z))


class MambaBlock(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = MambaMixer(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class Mamba(TokenLM):
    def __init__(self, vocab: int = 256, d_model: int = 32, n_layers: int = 2) -> None:
        super().__init__([MambaBlock(d_model) for _ in range(n_layers)], vocab, d_model)


def make(batch: int = 2, seq_len: int = 16, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", vocab: int = 256) -> tuple[nn.Module, tuple]:
    """(model, (token_ids,)) with fixed random weights and tokens: ids [batch, seq_len]."""
    return make_token_lm(lambda v: Mamba(vocab=v), batch, seq_len, dtype, device, vocab)


if __name__ == "__main__":
    model, args = make()
    print(f"logits {tuple(model(*args).shape)}")
