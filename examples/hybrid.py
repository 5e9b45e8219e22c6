"""A small hybrid of attention and Mamba layers (the Jamba / Zamba pattern).

Mamba layers carry most of the sequence mixing; one Llama-style attention layer (GQA,
rotary, causal) sits among them. ioaware should rewrite the attention region and the
scan regions, each with its own kernel.

    python examples/hybrid.py
    ioaware report hybrid
"""

from __future__ import annotations

import torch
from torch import nn

from ioaware.examples.llama import LlamaBlock, TokenLM, make_token_lm
from ioaware.examples.mamba import MambaBlock

# Layer kinds, bottom to top: Mamba, attention, Mamba.
LAYOUT = ("mamba", "attention", "mamba")


class Hybrid(TokenLM):
    def __init__(self, vocab: int = 256, d_model: int = 32, n_heads: int = 4,
                 n_kv_heads: int = 2) -> None:
        blocks = [LlamaBlock(d_model, n_heads, n_kv_heads) if kind == "attention"
                  else MambaBlock(d_model) for kind in LAYOUT]
        super().__init__(blocks, vocab, d_model)


def make(batch: int = 2, seq_len: int = 16, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", vocab: int = 256) -> tuple[nn.Module, tuple]:
    """(model, (token_ids,)) with fixed random weights and tokens: ids [batch, seq_len]."""
    return make_token_lm(lambda v: Hybrid(vocab=v), batch, seq_len, dtype, device, vocab)


if __name__ == "__main__":
    model, args = make()
    print(f"logits {tuple(model(*args).shape)}")
