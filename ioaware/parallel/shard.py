"""Attention of one shard pair: queries [q0, q0+Nq) against keys [k0, k0+Nk) of the
global sequence, with the mask and score mod evaluated at global positions.

    global_spec(spec)       the Spec whose kernels read the offsets at run time
    pair_may_see(...)       False when the mask empties the whole pair (skip it)
    shard_forward(...)      (out, lse) of the pair: natural-log lse, -inf for empty rows
    shard_backward(...)     (dq, dk, dv, d_inputs) of the pair from the *merged* out, lse

How the positions become global. `global_spec` substitutes

    q_idx  -> q_idx  + cp_q0[0]        kv_idx -> kv_idx + cp_k0[0]

in the mask and the score mod (and adds `kv_idx <= q_idx` to the mask for causal), and
appends the two one-element int64 tensors cp_q0, cp_k0 to the Spec's inputs. The
existing attention kernels then evaluate causal, window, document, padding, ALiBi and
bias terms at the global positions: the offsets are runtime values, so one compiled
kernel serves every pair, and no existing Spec (or its cache key) changes. Bias tables
are the *global* tensors, read at the shifted positions; per-token vectors are read
from the pair's slices of them (`global_plan`), which keeps their loads plain.

Masked logits drop (SAFE semantics): a row with no visible key in this pair gives
lse = -inf and out = 0, which the log-sum-exp merge treats as "no contribution". The
backward of a pair with the merged lse is exact: P = exp(s - lse_global) is this pair's
slice of the global softmax, and delta = rowsum(dO·O) uses the global O.

What cannot be sharded this way, refused with a ValueError naming `spec`: dropout (the
kernels draw the keep mask from local positions), and mask semantics whose masked
logits do not drop (a mild fill mixes every masked key into each row's softmax).

Pairs of a causal-only Spec that are whole (every key before every query) or diagonal
(the same range for both) run the FlashAttention kernels (`plain_pair`), which need no
offsets and no block map: on zigzag shards that is every pair a causal ring computes.

Block skipping. Inside a pair the kernels' block map skips empty tiles (an index-only
mask such as causal gets exact bounds from the scalar offsets, a document or padding
mask from its per-tile min and max). Across pairs,
`pair_may_see` decides on the host by interval reasoning over the two ranges: a pair
it proves empty is neither computed nor, in the ring, sent.
"""

from __future__ import annotations

import dataclasses
import functools

import sympy
import torch
from torch import Tensor

from ioaware.codegen.attention.header import drops_masked
from ioaware.codegen.attention.spec import AttentionSpec, MaskSemantics
from ioaware.spec import KV_IDX, Q_IDX, TensorInput

Q_OFFSET, K_OFFSET = "cp_q0", "cp_k0"  # names of the offset inputs


def check_context_parallel(spec: AttentionSpec) -> None:
    """Raise ValueError naming `spec` if no context-parallel route (ring or all-gather)
    can take its attention."""
    if not isinstance(spec, AttentionSpec):
        raise TypeError(f"spec must be an AttentionSpec; got {type(spec).__name__}")
    if spec.dropout_p > 0:
        raise ValueError(f"spec.dropout_p={spec.dropout_p}: dropout cannot be sharded (the "
                         "kernels draw the keep mask from local positions)")
    taken = {t.name for t in spec.inputs} & {Q_OFFSET, K_OFFSET}
    if taken:
        raise ValueError(f"spec.inputs may not use the names {sorted(taken)} (the shard "
                         "offsets)")


def ring_refusal(spec: AttentionSpec) -> str | None:
    """Why the ring cannot split `spec`'s attention by key ranges (the all-gather route
    of `gather.py` takes it then), or None."""
    if (spec.causal or spec.mask is not None) and not drops_masked(spec):
        return (f"spec.mask_semantics={str(spec.mask_semantics)!r} with "
                f"mask_fill={spec.mask_fill}: masked keys still carry weight, so the mask "
                "cannot be evaluated shard by shard")
    return None


def check_shardable(spec: AttentionSpec) -> None:
    """Raise ValueError naming `spec` if its attention cannot be split by key ranges."""
    check_context_parallel(spec)
    reason = ring_refusal(spec)
    if reason is not None:
        raise ValueError(reason)


def global_mask(spec: AttentionSpec) -> sympy.Basic | None:
    """The visibility predicate over global positions (causal folded in), or None."""
    mask = spec.mask_expr()
    if spec.causal:
        causal = sympy.Le(KV_IDX, Q_IDX)
        mask = causal if mask is None else sympy.And(mask, causal)
    return mask


@dataclasses.dataclass(frozen=True)
class VectorSlice:
    """A derived input: `spec.inputs[source]` narrowed along `axis` to the pair's query
    rows (along="q") or key columns (along="kv")."""

    name: str
    source: int
    axis: int
    along: str


