"""The SSD kernel family: Mamba-2's state-space dual (scalar decay per head, matrix
state per head) as chunked Triton kernels on tensor cores, forward and backward.

    spec.py       SSDSpec                                  op.py        ioaware::ssd (+ _backward)
    forward.py    the fused forward template               backward.py  its backward
    reference.py  the torch reference                      tiles.py     chunk and tiles by the cost model
    price.py      the kernels' cost
    step.py       the decode step (L = 1) template         step_op.py   ioaware::ssd_step (in place)

Importing the package registers the ops, their prices and their renderers.
"""

from ioaware import tiles as sram_budget
from ioaware.codegen import render
from ioaware.codegen.cache import register_renderer
from ioaware.codegen.ssd import backward, forward, op, price, step, step_op, tiles

# The chunk and the tuned configs a module lists come from tiles.py: both decide the text.
register_renderer("ssd_fwd", forward.render_forward, tiles, sram_budget, render)
register_renderer("ssd_bwd", backward.render_backward, forward, tiles, sram_budget, render)
register_renderer("ssd_step", step.render_step, forward, tiles, sram_budget, render)

__all__ = ["op", "price", "step_op", "tiles"]
