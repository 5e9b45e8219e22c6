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

import functools
from collections.abc import Sequence

import sympy
import torch

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import B_IDX, H_IDX, KV_IDX, Q_IDX, SCORE


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


# ---- the general AttentionSpec (issue 3): masks, score mods, extra inputs, dropout ----
#
# The same semantics as eager, written the way eager computes them: materialise the
# [B, Hq, Nq, Nk] logits, mask them per `mask_semantics`, softmax, dropout, P V. The
# backward is torch autograd through this forward (recomputed), so the gradients of
# q, k, v and of every extra input are eager's by construction. Reference only.

_NEG_INF = float("-inf")


def _index_grids(batch: int, heads: int, n_q: int, n_k: int, device: torch.device
                 ) -> dict[sympy.Symbol, torch.Tensor]:
    """b, h, q_idx, kv_idx as int64 tensors that broadcast to [B, Hq, Nq, Nk]."""
    def grid(n: int, axis: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[axis] = n
        return torch.arange(n, device=device).reshape(shape)

    return {B_IDX: grid(batch, 0), H_IDX: grid(heads, 1), Q_IDX: grid(n_q, 2),
            KV_IDX: grid(n_k, 3)}


def _is_integer_valued(expr: sympy.Basic) -> bool:
    return bool(expr.is_integer)


def evaluate(expr: sympy.Basic, env: dict, loads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate a mask / score expression (AttentionSpec grammar) with torch ops.

    env maps the symbols to tensors (or numbers); loads maps input names to tensors,
    read at `name[i0, ...]` by advanced indexing (so autograd sums a bias's gradient
    over the indices that read it, as eager does). Integer arithmetic stays int64:
    `floor(x / c)` is a floor division, `Mod` a Python-style modulo.
    """
    def ev(e: sympy.Basic):
        if e in env:
            return env[e]
        if isinstance(e, sympy.Indexed):
            base = loads[str(e.base)]
            idx = [torch.as_tensor(ev(i), device=base.device).long() for i in e.indices]
            if len(idx) != base.dim():
                raise ValueError(f"load {e} has {len(idx)} indices; input {e.base} has "
                                 f"{base.dim()} dims")
            return base[tuple(torch.broadcast_tensors(*idx))]
        if e is sympy.true or isinstance(e, sympy.logic.boolalg.BooleanTrue):
            return True
        if e is sympy.false or isinstance(e, sympy.logic.boolalg.BooleanFalse):
            return False
        if e.is_Integer:
            return int(e)
        if e.is_Number:
            return float(e)
        if isinstance(e, sympy.floor):
            arg = e.args[0]
            num, den = sympy.fraction(sympy.together(arg))
            if _is_integer_valued(num) and den.is_Integer:
                return torch.div(torch.as_tensor(ev(num)), int(den), rounding_mode="floor")
            return torch.floor(torch.as_tensor(ev(arg)))
        if isinstance(e, sympy.ceiling):
            return -ev(sympy.floor(-e.args[0]))
        if isinstance(e, sympy.Add):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out + ev(a)
            return out
        if isinstance(e, sympy.Mul):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out * ev(a)
            return out
        if isinstance(e, sympy.Pow):
            base = torch.as_tensor(ev(e.args[0]))
            exp = e.args[1]
            if not (exp.is_Integer and int(exp) >= 0):
                base = base.float() if not base.is_floating_point() else base
            return base ** (int(exp) if exp.is_Integer else float(exp))
        if isinstance(e, sympy.Mod):
            return torch.remainder(torch.as_tensor(ev(e.args[0])), ev(e.args[1]))
        if isinstance(e, (sympy.Min, sympy.Max)):
            fn = torch.minimum if isinstance(e, sympy.Min) else torch.maximum
            vals = [torch.as_tensor(ev(a)) for a in e.args]
            out = vals[0]
            for v in vals[1:]:
                out = fn(*torch.broadcast_tensors(*_common(out, v)))
            return out
        if isinstance(e, sympy.Abs):
            return torch.abs(torch.as_tensor(ev(e.args[0])))
        if isinstance(e, (sympy.exp, sympy.log, sympy.tanh)):
            fn = {sympy.exp: torch.exp, sympy.log: torch.log, sympy.tanh: torch.tanh}[e.func]
            return fn(torch.as_tensor(ev(e.args[0])).float())
        if isinstance(e, sympy.Piecewise):
            out = None
            for value, cond in reversed(e.args):
                v = torch.as_tensor(ev(value))
                if out is None:
                    out = v  # the last branch (usually `True`) is the default
                    continue
                c = torch.as_tensor(ev(cond))
                out = torch.where(c, *_common(v, out))
            return out
        if isinstance(e, sympy.core.relational.Relational):
            lhs, rhs = torch.as_tensor(ev(e.lhs)), torch.as_tensor(ev(e.rhs))
            op = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge,
                  "==": torch.eq, "!=": torch.ne}[e.rel_op]
            return op(lhs, rhs)
        if isinstance(e, (sympy.And, sympy.Or)):
            fn = torch.logical_and if isinstance(e, sympy.And) else torch.logical_or
            vals = [torch.as_tensor(ev(a)) for a in e.args]
            out = vals[0]
            for v in vals[1:]:
                out = fn(out, v)
            return out
        if isinstance(e, sympy.Not):
            return torch.logical_not(torch.as_tensor(ev(e.args[0])))
        raise ValueError(f"expression {e} ({e.func.__name__}) is outside the AttentionSpec "
                         "grammar")

    return ev(expr)


def _common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Promote two operands of where/min/max to one dtype (as torch's type promotion)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


@functools.lru_cache(maxsize=256)
def _spec_exprs(spec: AttentionSpec) -> tuple[sympy.Basic | None, sympy.Basic | None]:
    """(mask, score_mod) parsed once per Spec: the CPU path evaluates them every call."""
    return spec.mask_expr(), spec.score_mod_expr()


def spec_logits(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor,
                inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits fp32 [B, Hq, Nq, Nk] per mask_semantics, visible bool [broadcastable])."""
    batch, h_q, n_q, _ = q.shape
    n_k = k.shape[2]
    group = h_q // k.shape[1]
    s = torch.matmul(q.float(), _expand_kv(k, group).float().transpose(-1, -2)) * spec.scale
    env: dict = _index_grids(batch, h_q, n_q, n_k, q.device)
    loads = {t.name: x for t, x in zip(spec.inputs, inputs)}
    visible = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=q.device)
    mask, score_mod = _spec_exprs(spec)
    if mask is not None:
        visible = torch.as_tensor(evaluate(mask, env, loads), device=q.device).bool()
    if spec.causal:
        visible = visible & (env[KV_IDX] <= env[Q_IDX])
    logit = s
    if score_mod is not None:
        logit = torch.as_tensor(evaluate(score_mod, {**env, SCORE: s}, loads)).float()
        logit = logit.expand(s.shape)
        if spec.round_logits and spec.torch_dtype != torch.float32:
            # eager's 16-bit add rounded the logit; its gradient is the identity
            logit = logit + (logit.to(spec.torch_dtype).float() - logit).detach()
    visible = visible.expand(s.shape)
    if spec.mask_semantics in ("neg_inf", "safe"):
        logit = logit.masked_fill(~visible, _NEG_INF)
    elif spec.mask_semantics == "neg_inf_add":  # the NaN of an empty row reaches q and k
        logit = logit + torch.where(visible, 0.0, _NEG_INF)
    elif spec.mask_semantics == "fill":
        logit = logit.masked_fill(~visible, spec.mask_fill)
    else:  # "add": the fill is added, so the score's gradient still flows
        if spec.round_fill and spec.torch_dtype != torch.float32:
            # eager adds in the scores' 16-bit dtype: masked logits are the rounded sums
            # (the rounding's gradient is the identity, as autograd takes it in eager)
            rounded = (logit.to(spec.torch_dtype) + spec.mask_fill).float()
            fill = (rounded - logit).detach()
        else:
            fill = spec.mask_fill
        logit = logit + torch.where(visible, 0.0, fill)
    return logit, visible


def dequantize(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scales: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(q, k, v) with each FP8 operand x8 of `spec.fp8` read as x8 · s_x in fp32 (exact:
    an e4m3 value times an fp32 scale, rounded once), the others as they are."""
    if not spec.fp8:
        return q, k, v
    scale = dict(zip(spec.fp8, scales))
    return tuple(x.float() * scale[name].float().reshape(()) if name in scale else x
                 for name, x in (("q", q), ("k", k), ("v", v)))


def spec_forward(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 inputs: Sequence[torch.Tensor], seed: torch.Tensor | None,
                 scales: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in spec.dtype, lse fp32) of the general Spec, differentiable by torch autograd
    (the FP8 operands' scales too). scales: the FP8 operands' (`dequantize`)."""
    q, k, v = dequantize(spec, q, k, v, scales)
    logit, _ = spec_logits(spec, q, k, inputs)
    lse = torch.logsumexp(logit, dim=-1)
    p = torch.softmax(logit, dim=-1)
    if spec.mask_semantics == "safe":  # SDPA: a row with no visible key outputs 0
        p = torch.where(torch.isinf(lse).unsqueeze(-1) & (lse < 0).unsqueeze(-1), 0.0, p)
    if spec.dropout_p > 0:
        keep = dropout_keep_mask(spec.dropout_p, seed, tuple(p.shape), p.device)
        p = torch.where(keep, p / (1.0 - spec.dropout_p), 0.0)
    group = q.shape[1] // k.shape[1]
    out = torch.matmul(p, _expand_kv(v, group).float())
    return out.to(spec.torch_dtype), lse.float()


def spec_backward(spec: AttentionSpec, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                  v: torch.Tensor, inputs: Sequence[torch.Tensor], seed: torch.Tensor | None,
                  dlse: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv, *d_inputs of the requires-grad inputs), by autograd through
    `spec_forward` (recomputed)."""
    # A custom op's implementation runs below the autograd dispatch keys (they are in
    # the thread's exclude set); lift that for this private recomputation.
    autograd_on = torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                                  torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU))
    with torch.enable_grad(), autograd_on:
        leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        grad_inputs = [x.detach().requires_grad_(True) if t.requires_grad else x
                       for t, x in zip(spec.inputs, inputs)]
        out, lse = spec_forward(spec, *leaves, grad_inputs, seed)
        wrt = leaves + [x for t, x in zip(spec.inputs, grad_inputs) if t.requires_grad]
        outputs, grads = [out], [dout.to(out.dtype)]
        if dlse is not None:
            outputs.append(lse)
            grads.append(dlse.float())
        got = torch.autograd.grad(outputs, wrt, grads, allow_unused=True)
    return tuple(torch.zeros_like(w) if g is None else g.to(w.dtype) for g, w in zip(got, wrt))


# ---- dropout: the keep mask the kernels draw, reproduced bit for bit ----------------
#
# Philox4x32-10 (Salmon et al., 2011) as triton.language.randint computes it: counter
# (offset_lo, offset_hi, 0, 0), key (seed_lo, seed_hi), first output word. The element
# (b, h, q_idx, kv_idx) of a [B, Hq, Nq, Nk] problem uses counter
# offset + ((b·Hq + h)·Nq + q_idx)·Nk + kv_idx; it is kept iff its top 24 bits are
# >= round(p · 2^24), so the keep probability is 1 - p up to 2^-24.

_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_M32 = 0xFFFFFFFF
DROPOUT_BITS = 24


def dropout_threshold(p: float) -> int:
    """Integer threshold on the 24-bit draw: dropped iff draw < threshold."""
    return round(p * (1 << DROPOUT_BITS))


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a·b for uint32 a (int64 tensor) and uint32 b, exact in
    int64 by splitting b into 16-bit halves."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_part = a * b_lo  # < 2^48
    mid = a * b_hi + (lo_part >> 16)  # < 2^49
    high = mid >> 16
    low = ((mid & 0xFFFF) << 16) | (lo_part & 0xFFFF)
    return high, low


def philox_randint(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """triton.language.randint(seed, counter) as int64 values in [0, 2^32)."""
    seed &= (1 << 64) - 1
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1 = counter & _M32, (counter >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0


def dropout_keep_mask(p: float, seed: torch.Tensor | None, shape: tuple[int, int, int, int],
                      device: torch.device | str) -> torch.Tensor:
    """Bool [B, Hq, Nq, Nk]: the elements of P the kernels keep for this (seed, offset)."""
    if seed is None:
        raise ValueError("seed is required when dropout_p > 0: an int64 tensor [2] = "
                         "(seed, offset)")
    seed_value, offset = (int(x) for x in seed.detach().cpu().tolist())
    batch, heads, n_q, n_k = shape
    counter = torch.arange(batch * heads * n_q * n_k, device=device, dtype=torch.int64)
    counter = (counter + offset) & ((1 << 63) - 1)
    draw = philox_randint(seed_value, counter) >> (32 - DROPOUT_BITS)
    return (draw >= dropout_threshold(p)).reshape(shape)