def _sliced_load(load: sympy.Indexed, spec: AttentionSpec, slices: dict) -> sympy.Basic:
    """`name[.., q_idx + cp_q0[0], ..]` of a per-token input (no gradient; the other
    indices free of q_idx and kv_idx) -> `name_q[.., q_idx, ..]` of its slice, recorded
    in `slices`; any other load unchanged."""
    names = [t.name for t in spec.inputs]
    if str(load.base) not in names:
        return load
    source = names.index(str(load.base))
    if spec.inputs[source].requires_grad:
        return load
    q_at = Q_IDX + sympy.IndexedBase(Q_OFFSET)[0]
    kv_at = KV_IDX + sympy.IndexedBase(K_OFFSET)[0]
    hits = [(i, "q" if idx == q_at else "kv") for i, idx in enumerate(load.indices)
            if idx in (q_at, kv_at)]
    rest = [idx for i, idx in enumerate(load.indices) if i not in dict(hits)]
    if len(hits) != 1 or any(idx.free_symbols & {Q_IDX, KV_IDX} for idx in rest):
        return load
    axis, along = hits[0]
    key = (source, axis, along)
    if key not in slices:
        name = f"{load.base}_{along}{axis}"
        while name in names or any(v.name == name for v in slices.values()):
            name += "_"
        slices[key] = VectorSlice(name, source, axis, along)
    indices = list(load.indices)
    indices[axis] = Q_IDX if along == "q" else KV_IDX
    return sympy.IndexedBase(slices[key].name)[tuple(indices)]


@functools.lru_cache(maxsize=256)
def global_plan(spec: AttentionSpec) -> tuple[AttentionSpec, tuple[VectorSlice, ...]]:
    """(`global_spec(spec)`, the per-token inputs it reads as per-pair slices).

    A per-token vector read at the shifted position, `doc[b, q_idx + cp_q0[0]]`, is read
    instead from the pair's slice of it, `doc_q1[b, q_idx]`: a plain per-token load, so
    the kernels' block map bounds it per tile (min/max) and skips the tiles a document
    or padding mask empties inside a pair. Other loads (bias tables, learned inputs)
    read the global tensor at the shifted positions."""
    check_shardable(spec)
    shift = {Q_IDX: Q_IDX + sympy.IndexedBase(Q_OFFSET)[0],
             KV_IDX: KV_IDX + sympy.IndexedBase(K_OFFSET)[0]}
    slices: dict = {}

    def globalise(expr):
        if expr is None:
            return None
        shifted = expr.xreplace(shift)
        loads = {load: _sliced_load(load, spec, slices)
                 for load in shifted.atoms(sympy.Indexed)}
        return str(shifted.xreplace(loads))

    mask, mod = globalise(global_mask(spec)), globalise(spec.score_mod_expr())
    derived = tuple(slices.values())
    inputs = (*spec.inputs,
              *(dataclasses.replace(spec.inputs[v.source], name=v.name) for v in derived),
              TensorInput(Q_OFFSET, 1, "int64"), TensorInput(K_OFFSET, 1, "int64"))
    gspec = dataclasses.replace(spec, causal=False, mask=mask, score_mod=mod, inputs=inputs,
                                mask_semantics=MaskSemantics.SAFE, mask_fill=float("-inf"))
    return gspec, derived


def global_spec(spec: AttentionSpec) -> AttentionSpec:
    """`spec` with positions shifted by the runtime offsets cp_q0[0], cp_k0[0] (see the
    module docstring). Raises ValueError as `check_shardable`."""
    return global_plan(spec)[0]


# ---- host-side skipping: interval reasoning over a pair of ranges -----------------

def _linear_range(e: sympy.Basic, box: dict) -> tuple[int, int] | None:
    """[min, max] of an expression affine in q_idx, kv_idx over `box`, else None."""
    if not e.free_symbols <= set(box) or e.atoms(sympy.Indexed):
        return None
    try:
        poly = sympy.Poly(sympy.expand(e), *box)
    except sympy.PolynomialError:
        return None
    if poly.total_degree() > 1:
        return None
    lo = hi = poly.coeff_monomial(1)
    for sym, (a, b) in box.items():
        c = poly.coeff_monomial(sym)
        lo, hi = lo + min(c * a, c * b), hi + max(c * a, c * b)
    return lo, hi


def _may(e: sympy.Basic, box: dict) -> bool:
    """False only when `e` surely holds nowhere in the box (True: maybe)."""
    return _truth(e, box)[1]


def _truth(e: sympy.Basic, box: dict) -> tuple[bool, bool]:
    """(must, may) of a predicate over the box; unknown parts give (False, True)."""
    if e is sympy.true:
        return True, True
    if e is sympy.false:
        return False, False
    if isinstance(e, sympy.And):
        parts = [_truth(a, box) for a in e.args]
        return all(p[0] for p in parts), all(p[1] for p in parts)
    if isinstance(e, sympy.Or):
        parts = [_truth(a, box) for a in e.args]
        return any(p[0] for p in parts), any(p[1] for p in parts)
    if isinstance(e, sympy.Not):
        must, may = _truth(e.args[0], box)
        return not may, not must
    if isinstance(e, sympy.core.relational.Relational):
        r = _linear_range(e.lhs - e.rhs, box)
        if r is None:
            return False, True
        lo, hi = r
        op = e.rel_op
        if op == "<":
            return bool(hi < 0), bool(lo < 0)
        if op == "<=":
            return bool(hi <= 0), bool(lo <= 0)
        if op == ">":
            return bool(lo > 0), bool(hi > 0)
        if op == ">=":
            return bool(lo >= 0), bool(hi >= 0)
        zero_in = bool(lo <= 0 <= hi)
        only_zero = bool(lo == 0 == hi)
        return (only_zero, zero_in) if op == "==" else (not zero_in, not only_zero)
    return False, True


