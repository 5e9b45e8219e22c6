"""The scan kernel family: first-order diagonal linear recurrences as fused Triton kernels,
Mamba's selective scan (forward and backward) and the generic linear scan.

    forward.py    the selective-scan forward template        backward.py  its backward
    linear.py     the generic linear scan                    reference.py the torch reference
    op.py         ioaware::selective_scan, ioaware::linear_scan (schema, fake, autograd)
    tiles.py      the tiles that fit a device's SRAM        price.py     the kernels' cost

Importing the package registers the ops, their prices and their renderers.
"""

from ioaware import tiles as sram_budget
from ioaware.codegen import render
from ioaware.codegen.cache import register_renderer
from ioaware.codegen.scan import backward, forward, host, linear, op, price, tiles

# The tuned configs a module lists come from the family's tile candidates, which read the
# SRAM budget every family shares: both decide the text.
register_renderer("scan_fwd", forward.render_forward, tiles, sram_budget, render)
register_renderer("scan_bwd", backward.render_backward, forward, tiles, sram_budget, render)
register_renderer("scan_linear", linear.render_linear, forward, render)

__all__ = ["host", "op", "price", "tiles"]
