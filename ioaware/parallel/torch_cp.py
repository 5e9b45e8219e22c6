"""Models compiled by ioaware inside PyTorch's `context_parallel(mesh, buffers=...)`.

    model = ioaware.compile(model)
    with context_parallel(mesh, buffers=[ids, labels, pos], buffer_seq_dims=[1, 1, 1]):
        loss = loss_fn(model(ids, position_ids=pos), labels)   # this rank's rows
        loss.backward()

How torch does it (the `_context_parallel._attention` module of torch 2.9 to 2.13, and
`experimental._attention` before): on entry it cuts each buffer along its sequence
dimension, head-tail load balanced (rank r keeps chunks r and 2W-1-r of 2W) when the
length divides by 2W, else in `torch.chunk` pieces; it replaces
`F.scaled_dot_product_attention` with a wrapper that makes q, k, v DTensors sharded on
dimension 2, and puts handlers for the aten flash, efficient and cuDNN SDPA ops into
DTensor's private `_custom_op_handlers`, which run its ring. Nothing there is public:
the wrapper is recorded in the module's `_replaced_functions` (wrapper -> original) and
holds the mesh in its closure (`device_mesh`); `_cp_options.enable_load_balance` says
whether the buffers were head-tail balanced.

How ioaware joins in. A graph ioaware rewrote never calls SDPA (the pass replaced it),
so DTensor's handlers never see it; and dynamo tracing torch's wrapper fails on the CPU
(no DTensor rule for the CPU flash op) or captures DTensor code. So `ioaware.compile`
checks, per call, whether torch's context_parallel is on (`active`). If it is, the call
goes to a second compilation of the same model whose rewritten attention runs as
ioaware's ring (`context.route_to_ring` with a `TorchContextParallel`), with the
original SDPA put back in `F` for the duration of the call, so dynamo traces the model
as outside (its guard on `F.scaled_dot_product_attention` holds). The ring reads the
group from torch's mesh and the layout torch cut the buffers with: `zigzag_layout`,
which equals head-tail sharding, or the `torch.chunk` pieces (every rank's row count
is gathered once per call to tell which). Masks and score mods are evaluated at global positions as under
`ioaware.compile(..., context_parallel=cp)`; per-token inputs of the graph (an
attention_mask passed as a buffer) are all-gathered inside the ring op. The backward
may run inside or after the context: the binding of the last call is kept.

Versions: the private names above are read; if torch's wrapper is installed but they
are missing (another torch release), or torch runs its module-wrapper mode
(`_ContextParallel` styles applied with `parallelize_module`), the call raises
RuntimeError saying so: never a ring over a guessed layout, never local attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ioaware.parallel.context import ContextParallel
from ioaware.parallel.layout import ShardLayout, zigzag_layout
from ioaware.parallel.ring import wire_device

# Where torch keeps its context-parallel state, newest first.
_MODULES = ("torch.distributed.tensor.experimental._context_parallel._attention",
            "torch.distributed.tensor.experimental._attention")
_SDPA = torch._C._nn.scaled_dot_product_attention  # what F holds when nothing replaced it
_SEQ_DIM = 2  # torch's `context_parallel` shards q, k, v [B, H, S, D] on dimension 2


@dataclasses.dataclass(frozen=True)
class TorchCP:
    """torch's context_parallel as it is now: its group and how it cut the buffers."""

    group: dist.ProcessGroup
    head_tail: bool  # buffers were head-tail balanced (zigzag), else torch.chunk pieces
    sdpa: object  # the F.scaled_dot_product_attention torch's wrapper replaced


def _torch_modules() -> list:
    """torch's context-parallel modules that are loaded (none: it cannot be on)."""
    return [sys.modules[name] for name in _MODULES if name in sys.modules]


