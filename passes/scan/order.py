"""Node order: each node's index in its graph, owned by one run of the scan pass.

The readout matcher sorts the nodes of a step by graph order, and the driver asks whether
a candidate's nodes are still in the graph; an unrolled loop of L steps has O(L) nodes per
candidate, and `n in gm.graph.nodes` walks the graph, O(L·N) per candidate. One dict
answers both in O(1). Matching never edits the graph, so the order is taken when the
pass starts and again after each rewrite, by the rewrite.
"""

from __future__ import annotations

from torch import fx


class NodeOrder:
    """Position of every node of one graph (as it was at the last `refresh`)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.refresh(gm)

    def refresh(self, gm: fx.GraphModule) -> None:
        self._index = {n: i for i, n in enumerate(gm.graph.nodes)}

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def __call__(self, node: fx.Node) -> int:
        """The node's position (0 for a node the graph did not hold): a sort key."""
        return self._index.get(node, 0)
