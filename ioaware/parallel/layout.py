"""Which positions of the global sequence each rank of a context-parallel group holds.

A `ShardLayout` gives every rank an ordered list of chunks (start, length) of the
global sequence [0, seq_len); a rank's local tensor is the concatenation of its chunks
along the sequence axis, in that order. Queries and keys share one layout
(self-attention), so a rank's queries and its key/value shard cover the same positions.

    contiguous_layout   rank r holds [r·S/W, (r+1)·S/W)            (non-causal masks)
    zigzag_layout       rank r holds chunks r and 2W-1-r of 2W      (causal, window)
    balanced_layout     contiguous ranges of equal modelled work   (documents)

Why zigzag: under a causal mask query row i sees i+1 keys, so the work of a contiguous
shard grows with r (the last rank does 2W-1 times the first's). Pairing an early chunk
with its mirror from the end gives every rank (2W+1)/2 chunk-pairs' work up to
rounding (Brandon et al. 2023, "striped"/"zigzag" ring attention). A sliding window
makes every row's work equal except the first w rows, which zigzag evens out too.

Why by work for documents: under a block-diagonal (document) mask row i sees the keys
of its own document only (or the ones before it, if causal), so the work is a function
of the document lengths, not of i. `document_row_work` models it per row;
`balanced_layout` cuts the sequence where the running sum crosses k/W of the total.
"""

from __future__ import annotations

import dataclasses

import torch

Chunk = tuple[int, int]  # (global start, length)


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """chunks[r]: the (start, length) chunks rank r holds, in local order."""

    seq_len: int
    chunks: tuple[tuple[Chunk, ...], ...]

    def __post_init__(self) -> None:
        covered = sorted((s, n) for rank in self.chunks for s, n in rank if n > 0)
        pos = 0
        for start, length in covered:
            if start != pos:
                raise ValueError(f"chunks must tile [0, seq_len={self.seq_len}) exactly; "
                                 f"position {pos} is {'repeated' if start < pos else 'missing'}")
            pos = start + length
        if pos != self.seq_len:
            raise ValueError(f"chunks cover [0, {pos}); seq_len={self.seq_len}")

    @property
    def world(self) -> int:
        return len(self.chunks)

    def length(self, rank: int) -> int:
        """Rows rank `rank` holds locally."""
        return sum(n for _, n in self.chunks[rank])

    def local_chunks(self, rank: int) -> list[tuple[int, int, int]]:
        """(local start, global start, length) of each non-empty chunk of `rank`."""
        out, local = [], 0
        for start, length in self.chunks[rank]:
            if length > 0:
                out.append((local, start, length))
            local += length
        return out

    def positions(self, rank: int) -> torch.Tensor:
        """int64 [length(rank)]: the global position of each local row (position ids)."""
        parts = [torch.arange(s, s + n) for s, n in self.chunks[rank]]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def shard(self, x: torch.Tensor, rank: int, dim: int = -2) -> torch.Tensor:
        """Rank `rank`'s part of the global tensor `x` (sequence along `dim`)."""
        if x.shape[dim] != self.seq_len:
            raise ValueError(f"x.shape[{dim}]={x.shape[dim]} must equal the layout's "
                             f"seq_len={self.seq_len}")
        return torch.cat([x.narrow(dim, s, n) for s, n in self.chunks[rank]], dim=dim)

    def unshard(self, parts: list[torch.Tensor], dim: int = -2) -> torch.Tensor:
        """The global tensor from every rank's part (parts[r] as `shard` gave it)."""
        pieces = []
        for rank, part in enumerate(parts):
            for local, start, length in self.local_chunks(rank):
                pieces.append((start, part.narrow(dim, local, length)))
        return torch.cat([p for _, p in sorted(pieces, key=lambda t: t[0])], dim=dim)


def _check(seq_len: int, world: int) -> None:
    if world < 1:
        raise ValueError(f"world={world} must be at least 1")
    if seq_len < world:
        raise ValueError(f"seq_len={seq_len} is shorter than world={world}: every rank "
                         "needs at least one position")


def contiguous_layout(seq_len: int, world: int) -> ShardLayout:
    """Rank r holds [⌊r·S/W⌋, ⌊(r+1)·S/W⌋): lengths differ by at most one."""
    _check(seq_len, world)
    cuts = [r * seq_len // world for r in range(world + 1)]
    return ShardLayout(seq_len, tuple(((cuts[r], cuts[r + 1] - cuts[r]),)
                                      for r in range(world)))


def zigzag_layout(seq_len: int, world: int) -> ShardLayout:
    """2W chunks of ⌊S/2W⌋ or ⌈S/2W⌉ positions; rank r holds chunks r and 2W-1-r."""
    _check(seq_len, world)
    n = 2 * world
    cuts = [i * seq_len // n for i in range(n + 1)]
    chunk = [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(n)]
    return ShardLayout(seq_len, tuple((chunk[r], chunk[n - 1 - r]) for r in range(world)))


def balanced_layout(row_work: torch.Tensor, world: int) -> ShardLayout:
    """Contiguous ranges, cut where the running work crosses k/W of the total.

    row_work: [S] non-negative work of each query row (e.g. visible keys per row,
    `document_row_work`). Every rank gets at least one row."""
    if row_work.dim() != 1:
        raise ValueError(f"row_work must be 1-D [seq_len]; got shape {tuple(row_work.shape)}")
    seq_len = row_work.shape[0]
    _check(seq_len, world)
    if bool((row_work < 0).any()):
        raise ValueError("row_work must be non-negative")
    total = torch.cumsum(row_work.double().cpu(), 0)
    targets = total[-1] * torch.arange(1, world, dtype=torch.float64) / world
    cuts = [0] + [int(c) + 1 for c in torch.searchsorted(total, targets)] + [seq_len]
    for r in range(1, world + 1):  # at least one row each, and monotone
        cuts[r] = min(max(cuts[r], cuts[r - 1] + 1), seq_len - (world - r))
    return ShardLayout(seq_len, tuple(((cuts[r], cuts[r + 1] - cuts[r]),)
                                      for r in range(world)))


def document_row_work(doc_ids: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Visible keys per query row under a document mask: [S] int64.

    doc_ids: [S] document id of each position, documents contiguous. Causal: row i sees
    the positions of its document up to i; otherwise its whole document."""
    if doc_ids.dim() != 1:
        raise ValueError(f"doc_ids must be 1-D [seq_len]; got shape {tuple(doc_ids.shape)}")
    ids = doc_ids.cpu()
    new_doc = torch.ones_like(ids, dtype=torch.bool)
    new_doc[1:] = ids[1:] != ids[:-1]
    doc_index = torch.cumsum(new_doc.long(), 0) - 1
    starts = torch.nonzero(new_doc).flatten()
    lengths = torch.diff(torch.cat([starts, torch.tensor([ids.shape[0]])]))
    pos = torch.arange(ids.shape[0])
    if causal:
        return pos - starts[doc_index] + 1
    return lengths[doc_index]
