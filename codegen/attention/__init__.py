"""The attention kernel family: exact attention (FlashAttention-2) forward and backward as
generated Triton kernels, with the masks, score modifications, GQA and dropout an
AttentionSpec carries.

    forward.py    the forward templates and their tiles      backward.py  the backward's
    header.py     what both directions declare: constexprs, primitives, the general switches
    gluon_kernel.py  the FA3-style Gluon forward (sm_90, Triton 3.6); gluon_forward.py its
                  gate (Spec, Triton, device, tensors) and launch
    gluon_bwd_kernel.py  FA3's backward schedule for dK/dV in Gluon; gluon_backward.py its
                  gate and launch (a pinnable dK/dV config of the plain backward)
    blocks.py     the runtime block map of a data mask       reference.py the torch reference
    op.py         ioaware::flash_attention, ioaware::attention (schema, fake, autograd)
    tiles.py      the tiles that fit a device's SRAM        price.py     the kernels' cost

Importing the package registers the ops, their prices and the renderers of both directions.
"""

from ioaware import tiles as sram_budget
from ioaware.codegen import expr, render
from ioaware.codegen.attention import (
    backward,
    blocks,
    forward,
    gluon_backward,
    gluon_forward,
    header,
    host,
    op,
    price,
    reference,
    tiles,
)
from ioaware.codegen.cache import register_renderer

# The sources each kind's text depends on: editing one invalidates the modules it made. The
# tuned configs a module lists come from the family's tile candidates, which read the SRAM
# budget every family shares.
SOURCES = (header, blocks, expr, reference, tiles, sram_budget, render, gluon_forward,
           gluon_backward)
register_renderer("attention_fwd", forward.render_forward, *SOURCES)
register_renderer("attention_bwd", backward.render_backward, *SOURCES)

__all__ = ["host", "op", "price", "tiles"]
