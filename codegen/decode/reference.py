"""The decode family's math in torch: the CPU path without the interpreter and the
tests' yardstick for the split-KV algorithm.

`gather_pages` is what a paged cache means (the dense K/V a block table addresses);
`split_forward` computes attention split by split and merges the partials by their
log-sum-exp, as the kernels do, so the merge itself is checked against one softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ioaware.codegen.attention import reference as attention_reference
from ioaware.codegen.attention.spec import AttentionSpec


def gather_pages(cache: torch.Tensor, block_table: torch.Tensor, n_k: int) -> torch.Tensor:
    """Dense [B, Hkv, n_k, d] of a paged cache [num_pages, page, Hkv, d]: key n of
    batch b is cache[block_table[b, n // page], n % page]."""
    page = cache.shape[1]
    n_pages = -(-n_k // page)
    dense = cache[block_table[:, :n_pages].long()]  # [B, n_pages, page, Hkv, d]
    dense = dense.flatten(1, 2)[:, :n_k]
    return dense.transpose(1, 2)


def decode_forward(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in q.dtype, lse fp32) of dense decode: the attention family's reference."""
    out, lse = attention_reference.spec_forward(spec, q, k, v, list(inputs), None)
    return out.contiguous(), lse.contiguous()


def merge_partials(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashDecoding's merge: lse = log Σ_s e^lse_s, out = Σ_s e^(lse_s − lse) out_s
    (fp32; a split that saw no key has lse_s = −inf and weight 0)."""
    lse = torch.logsumexp(torch.stack(lses), dim=0)
    safe = torch.where(torch.isinf(lse), 0.0, lse)
    out = sum(torch.exp(ls - safe).unsqueeze(-1) * o.float() for o, ls in zip(outs, lses))
    return out, lse


def split_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention computed over `splits` key ranges and merged (fp32)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).float()
    v = v.repeat_interleave(group, 1).float()
    chunk = -(-k.shape[2] // splits)
    outs, lses = [], []
    for lo in range(0, k.shape[2], chunk):
        s = q.float() @ k[:, :, lo:lo + chunk].transpose(-1, -2) * scale
        lses.append(torch.logsumexp(s, -1))
        outs.append(torch.softmax(s, -1) @ v[:, :, lo:lo + chunk])
    return merge_partials(outs, lses)
