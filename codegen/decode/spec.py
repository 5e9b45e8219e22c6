"""DecodeSpec: what the split-KV decode kernels are generated from.

A decode region is an attention region (its mask, score modification, inputs and GQA
all as the AttentionSpec says) whose query is a few rows against a long key/value
cache. The Spec adds only what changes the decode kernels' text: whether K and V are
read dense or page by page through a block table. Page size, split count, lengths and
batch stay runtime values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import TensorInput


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Split-KV attention of a few query rows against a long cache.

    attention: the region's semantics (scale, causal, mask, score_mod, inputs, mask
        semantics). Its dropout_p must be 0: decode is inference (a region with dropout
        keeps the prefill kernels).
    paged: K and V are caches `[num_blocks, block_size, Hkv, d]` (vLLM's layout) read
        through an int block table `[B, max_blocks]`: logical key n of batch b is slot
        n % block_size of block block_table[b, n // block_size]. Else dense
        `[B, Hkv, Nk, d]` with any strides.
    """

    attention: AttentionSpec
    paged: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.attention, AttentionSpec):
            raise TypeError(f"attention must be an AttentionSpec; got "
                             f"{type(self.attention).__name__}")
        if self.attention.dropout_p != 0.0:
            raise ValueError(f"attention.dropout_p={self.attention.dropout_p}: the decode "
                             "kernels do not drop out (inference); use the prefill kernels")
        if not isinstance(self.paged, bool):
            raise TypeError(f"paged={self.paged!r} must be a bool")

    def to_json(self) -> str:
        """Every field as JSON; `from_json` inverts it (the custom ops' spec argument)."""
        return json.dumps({"attention": json.loads(self.attention.to_json()),
                           "paged": self.paged}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DecodeSpec:
        fields = json.loads(text)
        att = fields["attention"]
        att["inputs"] = tuple(TensorInput(**t) for t in att.get("inputs", ()))
        return cls(attention=AttentionSpec(**att), paged=bool(fields["paged"]))

    def key(self) -> str:
        """A stable hash of every field (hex), used in kernel cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]
