"""The price registry: which rule prices each op, and the prices of a node and a graph.

A rule takes a node of the canonical graph and returns its Cost, or None when it cannot
price that call. Rules are keyed by (namespace, op name without overload): the ATen rules
(ioaware/cost/aten.py) register under "aten", and each kernel family registers its own
ops from its folder (`codegen/<family>/price.py`), as it registers their fakes, so the
cost model never imports a kernel.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import sympy
import torch
from torch import fx

from ioaware.cost.algebra import Cost
from ioaware.cost.nodes import meta_val, op_name

Rule = Callable[[fx.Node], Cost | None]
_RULES: dict[tuple[str, str], Rule] = {}


def register_price(*names: str, namespace: str = "aten") -> Callable[[Rule], Rule]:
    """Decorator: `rule` prices the ops `names` of `namespace` (a later registration of
    the same name replaces the earlier one). Also callable as `register_price(...)(rule)`."""

    def register(rule: Rule) -> Rule:
        for name in names:
            _RULES[(namespace, name)] = rule
        return rule

    return register


# Python-level calls make_fx leaves for size arithmetic (s0 * s1, s0 // 2, ...).
_SIZE_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.pow, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge, operator.getitem, math.ceil, math.floor,
    torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not,
}


def node_cost(node: fx.Node) -> Cost | None:
    """The HBM bytes, FLOPs and transcendentals of one node; None if the model has no rule.

    placeholder / get_attr / output nodes move nothing themselves (their consumers read).
    An `ioaware::` op is priced by the rule its kernel family registers on import
    (`ioaware.codegen.load_families()` imports them all): unpriced until then.
    """
    if node.op in ("placeholder", "get_attr", "output"):
        return Cost()
    if node.op != "call_function":
        return None
    if node.target in _SIZE_ARITHMETIC:
        return Cost()
    namespace = getattr(node.target, "namespace", None)
    name = op_name(node.target)
    rule = _RULES.get((namespace, name))
    if rule is None and name.endswith("_") and not name.endswith("__"):
        # an in-place op (add_, copy_, detach_) moves what its out-of-place form does:
        # it reads its inputs, self included, and writes self
        rule = _RULES.get((namespace, name[:-1]))
    return rule(node) if rule is not None else None


class GraphCost(NamedTuple):
    """A graph's total and each node's cost; unpacks as `total, per_node`.

    The total leaves out unpriced nodes, so read it with `num_unpriced` beside it."""

    total: Cost
    per_node: list[tuple[fx.Node, Cost | None]]

    @property
    def unpriced(self) -> list[fx.Node]:
        """Nodes the model has no rule for (not counted in `total`)."""
        return [node for node, c in self.per_node if c is None]

    @property
    def num_unpriced(self) -> int:
        return len(self.unpriced)

    def unpriced_ops(self) -> dict[str, int]:
        """How many nodes of each unpriced op, by the op's name: {"aten.foo.default": 2}."""
        counts: dict[str, int] = {}
        for node in self.unpriced:
            name = str(node.target) if node.op == "call_function" else node.op
            counts[name] = counts.get(name, 0) + 1
        return counts


def graph_cost(gm: fx.GraphModule) -> GraphCost:
    """Sum of every priced node's cost, and each node with its cost (None: unpriced)."""
    per_node = [(node, node_cost(node)) for node in gm.graph.nodes]
    total = sum((c for _, c in per_node if c is not None), Cost())
    return GraphCost(total, per_node)


def size_hints(gm: fx.GraphModule) -> dict[sympy.Symbol, int]:
    """The example value of every size symbol in the graph (from its ShapeEnv)."""
    for node in gm.graph.nodes:
        for value in _flat(meta_val(node)):
            shape_env = None
            if isinstance(value, torch.SymInt):
                shape_env = value.node.shape_env
            elif isinstance(value, torch.Tensor):
                shape_env = getattr(getattr(value, "fake_mode", None), "shape_env", None)
            if shape_env is not None:
                # torch 2.13 renamed var_to_val (still there, deprecated) to backed_var_to_val
                values = (shape_env.backed_var_to_val if hasattr(shape_env, "backed_var_to_val")
                          else shape_env.var_to_val)
                if values:
                    return {s: int(v) for s, v in values.items()}
    return {}


def _flat(value: Any) -> Iterable[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flat(v)
    elif value is not None:
        yield value
