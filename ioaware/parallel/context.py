"""`ioaware.compile(model, context_parallel=cp)`: a compiled model over a sharded sequence.

    cp = ContextParallel(group, balance="zigzag")
    model = ioaware.compile(model, context_parallel=cp)
    ids = cp.shard(input_ids, dim=1)                # this rank's rows; sets cp.layout
    out = model(ids, position_ids=cp.position_ids())

Each rank runs the whole model on its rows of the sequence: everything but attention is
row-wise (embeddings, norms, MLPs, RoPE at the global positions it is given), so it
needs no communication; every attention region ioaware rewrote becomes a ring over the
group (`ring.py`), with its mask and score mod evaluated at the global positions of
`cp.layout`. Losses and gradients are each rank's share: sum the loss over the group
and all-reduce the parameters' gradients (DDP or FSDP over the same group do it).

Per-token inputs of the model that an attention mask reads (an attention_mask shard,
given to the model like input_ids) are all-gathered into the global tensor in the ring
op. What the graph may not do (a ValueError when it is compiled, the same on every
rank, so none is left in a collective): read a per-token tensor the sharded graph
computed itself (it may hold local positions: an arange), or a table over both
positions; call `ring_attention` directly with the global tensor for those.
Each region becomes a call of the custom op `ioaware::ring_attention` (`op.py`), opaque
to Inductor like the attention ops it replaces, so on CUDA the rest of the graph still
compiles.
"""

from __future__ import annotations

import itertools

import sympy
import torch
import torch.distributed as dist
from torch import Tensor, fx

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.host import rewrite_calls
from ioaware.parallel.layout import ShardLayout, contiguous_layout, zigzag_layout
from ioaware.parallel.op import ACTIVE, plain_spec_json
from ioaware.spec import KV_IDX, Q_IDX

BALANCES = {"zigzag": zigzag_layout, "contiguous": contiguous_layout}


