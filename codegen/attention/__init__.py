"""The attention kernel family: exact attention (FlashAttention-2) forward and backward as
generated Triton kernels, with the masks, score modifications, GQA and dropout an
AttentionSpec carries.

    forward.py    the forward templates and their tiles      backward.py  the backward's
    blocks.py     the runtime block map of a data mask       reference.py the torch reference
    op.py         ioaware::flash_attention, ioaware::attention (schema, fake, autograd)

Importing the package registers the ops and the renderers of both directions.
"""

from ioaware import tiles
from ioaware.codegen import expr
from ioaware.codegen.attention import backward, blocks, forward, op, reference
from ioaware.codegen.cache import register_renderer

register_renderer("attention_fwd", forward.render_forward, blocks, expr, reference, tiles)
register_renderer("attention_bwd", backward.render_backward, forward, blocks, expr, reference,
                  tiles)

__all__ = ["op"]
