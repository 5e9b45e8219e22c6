"""Models compiled by ioaware inside torch's `context_parallel(mesh, buffers=...)`, and the
all-gather route for masks the ring cannot split (gloo, world size 2, kernels under the
interpreter), outputs and gradients against single-process float64 eager:

- torch's context_parallel: an SDPA causal region at S=16 (torch cuts the buffers
  head-tail: ioaware's zigzag layout) and a hand-written sliding-window region at S=13
  (no 2W divides it: torch.chunk pieces of 7 and 6 rows) run as ioaware's ring; the
  causal one, called outside the context, is plain attention again.
- all-gather: a window filled with a mild value (`masked_fill(~keep, -2.0)`: masked keys
  keep weight, so the LSE merge cannot split it) through `ring_attention` directly and
  through `ioaware.compile(..., context_parallel=cp)`, whose explanation says why.

One spawned group runs every case (process start-up and compiles dominate).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_util import run_group
from ring_cases import assert_close

import ioaware
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.parallel import ContextParallel, zigzag_layout
from ioaware.parallel.ring import ring_attention

H, D = 2, 16
SCALE = 1 / math.sqrt(D)
WINDOW, FILL = 4, -2.0


def _sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _keep(n: int) -> torch.Tensor:
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & (i - j < WINDOW)


def _window(q, k, v):
    s = (q @ k.transpose(-1, -2)) * SCALE
    return torch.softmax(s.masked_fill(~_keep(q.shape[2]), float("-inf")), -1) @ v


def _window_fill(q, k, v):
    s = (q @ k.transpose(-1, -2)) * SCALE
    return torch.softmax(s.masked_fill(~_keep(q.shape[2]), FILL), -1) @ v


def _problem(seq: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, H, seq, D, generator=gen) for _ in range(4)]  # q, k, v, dout


def _eager(fn, q, k, v, dout) -> dict[str, torch.Tensor]:
    leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    out = fn(*leaves)
    (out * dout.double()).sum().backward()
    return {"out": out.detach(), **{n: x.grad for n, x in zip("qkv", leaves)}}


def _check(name, rows, out, local, want) -> None:
    """out and q, k, v gradients of this rank against eager's rows `rows(x)`."""
    assert_close(f"{name} out", out, rows(want["out"]))
    for n, x in zip("qkv", local):
        assert_close(f"{name} d{n}", x.grad, rows(want[n]))


def _torch_rows(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of `x` [B, H, S, D] as torch's context_parallel cuts them."""
    seq = x.shape[2]
    if seq % (2 * world) == 0:  # head-tail: chunks r and 2W-1-r of 2W
        return zigzag_layout(seq, world).shard(x, rank, dim=2)
    n = -(-seq // world)  # torch.chunk pieces of ceil(S/W) rows
    return x[:, :, rank * n:(rank + 1) * n]


def _under_torch_context_parallel(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    mesh = init_device_mesh("cpu", (world,))
    for name, fn, seq in (("causal", _sdpa_causal, 16), ("window", _window, 13)):
        q, k, v, dout = _problem(seq, seed=seq)
        want = _eager(fn, q, k, v, dout)
        compiled = ioaware.compile(fn)
        rings = ioaware.counters["context_parallel"]
        with context_parallel(mesh, buffers=[q, k, v, dout], buffer_seq_dims=[2] * 4):
            local = [x.clone().requires_grad_(True) for x in (q, k, v)]  # this rank's rows
            out = compiled(*local)
            (out * dout).sum().backward()
        assert ioaware.counters["context_parallel"] > rings, f"{name}: no ring"
        rows = functools.partial(_torch_rows, rank=rank, world=world)
        try:
            _check(name, rows, out, local, want)
            if name == "causal":  # outside the context: plain attention over what it is given
                assert_close(f"{name} outside", compiled(q, k, v), want["out"])
        except AssertionError as e:
            raise AssertionError(f"torch context_parallel, rank {rank}: {e}") from None
    torch._dynamo.reset()


def _all_gather_route(rank: int, world: int) -> None:
    seq = 13
    q, k, v, dout = _problem(seq, seed=3)
    want = _eager(_window_fill, q, k, v, dout)
    layout = zigzag_layout(seq, world)
    rows = functools.partial(layout.shard, rank=rank, dim=2)

    # directly: a Spec whose masked logits are filled with -2 (the ring refuses it)
    spec = AttentionSpec(head_dim=D, head_dim_v=D, dtype="float32", causal=True,
                         scale=SCALE, mask=f"q_idx - kv_idx < {WINDOW}",
                         mask_semantics="fill", mask_fill=FILL)
    local = [rows(x).requires_grad_(True) for x in (q, k, v)]
    out = ring_attention(*local, spec, layout=layout)
    (out * rows(dout)).sum().backward()
    _check("all-gather", rows, out, local, want)

    # compiled with context_parallel: the region is rewritten, all-gathered, explained
    cp = ContextParallel(balance="zigzag")
    compiled = ioaware.compile(_window_fill, context_parallel=cp)
    local = [cp.shard(x, dim=2).requires_grad_(True) for x in (q, k, v)]
    out = compiled(*local)
    (out * cp.shard(dout, dim=2)).sum().backward()
    _check("compiled all-gather", rows, out, local, want)
    reasons = [f.reason for f in compiled._ioaware_backend.explanation.fallbacks
               if f.kind == "context_parallel"]
    assert reasons and "all-gathers K/V" in reasons[0] and "mask_fill=-2.0" in reasons[0]
    dist.barrier()


def _all(rank: int, world: int) -> None:
    _all_gather_route(rank, world)
    _under_torch_context_parallel(rank, world)


def test_torch_context_parallel_and_all_gather(tmp_path):
    run_group(_all, 2, tmp_path)
