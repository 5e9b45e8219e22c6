"""The attention kernel family: exact attention (FlashAttention-2) forward and backward as
generated Triton kernels, with the masks, score modifications, GQA and dropout an
AttentionSpec carries.

    forward.py    the forward templates and their tiles      backward.py  the backward's
    header.py     what both directions declare: constexprs, primitives, the general switches
    blocks.py     the runtime block map of a data mask       reference.py the torch reference
    op.py         ioaware::flash_attention, ioaware::attention (schema, fake, autograd)

Importing the package registers the ops and the renderers of both directions.
"""

from ioaware import tiles
from ioaware.codegen import expr, render
from ioaware.codegen.attention import backward, blocks, forward, header, op, reference
from ioaware.codegen.cache import register_renderer

# The sources each kind's text depends on: editing one invalidates the modules it made.
SOURCES = (header, blocks, expr, reference, tiles, render)
register_renderer("attention_fwd", forward.render_forward, *SOURCES)
register_renderer("attention_bwd", backward.render_backward, *SOURCES)

__all__ = ["op"]