def active() -> TorchCP | None:
    """torch's context_parallel state if its SDPA wrapper is installed now, else None.

    Raises RuntimeError when torch's context parallel is on in a way ioaware cannot
    read (an unknown release's internals, or the module-wrapper mode). Cheap when it is
    off: one identity check, and a dict lookup per loaded module."""
    sdpa = F.scaled_dot_product_attention
    modules = _torch_modules()
    if sdpa is _SDPA:
        if any(_module_wrapper_mode(m) for m in modules):
            raise RuntimeError(
                "torch's context parallel runs in its module-wrapper mode (_ContextParallel "
                "applied with parallelize_module): ioaware cannot find the mesh there; use "
                "context_parallel(mesh, buffers=...) or ioaware.compile(..., "
                "context_parallel=ContextParallel(group))")
        return None
    for module in modules:
        replaced = getattr(module, "_replaced_functions", None)
        if isinstance(replaced, dict) and sdpa in replaced:
            return _read_state(module, sdpa, replaced[sdpa][1])
    if getattr(sdpa, "__module__", "").startswith("torch.distributed.tensor"):
        raise RuntimeError(f"torch {torch.__version__} replaced F.scaled_dot_product_attention "
                           "for context parallel in a way ioaware does not know; its ring "
                           "cannot run here (a graph rewritten by ioaware would attend to "
                           "this rank's rows only)")
    return None  # another library's SDPA: not context parallel


def _read_state(module, wrapper, original) -> TorchCP:
    names = wrapper.__code__.co_freevars
    options = getattr(module, "_cp_options", None)
    if "device_mesh" not in names or not hasattr(options, "enable_load_balance"):
        raise RuntimeError(f"torch {torch.__version__}: context_parallel keeps its mesh or "
                           "load-balancing flag where ioaware does not look "
                           f"({module.__name__}); ioaware's ring cannot run under it")
    mesh = wrapper.__closure__[names.index("device_mesh")].cell_contents
    if mesh.ndim != 1:
        raise RuntimeError(f"context_parallel mesh has {mesh.ndim} dimensions; ioaware's "
                           "ring takes a 1-D mesh")
    return TorchCP(mesh.get_group(), bool(options.enable_load_balance), original)


def _module_wrapper_mode(module) -> bool:
    """torch's module-wrapper mode with its DTensor SDPA handlers enabled."""
    mode = getattr(module, "_dispatch_mode", None)
    if getattr(mode, "name", None) != "MODULE_WRAPPER":
        return False
    from torch.distributed.tensor import DTensor

    handlers = getattr(DTensor._op_dispatcher, "_custom_op_handlers", {})
    return torch.ops.aten._scaled_dot_product_flash_attention.default in handlers


class TorchContextParallel(ContextParallel):
    """A ContextParallel bound per call to torch's context_parallel (`bind`): its group,
    and per attention call the layout torch cut the sequence with."""

    def __init__(self):
        super().__init__(None, balance="zigzag")
        self.head_tail = True

    def bind(self, state: TorchCP) -> None:
        self.group, self.head_tail = state.group, state.head_tail

    def layout_for(self, q: Tensor) -> ShardLayout:
        """The layout torch cut this call's sequence with, from every rank's row count
        (one all_gather of an int): head-tail when load balancing is on and the shards
        are equal and even (torch balances only when 2W divides S; before 2.13 the flag
        stays on when it did not), else the torch.chunk pieces in rank order."""
        world = self.world
        mine = torch.tensor([q.shape[_SEQ_DIM]], dtype=torch.int64,
                            device=wire_device(q, self.group))
        counts = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(counts, mine, group=self.group)
        lengths = [int(t) for t in counts]
        if self.head_tail and len(set(lengths)) == 1 and lengths[0] % 2 == 0:
            return zigzag_layout(lengths[0] * world, world)
        starts = [sum(lengths[:r]) for r in range(world)]
        return ShardLayout(sum(lengths), tuple(((s, n),) for s, n in zip(starts, lengths)))


@contextlib.contextmanager
def original_sdpa(state: TorchCP):
    """F.scaled_dot_product_attention as it was before torch's wrapper, for the duration
    of a call: dynamo then traces the model as it does outside context_parallel."""
    wrapper = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = state.sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = wrapper


class Dispatch:
    """The call `ioaware.compile` returns when no `context_parallel` is given: `plain`
    outside torch's context_parallel, inside it `make_ring()` (built on first use: the
    same model compiled with its attention routed to `cp`'s ring)."""

    def __init__(self, plain, make_ring):
        self.plain, self.make_ring = plain, make_ring
        self.ring = None
        self.cp = TorchContextParallel()

    def __call__(self, *args, **kwargs):
        state = active()
        if state is None:
            return self.plain(*args, **kwargs)
        if self.ring is None:
            self.ring = self.make_ring(self.cp)
        self.cp.bind(state)
        with original_sdpa(state):
            return self.ring(*args, **kwargs)
