"""The decode kernel family: split-KV attention (FlashDecoding) for a few query rows
against a long key/value cache, dense or paged, with the GQA group packed into one tile.

    spec.py       DecodeSpec: the AttentionSpec of the region, dense or paged
    forward.py    the split and merge kernels          reference.py the torch reference
    op.py         ioaware::decode_attention, ioaware::paged_decode_attention
    tiles.py      the packed query tile, the key tile   price.py     the cost, the split count

Importing the package registers the ops, their prices and the renderer.
"""

from ioaware import tiles as sram_budget
from ioaware.codegen import (
    attention,  # noqa: F401  (first: expr imports its Spec)
    expr,
    render,
)
from ioaware.codegen.attention import blocks, header
from ioaware.codegen.attention import reference as attention_reference
from ioaware.codegen.cache import register_renderer
from ioaware.codegen.decode import forward, op, price, reference, tiles

# The sources the rendered text depends on: the attention family's header and printer
# (the mask and score-mod functions the decode kernels call) as well as its own.
SOURCES = (forward, header, blocks, expr, attention_reference, tiles, sram_budget, render)
register_renderer("decode", forward.render_decode, *SOURCES)

__all__ = ["op", "price", "reference", "tiles"]