def pair_may_see(spec: AttentionSpec, q_range: tuple[int, int],
                 k_range: tuple[int, int]) -> bool:
    """Whether any query in [q0, q0+nq) may see any key in [k0, k0+nk) (global
    positions). False is a proof (index-only parts of the mask); True may be a maybe."""
    (q0, nq), (k0, nk) = q_range, k_range
    if nq == 0 or nk == 0:
        return False
    mask = global_mask(spec)
    if mask is None:
        return True
    return _may(mask, {Q_IDX: (q0, q0 + nq - 1), KV_IDX: (k0, k0 + nk - 1)})


# ---- the pair's kernels ------------------------------------------------------------

def plain_pair(spec: AttentionSpec, q_range: tuple[int, int],
               k_range: tuple[int, int]) -> bool | None:
    """Whether the pair can run the FlashAttention kernels instead of the general ones:
    False (no mask: every key visible), True (causal, a diagonal pair: the same global
    range for queries and keys, so local causal is global causal), None (general).

    Only for Specs with nothing but `causal`: a causal ring on zigzag shards then never
    runs the general kernels (its pairs are empty, whole, or diagonal)."""
    if spec.mask is not None or spec.score_mod is not None or spec.inputs:
        return None
    if not spec.causal:
        return False
    (q0, nq), (k0, nk) = q_range, k_range
    if k0 + nk - 1 <= q0:  # every key at or before every query
        return False
    if (q0, nq) == (k0, nk):
        return True
    return None


@functools.lru_cache(maxsize=256)
def _global_json(spec: AttentionSpec) -> str:
    return global_spec(spec).to_json()


def _pair_inputs(spec: AttentionSpec, inputs: list[Tensor], q_range: tuple[int, int],
                 k_range: tuple[int, int], device: torch.device) -> list[Tensor]:
    """The general kernels' inputs for a pair: the global tensors, their per-pair slices
    (views), the two offsets."""
    slices = [inputs[v.source].narrow(v.axis, *(q_range if v.along == "q" else k_range))
              for v in global_plan(spec)[1]]
    offsets = [torch.full((1,), start, dtype=torch.int64, device=device)
               for start in (q_range[0], k_range[0])]
    return [*inputs, *slices, *offsets]


def shard_forward(spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor,
                  inputs: list[Tensor], q0: int, k0: int) -> tuple[Tensor, Tensor]:
    """(out [B,Hq,Nq,dv] in q.dtype, lse [B,Hq,Nq] fp32) of queries at global positions
    q0.. against keys at k0..; inputs: the global tensors `spec.inputs` names."""
    plain = plain_pair(spec, (q0, q.shape[2]), (k0, k.shape[2]))
    with torch.no_grad():
        if plain is not None:
            return torch.ops.ioaware.flash_attention(q, k, v, spec.scale, plain)
        extra = _pair_inputs(spec, inputs, (q0, q.shape[2]), (k0, k.shape[2]), q.device)
        return torch.ops.ioaware.attention(q, k, v, extra, _global_json(spec), None)


def shard_backward(spec: AttentionSpec, dout: Tensor, q: Tensor, k: Tensor, v: Tensor,
                   out: Tensor, lse: Tensor, dlse: Tensor | None, inputs: list[Tensor],
                   q0: int, k0: int) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(dq, dk, dv, gradients of the requires-grad inputs) of one pair, given the merged
    (global) out and lse of these query rows."""
    plain = plain_pair(spec, (q0, q.shape[2]), (k0, k.shape[2]))
    with torch.no_grad():
        if plain is not None:
            dq, dk, dv = torch.ops.ioaware.flash_attention_backward(
                dout, q, k, v, out, lse, spec.scale, plain, dlse)
            return dq, dk, dv, []
        extra = _pair_inputs(spec, inputs, (q0, q.shape[2]), (k0, k.shape[2]), q.device)
        return torch.ops.ioaware.attention_backward(dout, q, k, v, out, lse, extra,
                                                    _global_json(spec), None, dlse)


def merge_partial(out_acc: Tensor, lse_acc: Tensor, out: Tensor, lse: Tensor) -> None:
    """Fold a partial (out, lse) into the fp32 accumulators, in place:

        lse' = log(e^lse_acc + e^lse),   out' = out_acc·e^(lse_acc - lse') + out·e^(lse - lse')

    A row empty in both (-inf, -inf) stays (0, -inf)."""
    new = torch.logaddexp(lse_acc, lse)
    base = torch.where(new == float("-inf"), 0.0, new)
    out_acc.mul_(torch.exp(lse_acc - base).unsqueeze(-1))
    out_acc.add_(out.float() * torch.exp(lse - base).unsqueeze(-1))
    lse_acc.copy_(new)
