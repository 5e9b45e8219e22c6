"""The cost model: HBM bytes, FLOPs and on-chip footprint of every op, as sympy
expressions in the sizes.

    algebra.py      Cost (adds over kernels, scales by repeats), sym, the device symbols
    nodes.py        what a node reads and writes, from its example values
    rules.py        the price registry: register_price, node_cost, graph_cost, size_hints
    aten.py         the ATen rules
    library.py      library kernels past the IO model: a GEMM's L2 spill, softmax waves
    working_set.py  what a tiled kernel keeps live in L2 between its re-reads
    roofline.py     time on a device: ceilings, modelled_time, bound, dram_bytes, rewrite_pays

`node_cost` prices one node of the canonical ATen graph, `graph_cost` a whole graph
(with its unpriced nodes). The closed forms of the fused kernels, which price the
regions the passes rewrite, live with their kernel family and register the family's ops
from there (`codegen/attention/price.py`, `codegen/scan/price.py`): the cost model never
imports a kernel, and an `ioaware::` op is priced once its family is imported
(`ioaware.codegen.load_families()`). `ceilings`, `modelled_time`, `bound`, `dram_bytes`
and `rewrite_pays` compare a Cost with a DeviceProfile: time is the tensor-core,
CUDA-core and SFU pipes added (a kernel's pipes wait on each other), overlapped with
memory, plus the round trips nothing hides. Derivations and conventions:
docs/cost-model.md.

Conventions, everywhere in this package:
- Bytes are HBM traffic in the FlashAttention IO model: an op reads each distinct input
  tensor once, at the size of the memory it covers (a broadcast or `expand`ed input
  counts its own, smaller, size), and writes each output once; a tiled kernel counts
  every tile it loads. Which of those loads are re-reads that L2 may serve is a separate
  field, priced per device.
- A fused multiply-add counts 2 FLOPs (FLOPS_PER_FMA); every other arithmetic op,
  compare or select counts 1 per element. A transcendental (exp, log, tanh, erf, rsqrt,
  sqrt, sin, ...) counts 1 FLOP and also 1 in `transcendentals`, which the model prices
  against the special-function units.
- Views, layout changes and `detach`/`alias` cost nothing. A node the model does not know
  is unpriced (`None`), never silently free.
"""

from ioaware.cost import aten  # noqa: F401  (registers the ATen rules)
from ioaware.cost.algebra import (
    FLOPS_PER_FMA,
    NUM_SMS,
    PROGRAMS_IN_FLIGHT,
    Cost,
    Hints,
    Size,
    ceil_div,
    sym,
)
from ioaware.cost.library import (
    MATMUL_TILE,
    matmul_l2_spill,
    softmax_row_waves,
    softmax_threads,
)
from ioaware.cost.nodes import storage_root
from ioaware.cost.roofline import (
    L2_USABLE_FRACTION,
    REGISTERS_PER_PROGRAM,
    bound,
    ceilings,
    dram_bytes,
    l2_hits,
    modelled_time,
    programs_in_flight,
    rewrite_pays,
)
from ioaware.cost.rules import (
    GraphCost,
    Rule,
    graph_cost,
    node_cost,
    register_price,
    size_hints,
)
from ioaware.cost.working_set import reread_working_set

__all__ = [
    "FLOPS_PER_FMA", "L2_USABLE_FRACTION", "MATMUL_TILE", "NUM_SMS", "PROGRAMS_IN_FLIGHT",
    "REGISTERS_PER_PROGRAM", "Cost", "GraphCost", "Hints", "Rule", "Size", "bound",
    "ceil_div", "ceilings", "dram_bytes", "graph_cost", "l2_hits",
    "matmul_l2_spill", "modelled_time", "node_cost", "programs_in_flight",
    "register_price", "reread_working_set", "rewrite_pays",
    "size_hints", "softmax_row_waves", "softmax_threads", "storage_root", "sym",
]
