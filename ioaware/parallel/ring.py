"""Ring attention over a torch.distributed process group, forward and backward.

    out = ring_attention(q, k, v, spec, inputs, group=group, layout=layout)

Each rank holds the rows `layout` gives it of q, k and v ([B, H, n_r, d], the chunks
concatenated in local order); out is its rows of the global attention. Inputs (per-token
vectors, bias tables) are the global tensors, the same on every rank.

Forward, on rank r of W (Liu et al. 2023, "Ring Attention"; Brandon et al. 2023):

    acc, lse = 0, -inf                                 (fp32)
    for step s = 0 .. W-1:                             holding K_src, V_src, src = r - s
        start batch: send(K_src, V_src -> r+1), recv(K, V <- r-1)   if the chain goes on
        for each (query chunk of r, key chunk of src) the mask does not empty:
            (o, l) = shard_forward(...)                masks at global positions
            acc, lse = merge(acc, lse, o, l)           log-sum-exp, fp32
        wait for the receive
    out = acc (in q.dtype)

Each step's sends and receives are one `batch_isend_irecv` (`_Batch`), started before
the local compute, so communication overlaps it. Backward: the same ring with the merged
(out, lse) saved; each step adds the pair's dQ locally and its dK, dV into an fp32
accumulator that follows K_src, V_src around and ends at its owner, so each rank gets
the gradient of its own K/V rows.

Chains, not full circles. Which ranks need K/V shard `src` is known on every rank from
the layout and the mask's index-only part (`shard.pair_may_see`). Shard src travels
src -> src+1 -> ... only up to the last rank of the ring that needs it: with a
contiguous causal layout the shard of rank r is never sent past rank W-1, so blocks the
mask empties are never sent. Its dK/dV accumulator returns from that last rank
straight to src.

Communication per rank, elements, n = S/W rows: forward (W-1)·B·Hkv·n·(d + dv) at
most; backward that again plus W·B·Hkv·n·(d + dv) fp32 accumulators. Compute hides a
step's transfer while n ≥ peak·bytes / (2·G·link), G = Hq/Hkv (docs/context-parallel.md).

Bad input raises ValueError on every rank before any K/V moves: arguments that are the
same everywhere (the layout, the group's size, the Spec) are checked locally; the
tensors' shapes on every rank are compared after one small all_gather of their sizes,
which every rank reaches, so no rank is left waiting in a ring the others refused.
Gradients of learned inputs (a bias table) are this rank's share; sum them over the
group, as for any parameter replicated across it (DDP and FSDP do).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel.gather import gather_backward, gather_forward
from ioaware.parallel.layout import ShardLayout
from ioaware.parallel.shard import (
    check_context_parallel,
    merge_partial,
    pair_may_see,
    ring_refusal,
    shard_backward,
    shard_forward,
)

# The kinds of message, in the order every batch issues them (see `_Batch`).
_K, _V, _DK, _DV, _HOME_DK, _HOME_DV = range(1, 7)


@functools.lru_cache(maxsize=128)
def ring_plan(spec: AttentionSpec, layout: ShardLayout) -> tuple[tuple[tuple, ...], tuple]:
    """(pairs, last_hop): pairs[dst][src] = the (q local, q global, nq, k local, k global,
    nk) chunk pairs rank dst computes against shard src (empty: none visible);
    last_hop[src] = how far shard src travels along the ring (0: it stays home)."""
    world = layout.world
    pairs = []
    for dst in range(world):
        row = []
        for src in range(world):
            row.append(tuple(
                (ql, qg, nq, kl, kg, nk)
                for ql, qg, nq in layout.local_chunks(dst)
                for kl, kg, nk in layout.local_chunks(src)
                if pair_may_see(spec, (qg, nq), (kg, nk))))
        pairs.append(tuple(row))
    last_hop = tuple(max((h for h in range(world) if pairs[(src + h) % world][src]),
                         default=0) for src in range(world))
    return tuple(pairs), last_hop


def _check_static(spec: AttentionSpec, layout: ShardLayout, group) -> tuple[int, int]:
    """Checks of arguments every rank shares; (rank, world). No collective."""
    if not isinstance(layout, ShardLayout):
        raise TypeError(f"layout must be a ShardLayout; got {type(layout).__name__}")
    check_context_parallel(spec)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if layout.world != world:
        raise ValueError(f"layout has {layout.world} ranks; the group has world={world}")
    return rank, world


def wire_device(t: Tensor, group) -> torch.device:
    """Where a small collective's tensors live: the CPU under gloo, else `t`'s device."""
    return torch.device("cpu") if dist.get_backend(group) == "gloo" else t.device


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, layout: ShardLayout, group) -> None:
    """All-gather every rank's sizes, then raise the same error everywhere if any rank's
    tensors disagree with the layout or with the others (see the module docstring)."""
    dims = [t.dim() for t in (q, k, v)]
    sizes = [list(t.shape) if t.dim() == 4 else [-1] * 4 for t in (q, k, v)]
    mine = torch.tensor([*dims, *(n for shape in sizes for n in shape)], dtype=torch.int64)
    device = wire_device(q, group)
    everyone = [torch.empty_like(mine, device=device) for _ in range(layout.world)]
    dist.all_gather(everyone, mine.to(device), group=group)
    for r, row in enumerate(t.cpu().tolist() for t in everyone):
        qs, ks, vs = row[3:7], row[7:11], row[11:15]
        for name, ndim in zip("qkv", row[:3]):
            if ndim != 4:
                raise ValueError(f"{name} on rank {r} must be 4-D [B, H, n, d]; got {ndim}-D")
        n = layout.length(r)
        for name, shape in zip("qkv", (qs, ks, vs)):
            if shape[2] != n:
                raise ValueError(f"{name}.shape[2]={shape[2]} on rank {r}; the layout gives "
                                 f"that rank {n} positions")
        if r == 0:
            first = (qs, ks, vs)
        for name, shape, ref in zip("qkv", (qs, ks, vs), first):
            if shape[:2] + shape[3:] != ref[:2] + ref[3:]:
                raise ValueError(f"{name}.shape={tuple(shape)} on rank {r} differs from rank "
                                 f"0's {tuple(ref)} outside the sequence axis")


class _Batch:
    """The P2P messages of one step of the ring, issued together by
    `dist.batch_isend_irecv` (one NCCL group: its sends and receives progress at once,
    so no rank's send waits in a stream behind a receive its peer has not reached).

    Every message is sent and received in the batch of the same index on both ranks,
    and within a batch the ops are issued in the order of their kind (K, V, dK, dV, then
    the home-bound dK, dV), the same on both sides: NCCL matches a pair's messages in
    issue order, gloo by the tags, which are the kinds."""

    def __init__(self, group, rank: int, world: int):
        self.group, self.rank, self.world = group, rank, world
        self.ops: list[tuple[int, dist.P2POp]] = []

    def _peer(self, group_rank: int) -> int:
        """The global rank P2P calls take, of a rank of this group."""
        if self.group is None or self.group is dist.group.WORLD:
            return group_rank % self.world
        return dist.get_global_rank(self.group, group_rank % self.world)

    def send(self, kind: int, tensor: Tensor, to: int) -> None:
        self.ops.append((kind, dist.P2POp(dist.isend, tensor.contiguous(), self._peer(to),
                                          self.group, kind)))

    def recv(self, kind: int, shape, dtype: torch.dtype, device: torch.device,
             frm: int) -> Tensor:
        buf = torch.empty(shape, dtype=dtype, device=device)
        self.ops.append((kind, dist.P2POp(dist.irecv, buf, self._peer(frm), self.group,
                                          kind)))
        return buf

    def start(self) -> list:
        """Issue the batch; the handles to wait on (none for an empty batch)."""
        if not self.ops:
            return []
        ops = [op for _, op in sorted(self.ops, key=lambda t: t[0])]
        return dist.batch_isend_irecv(ops)


def _wait(works: list) -> None:
    for work in works:
        work.wait()


def _shape(t: Tensor, n: int) -> tuple[int, ...]:
    return (t.shape[0], t.shape[1], n, t.shape[3])


def _pass_kv(batch, step, rank, world, layout, last_hop, k, v, k_cur, v_cur):
    """Step `step`'s K/V hand-off, added to `batch`: the shard held now goes on to the
    next rank while its chain continues (`last_hop`), and the shard the next step
    computes with arrives from the previous one. Returns the (k, v) buffers being
    received, or None when nothing arrives."""
    if step < last_hop[(rank - step) % world]:
        batch.send(_K, k_cur, rank + 1)
        batch.send(_V, v_cur, rank + 1)
    nxt = (rank - step - 1) % world  # the shard arriving for the next step
    if not (step + 1 < world and step + 1 <= last_hop[nxt]):
        return None
    n = layout.length(nxt)
    return (batch.recv(_K, _shape(k, n), k.dtype, k.device, rank - 1),
            batch.recv(_V, _shape(v, n), v.dtype, v.device, rank - 1))


def _ring_forward(spec, q, k, v, inputs, layout, group, rank, world):
    pairs, last_hop = ring_plan(spec, layout)
    out_acc = torch.zeros(q.shape[:3] + (v.shape[3],), dtype=torch.float32, device=q.device)
    lse_acc = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    k_cur, v_cur = k.contiguous(), v.contiguous()
    for step in range(world):
        src = (rank - step) % world
        batch = _Batch(group, rank, world)
        kv_next = _pass_kv(batch, step, rank, world, layout, last_hop, k, v, k_cur, v_cur)
        works = batch.start()  # the transfer runs under this step's compute
        if step <= last_hop[src]:
            for ql, qg, nq, kl, kg, nk in pairs[rank][src]:
                o, lse = shard_forward(spec, q[:, :, ql:ql + nq], k_cur[:, :, kl:kl + nk],
                                       v_cur[:, :, kl:kl + nk], inputs, qg, kg)
                merge_partial(out_acc[:, :, ql:ql + nq], lse_acc[:, :, ql:ql + nq], o, lse)
        _wait(works)
        if kv_next is not None:
            k_cur, v_cur = kv_next
    return out_acc.to(q.dtype), lse_acc


def _ring_backward(spec, dout, dlse, q, k, v, out, lse, inputs, layout, group, rank,
                   world):
    """Batch s carries K/V for step s+1 and the dK/dV accumulators finished at step s-1:
    shard src's accumulator leaves the rank that held it at step s-1 in batch s and
    arrives, in the same batch, at the rank holding src at step s, which adds its own
    share computed meanwhile. The last holder sends it home in the next batch (W+1
    batches in all)."""
    pairs, last_hop = ring_plan(spec, layout)
    f32 = torch.float32
    dq = torch.zeros(q.shape, dtype=f32, device=q.device)
    grad_inputs = [x for t, x in zip(spec.inputs, inputs) if t.requires_grad]
    dinputs = [torch.zeros(x.shape, dtype=f32, device=x.device) for x in grad_inputs]
    k_cur, v_cur = k.contiguous(), v.contiguous()
    outgoing: list[tuple[int, Tensor, int]] = []  # finished accumulators, for this batch
    home = None
    for step in range(world + 1):
        batch = _Batch(group, rank, world)
        for kind, tensor, to in outgoing:
            batch.send(kind, tensor, to)
        outgoing = []
        if last_hop[rank] > 0 and step == last_hop[rank] + 1:  # this rank's own dK, dV
            frm = rank + last_hop[rank]
            home = (batch.recv(_HOME_DK, k.shape, f32, k.device, frm),
                    batch.recv(_HOME_DV, v.shape, f32, v.device, frm))
        if step == world:
            _wait(batch.start())
            break
        src = (rank - step) % world
        holds = step <= last_hop[src]
        kv_next = _pass_kv(batch, step, rank, world, layout, last_hop, k, v, k_cur, v_cur)
        if holds and step > 0:
            # dK, dV of shard src from the ranks before this one on its chain (fp32 on
            # the wire: 16-bit partial sums would round at every hop)
            dk_in = batch.recv(_DK, k_cur.shape, f32, k.device, rank - 1)
            dv_in = batch.recv(_DV, v_cur.shape, f32, v.device, rank - 1)
        works = batch.start()
        if holds:
            dk_acc = torch.zeros(k_cur.shape, dtype=f32, device=k.device)
            dv_acc = torch.zeros(v_cur.shape, dtype=f32, device=v.device)
            for ql, qg, nq, kl, kg, nk in pairs[rank][src]:
                rows, cols = slice(ql, ql + nq), slice(kl, kl + nk)
                g = shard_backward(spec, dout[:, :, rows], q[:, :, rows], k_cur[:, :, cols],
                                   v_cur[:, :, cols], out[:, :, rows], lse[:, :, rows],
                                   None if dlse is None else dlse[:, :, rows], inputs, qg, kg)
                dq[:, :, rows] += g[0].float()
                dk_acc[:, :, cols] += g[1].float()
                dv_acc[:, :, cols] += g[2].float()
                for acc, d in zip(dinputs, g[3]):
                    acc += d.float()
        _wait(works)
        if holds:
            if step > 0:
                dk_acc += dk_in
                dv_acc += dv_in
            if step < last_hop[src]:
                outgoing = [(_DK, dk_acc, rank + 1), (_DV, dv_acc, rank + 1)]
            elif step > 0:  # the last rank that needs shard src: its gradient goes home
                outgoing = [(_HOME_DK, dk_acc, src), (_HOME_DV, dv_acc, src)]
            else:
                home = (dk_acc, dv_acc)
        if kv_next is not None:
            k_cur, v_cur = kv_next
    dk, dv = home
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            [d.to(x.dtype) for d, x in zip(dinputs, grad_inputs)])


def routes(spec: AttentionSpec):
    """(forward, backward) of the route `spec` takes: the ring, or all-gather when the
    ring cannot split it (`shard.ring_refusal`, `gather.py`)."""
    if ring_refusal(spec) is None:
        return _ring_forward, _ring_backward
    return gather_forward, gather_backward


class RingAttention(torch.autograd.Function):
    """(out, lse) of ring attention; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, spec, layout, group, rank, world, *inputs):
        out, lse = routes(spec)[0](spec, q, k, v, list(inputs), layout, group, rank, world)
        ctx.save_for_backward(q, k, v, out, lse, *inputs)
        ctx.args = (spec, layout, group, rank, world)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, *inputs = ctx.saved_tensors
        spec, layout, group, rank, world = ctx.args
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, dgrads = routes(spec)[1](spec, dout, dlse, q, k, v, out, lse, inputs,
                                             layout, group, rank, world)
        it = iter(dgrads)
        dextra = [next(it) if t.requires_grad else None for t in spec.inputs]
        return (dq, dk, dv, None, None, None, None, None, *dextra)


def ring_attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec,
                   inputs: Sequence[Tensor] = (), *, layout: ShardLayout,
                   group: dist.ProcessGroup | None = None, check: bool = True
                   ) -> Tensor:
    """This rank's rows of exact attention over the sequence sharded by `layout`.

    q [B, Hq, n_r, d], k [B, Hkv, n_r, d], v [B, Hkv, n_r, dv]: rank r's rows, as
    `layout.shard` cuts them; spec: an AttentionSpec whose positions are global
    (causal, masks, score mods over the whole sequence); inputs: the global tensors
    spec.inputs names. Returns out [B, Hq, n_r, dv] in q.dtype.
    check: compare every rank's shapes (one all_gather of 15 ints) before the ring.
    """
    rank, world = _check_static(spec, layout, group)
    inputs = list(inputs)
    if len(inputs) != len(spec.inputs):
        raise ValueError(f"inputs has {len(inputs)} tensors; spec.inputs names "
                         f"{[t.name for t in spec.inputs]}")
    if check:
        _check_shapes(q, k, v, layout, group)
    out, _ = RingAttention.apply(q, k, v, spec, layout, group, rank, world, *inputs)
    return out
