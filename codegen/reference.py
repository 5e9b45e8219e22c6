"""Exact attention in plain torch, fp32 math: the CPU path and the tests' yardstick.

    S = scale · Q Kᵀ  (keys j > i set to -inf when causal)      lse = logsumexp_j S
    P = exp(S - lse)                                             O   = P V
Backward (the same formulas the kernels use, FlashAttention-2 §3.2):
    dV = Pᵀ dO     dP = dO Vᵀ     delta = rowsum(dO ∘ O) - dlse     dS = P ∘ (dP - delta)
    dQ = scale · dS K             dK = scale · dSᵀ Q
GQA: query head h reads kv head h // G, G = Hq / Hkv; dK, dV sum over the G heads.

Shapes: q [B, Hq, Nq, d], k [B, Hkv, Nk, d], v [B, Hkv, Nk, dv]; out [B, Hq, Nq, dv]
in q.dtype, lse [B, Hq, Nq] fp32. This materialises the [Nq, Nk] scores: reference
only, never the fast path.
"""

from __future__ import annotations

import torch


def _expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """[B, Hkv, N, d] -> [B, Hkv·group, N, d], kv head g repeated for its query heads."""
    return x.repeat_interleave(group, dim=1) if group > 1 else x


def _probabilities(
    q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, lse) in fp32; P is 0 (not NaN) on rows with no visible key."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        n_q, n_k = s.shape[-2], s.shape[-1]
        visible = torch.ones(n_q, n_k, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    # exp(-inf - (-inf)) would be NaN on an empty row; such a row has P = 0.
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    return p, lse


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B,Hq,Nq,dv] in q.dtype, lse [B,Hq,Nq] fp32). Nk = 0 gives out = 0, lse = -inf."""
    group = q.shape[1] // k.shape[1]
    p, lse = _probabilities(q, _expand_kv(k, group), scale, causal)
    out = torch.matmul(p, _expand_kv(v, group).float())
    return out.to(q.dtype).contiguous(), lse.float().contiguous()


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    causal: bool,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the dtypes of (q, k, v); `out` and `lse` as the forward made them."""
    batch, h_q = q.shape[:2]
    h_kv, n_k = k.shape[1], k.shape[2]
    group = h_q // h_kv
    p, _ = _probabilities(q, _expand_kv(k, group), scale, causal)
    do = dout.float()
    delta = (do * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, _expand_kv(v, group).float().transpose(-1, -2))
    ds = p * (dp - delta.unsqueeze(-1))
    dq = torch.matmul(ds, _expand_kv(k, group).float()) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale
    # Sum the G query heads of each kv head: [B, Hkv, G, Nk, d] -> [B, Hkv, Nk, d].
    dk = dk.reshape(batch, h_kv, group, n_k, -1).sum(2)
    dv = dv.reshape(batch, h_kv, group, n_k, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
