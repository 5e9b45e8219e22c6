"""Scan candidates: every place a linear recurrence might be, by spelling, and the one
dispatch from a candidate to the matcher of its spelling (spellings.py).
"""

from __future__ import annotations

import dataclasses
import enum

from torch import fx

from ioaware.passes.driver import NoMatch
from ioaware.passes.scan.order import NodeOrder
from ioaware.passes.scan.record import Recurrence, is_call
from ioaware.passes.scan.spellings import (
    MATMUL_OPS,
    closed_form_candidates,
    hop_candidates,
    loop_candidates,
    match_closed_form,
    match_hop,
    match_loop,
    match_tree,
    matrix_candidates,
    through_views,
    tree_candidates,
    unmove,
)


class CandidateKind(enum.Enum):
    HOP = "hop"  # the associative_scan higher-order op
    TREE = "tree"  # the odd-even tree dynamo inlines for associative_scan: (a, b)
    LOOP = "loop"  # an unrolled Python loop: its chain of steps
    MATRIX = "matrix"  # a loop whose state goes through a matrix product (never rewritten)
    CLOSED = "closed"  # h = P · cumsum(b / P): the closed form


@dataclasses.dataclass(frozen=True)
class ScanCandidate:
    """One place a recurrence might be. nodes: (node,) for HOP, MATRIX and CLOSED, (a, b)
    for TREE, the steps for LOOP. order: the node order of the pass run that found it."""

    kind: CandidateKind
    nodes: tuple[fx.Node, ...]
    order: NodeOrder = dataclasses.field(compare=False)

    @property
    def anchor(self) -> fx.Node:
        return self.nodes[0]


def candidates(gm: fx.GraphModule) -> list[ScanCandidate]:
    """Every candidate, by spelling, with one node order taken for the whole run."""
    order = NodeOrder(gm)  # matching never edits the graph: refreshed only by a rewrite
    found = [(CandidateKind.HOP, (n,)) for n in hop_candidates(gm)]
    found += [(CandidateKind.TREE, tuple(p)) for p in tree_candidates(gm)]
    found += [(CandidateKind.LOOP, tuple(c)) for c in loop_candidates(gm)]
    found += [(CandidateKind.MATRIX, (n,)) for n in matrix_candidates(gm)]
    found += [(CandidateKind.CLOSED, (n,)) for n in closed_form_candidates(gm)]
    return [ScanCandidate(kind, nodes, order) for kind, nodes in found]


def alive(gm: fx.GraphModule, cand: ScanCandidate) -> bool:
    """Whether every node of `cand` is still in the graph (an earlier rewrite removes some).
    The order holds exactly the graph's nodes: `n in gm.graph.nodes` would walk the graph."""
    return all(isinstance(n, fx.Node) and n.graph is gm.graph and n in cand.order
               for n in cand.nodes)


def match_candidate(gm: fx.GraphModule, cand: ScanCandidate) -> Recurrence:
    """The recurrence `cand` spells, with time moved back where its spelling moved it."""
    kind, nodes = cand.kind, cand.nodes
    if kind in (CandidateKind.HOP, CandidateKind.TREE):
        rec = match_hop(gm, nodes[0]) if kind is CandidateKind.HOP else match_tree(gm, *nodes)
        unmove(rec)
        return rec
    if kind is CandidateKind.LOOP:
        return match_loop(list(nodes))
    if kind is CandidateKind.CLOSED:
        return match_closed_form(nodes[0])
    node = nodes[0]
    mm = next(through_views(x) for x in node.args if is_call(through_views(x), *MATMUL_OPS))
    raise NoMatch(f"{node.name}: the state goes through a matrix product ({mm.name}), "
                  "h = M·h + b; only diagonal recurrences h = a⊙h + b are rewritten")