class ContextParallel:
    """The group a sequence is sharded over and how (`balance`), and the layout of the
    sequence now being run (set by `shard`, or `use` for a layout of one's own)."""

    def __init__(self, group: dist.ProcessGroup | None = None, balance: str = "zigzag"):
        if balance not in BALANCES:
            raise ValueError(f"balance={balance!r} must be one of {sorted(BALANCES)}")
        self.group = group
        self.balance = balance
        self.layout: ShardLayout | None = None

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group)

    def use(self, layout: ShardLayout) -> ShardLayout:
        """Run the next calls over `layout` (one of `layout.py`'s, e.g. balanced by work)."""
        if layout.world != self.world:
            raise ValueError(f"layout has {layout.world} ranks; the group has "
                             f"world={self.world}")
        self.layout = layout
        return layout

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's rows of the global `x` (sequence along `dim`), by `balance`; the
        layout is kept for the model's attention until the next `shard` or `use`."""
        n = x.shape[dim]
        if self.layout is None or self.layout.seq_len != n:
            self.use(BALANCES[self.balance](n, self.world))
        return self.layout.shard(x, self.rank, dim)

    def layout_for(self, q: Tensor) -> ShardLayout:
        """The layout of the sequence an attention call with local queries `q` runs on."""
        if self.layout is None:
            raise RuntimeError("context_parallel: no layout; shard the inputs with "
                               "cp.shard(...) (or cp.use(layout)) before calling the model")
        return self.layout

    def position_ids(self, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """int64 [batch, n_r]: the global positions of this rank's rows (for RoPE)."""
        if self.layout is None:
            raise RuntimeError("ContextParallel.position_ids: call shard() or use() first")
        return self.layout.positions(self.rank).to(device).expand(batch, -1)


def gather_plan(spec: AttentionSpec, inputs: list) -> list[int]:
    """[input index, sequence axis, ...] of the inputs read per token (`x[.., q_idx, ..]`
    or `x[.., kv_idx, ..]`), which the ring all-gathers into global tensors. Such an
    input must be a graph input (a model's attention_mask, sharded by the caller like
    input_ids): anything the sharded graph computed per token may depend on local
    positions (an arange), so it is refused, as is any other position-indexed load."""
    plan = []
    exprs = [e for e in (spec.mask_expr(), spec.score_mod_expr()) if e is not None]
    for i, (t, node) in enumerate(zip(spec.inputs, inputs)):
        loads = [ld for e in exprs for ld in e.atoms(sympy.Indexed) if str(ld.base) == t.name]
        axes = set()
        for load in loads:
            hits = [a for a, idx in enumerate(load.indices) if idx in (Q_IDX, KV_IDX)]
            positional = [idx for idx in load.indices if idx.free_symbols & {Q_IDX, KV_IDX}]
            if len(positional) != len(hits) or len(hits) > 1:
                raise ValueError(f"context_parallel: an attention region reads {load}, a "
                                 "table over positions the sharded graph holds only in "
                                 "part (call ring_attention with the global tensor)")
            axes.update(hits)
        if not axes:
            continue  # per head, per batch or a constant: the same on every rank
        is_input = isinstance(node, fx.Node) and node.op == "placeholder"
        if len(axes) > 1 or t.requires_grad or not is_input:
            raise ValueError(
                f"context_parallel: an attention region reads {t.name} per token, and it "
                "is not a graph input this rank holds rows of (computed in the sharded "
                "graph it may hold local positions); pass it to ring_attention globally")
        plan += [i, axes.pop()]
    return plan


_FLASH_ARGS = ("q", "k", "v", "scale", "causal")
_SPEC_ARGS = ("q", "k", "v", "inputs", "spec", "seed")


def _positional(node: fx.Node, names: tuple[str, ...]) -> list:
    """The op call's arguments in schema order (keywords and defaults filled in)."""
    args = list(node.args)
    return args + [node.kwargs.get(name) for name in names[len(args):]]


# Attention the ring cannot take: left in a graph, it would attend to this rank's keys only.
_LOCAL_ATTENTION = ("scaled_dot_product", "flex_attention", "decode_attention")
# Fallback kinds that may leave an attention region as it was (the whole graph, for one).
_UNROUTED_KINDS = ("attention", "graph")


def refuse_local_attention(gm: fx.GraphModule, fallbacks: list) -> None:
    """Raise ValueError if `gm` would still compute attention over this rank's rows alone:
    an attention-family fallback (a region ioaware left as written), an SDPA or flex call,
    or a decode op. Conservative: a softmax that is not attention but was a candidate of
    the attention pass is refused too; a wrong answer is not an option."""
    reasons = [f"{f.kind}: {f.reason}" for f in fallbacks if f.kind in _UNROUTED_KINDS]
    for module in gm.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            name = str(getattr(node.target, "__name__", node.target))
            if node.op == "call_function" and any(a in name for a in _LOCAL_ATTENTION):
                reasons.append(f"{node.name}: {name} is not rewritten")
    if reasons:
        raise ValueError("context_parallel: this graph would attend to this rank's rows "
                         "only where ioaware did not rewrite attention: "
                         + "; ".join(reasons[:4]))


_ids = itertools.count()  # graphs name their ContextParallel by a number (printable)


def route_to_ring(gm: fx.GraphModule, cp: ContextParallel,
                  gathered: list[str] | None = None) -> int:
    """Swap every attention op call of `gm` (and its submodules) for
    `ioaware::ring_attention` over `cp`; returns how many. A region the ring cannot
    split by key ranges runs the op's all-gather route (`gather.py`): its reason is
    appended to `gathered`. Raises ValueError for a region neither route can take."""
    from ioaware.parallel.shard import check_context_parallel, ring_refusal

    cp_id = next(_ids)
    ACTIVE[cp_id] = cp

    def to_ring(node: fx.Node) -> bool:
        if node.target is torch.ops.ioaware.flash_attention.default:
            q, k, v, scale, causal = _positional(node, _FLASH_ARGS)
            if not isinstance(scale, (int, float)) or not isinstance(causal, bool):
                raise ValueError(f"context_parallel: {node.name} has a scale or causal "
                                 "flag computed at run time; the ring needs constants")
            node.args = (q, k, v, [], plain_spec_json(float(scale), causal), cp_id, [])
        elif node.target is torch.ops.ioaware.attention.default:
            q, k, v, inputs, spec, _seed = _positional(node, _SPEC_ARGS)
            aspec = AttentionSpec.from_json(spec)
            check_context_parallel(aspec)
            reason = ring_refusal(aspec)
            if reason is not None and gathered is not None:
                gathered.append(f"{node.name}: all-gathers K/V instead of the ring: {reason}")
            node.args = (q, k, v, inputs, spec, cp_id, gather_plan(aspec, inputs))
        else:
            return False
        node.target = torch.ops.ioaware.ring_attention.default
        node.kwargs = {}
        return True

    return rewrite_calls(gm, to_ring)
