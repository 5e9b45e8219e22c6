"""Models compiled by ioaware, trained across processes (gloo, world size 2, kernels under
the interpreter):

- context parallel: a tiny transformers Llama compiled with
  `ioaware.compile(..., context_parallel=cp)` runs on each rank's zigzag shard of the
  sequence; its losses over 3 SGD steps equal single-process eager's on the whole
  sequence, and so do its logits on a padded batch (attention_mask sharded too).
- DDP and FSDP2 (`fully_shard`): the same model compiled by ioaware trains 10 steps
  with the same losses as without ioaware (its regions on the CPU's reference path).

One spawned group runs all three (process start-up and the model's compile dominate).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_util import run_group
from hf_models import llama_gqa, quietly

import ioaware
from ioaware.config import config
from ioaware.parallel import ContextParallel
from ioaware.verify import relative_error

SEQ, VOCAB = 13, 128
TOLERANCE = 1e-4  # relative, per step's loss: fp32 kernels against eager fp32


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    return quietly(llama_gqa, "sdpa")


def _data(seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, next-token labels) [batch, SEQ]; the last label is ignored."""
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    return ids, labels


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB).float(), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")


def _context_parallel_llama(rank: int, world: int) -> None:
    ref, model = _model(), _model()
    cp = ContextParallel(balance="zigzag")
    compiled = ioaware.compile(model, context_parallel=cp)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rings = ioaware.counters["context_parallel"]
    for step in range(3):
        ids, labels = _data(step)
        n_valid = int((labels != -100).sum())
        loss_ref = _loss_sum(ref(ids).logits, labels) / n_valid
        loss_ref.backward()
        opt_ref.step()
        opt_ref.zero_grad()

        local_ids, local_labels = cp.shard(ids, dim=1), cp.shard(labels, dim=1)
        logits = compiled(local_ids, position_ids=cp.position_ids()).logits
        loss = _loss_sum(logits, local_labels) / n_valid  # this rank's share
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
        total = loss.detach().clone()
        dist.all_reduce(total)
        err = relative_error(total, loss_ref.detach())
        assert err <= TOLERANCE, f"step {step}: loss {total.item()} vs {loss_ref.item()}"
        opt.step()
        opt.zero_grad()
    # the attention regions were rewritten, and run as rings (2 layers)
    assert ioaware.counters["context_parallel"] - rings >= 2

    # a padded batch: the attention_mask shard is all-gathered inside the ring op
    ids, _ = _data(7, batch=2)
    mask = torch.ones_like(ids)
    mask[1, SEQ - 4:] = 0  # the second sequence ends 4 tokens early
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits
        got = compiled(cp.shard(ids, dim=1), attention_mask=cp.shard(mask, dim=1),
                       position_ids=cp.position_ids(batch=2)).logits
    keep = cp.shard(mask, dim=1).bool()  # padded positions' logits are not compared
    err = relative_error(got[keep], cp.shard(want, dim=1)[keep])
    assert err <= TOLERANCE, f"padded batch: relative error {err}"


def _train(model: torch.nn.Module, wrapped, rank: int, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for step in range(steps):
        ids, labels = _data(100 * rank + step, batch=2)  # each rank its own batch
        loss = _loss_sum(wrapped(ids).logits, labels) / int((labels != -100).sum())
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
    return losses


def _data_parallel(rank: int, world: int) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    # What is tested here is the compiled graph under the wrappers' hooks, not the
    # kernels (the ring's tests run those): the rewritten regions take the CPU's
    # reference path, 20 steps per wrapper would be minutes under the interpreter.
    config.interpret = False
    for name in ("ddp", "fsdp2"):
        runs = []
        for use_ioaware in (False, True):
            model = _model()
            if name == "ddp":
                wrapped = DDP(model)
            else:
                for layer in model.model.layers:
                    fully_shard(layer)
                wrapped = fully_shard(model)
            if use_ioaware:
                before = ioaware.counters["attention"]
                wrapped = ioaware.compile(wrapped)
            runs.append(_train(model, wrapped, rank, steps=10))
            if use_ioaware:
                assert ioaware.counters["attention"] > before, name
        plain, compiled = runs
        for step, (a, b) in enumerate(zip(plain, compiled)):
            assert abs(a - b) <= TOLERANCE * abs(a), f"{name} step {step}: {b} vs {a}"
        torch._dynamo.reset()


def _all(rank: int, world: int) -> None:
    _context_parallel_llama(rank, world)
    torch._dynamo.reset()
    _data_parallel(rank, world)


def test_context_parallel_llama_ddp_fsdp2(tmp_path):
    run_group(_all, 2, tmp_path, timeout=400)
