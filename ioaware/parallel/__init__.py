"""Context parallelism: attention over a sequence sharded across a process group.

    layout.py   which global positions each rank holds (contiguous, zigzag, by work)
    shard.py    one shard pair's kernels, masks at global positions; the LSE merge
    ring.py     ring attention: K/V around the group, merged by log-sum-exp, autograd
    gather.py   all-gather K/V: the route for masks the ring cannot split
    op.py       ioaware::ring_attention, the ring as a custom op a compiled graph holds
    context.py  ioaware.compile(model, context_parallel=cp): compiled models over a ring
    torch_cp.py ioaware-compiled models inside torch's context_parallel(mesh, buffers=...)

See docs/context-parallel.md.
"""

from ioaware.parallel.context import ContextParallel
from ioaware.parallel.layout import (
    ShardLayout,
    balanced_layout,
    contiguous_layout,
    document_row_work,
    zigzag_layout,
)
from ioaware.parallel.shard import global_spec, merge_partial, pair_may_see

__all__ = ["ContextParallel", "ShardLayout", "balanced_layout", "contiguous_layout",
           "document_row_work", "global_spec", "merge_partial", "pair_may_see",
           "zigzag_layout"]
