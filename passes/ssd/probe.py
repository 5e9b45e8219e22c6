"""Checking a matched region by evaluating it: the region's nodes are copied into a
small graph whose inputs are the operands the matcher found, run on random operands at
the region's own sizes, and compared with the SSD reference (codegen/ssd/reference.py).

A chunked SSD written any other way (another decay, a missing term, B and C swapped, a
mask off by one) disagrees on random inputs, so the einsum chain needs no pattern of its
own; the same check decides which of the two `repeat_interleave` inputs is B.

A graph dynamo recompiled with the length symbolic (a second prompt length) runs at
every length its guards admit, and the padding to whole chunks and the chunk count
change with it: such a region is probed at several lengths, each within the symbol's
range and guards (which often pin the chunk count or whether the length is padded):
dynamo's example and one length of each other (chunk count, padded) class admitted,
up to four, so one example does not stand for the others.
"""

from __future__ import annotations

import sympy
import torch
from torch import fx
from torch.utils._sympy.interp import sympy_interp
from torch.utils._sympy.reference import PythonReferenceAnalysis

from ioaware.codegen.ssd import reference
from ioaware.passes.driver import NoMatch
from ioaware.passes.views import hint
from ioaware.verify import TOLERANCE, relative_error

from .chunked import ChunkedSSD, is_size, val

OPERANDS = ("x", "dt", "A", "B", "C", "D", "dt_bias", "h0")


Sizes = dict  # a value for each of the graph's size symbols (sympy.Symbol -> int)


def size(s: int | torch.SymInt, sizes: Sizes | None) -> int:
    """A (possibly symbolic) size at the assignment `sizes`; dynamo's example without."""
    if sizes is None or not isinstance(s, torch.SymInt):
        return hint(s)
    return int(s.node.expr.xreplace(sizes))


def region_module(region: ChunkedSSD, operands: dict[str, fx.Node]
                  ) -> tuple[fx.GraphModule, list[torch.SymInt]]:
    """The region's nodes as a GraphModule of the present operands (in OPERANDS order)
    and then the symbolic sizes it reads (returned beside it, to be given values per
    probe), returning (y, final state or y)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for name in OPERANDS:
        if operands.get(name) is not None:
            env[operands[name]] = g.placeholder(name)
    sizes = [a for n in region.nodes for a in n.all_input_nodes if is_size(a)]
    sizes = list(dict.fromkeys(sizes))
    for i, a in enumerate(sizes):
        env[a] = g.placeholder(f"size{i}")
    for n in region.nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    outs = [env[n] if n is not None else None for n in (region.y, region.final)]
    g.output(tuple(outs))
    return fx.GraphModule(torch.nn.Module(), g), [a.meta["val"] for a in sizes]


def _random(node: fx.Node, name: str, gen: torch.Generator, *,
            sizes: Sizes | None = None) -> torch.Tensor:
    """Random values for operand `name` at the node's shape, its symbolic sizes at
    `sizes` (dynamo's example sizes when None)."""
    v = val(node)
    if v is None:
        raise NoMatch(f"{node.name}: {name} has no shape to probe the region with")
    shape = tuple(size(s, sizes) for s in v.shape)
    t = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name == "A":  # decays in (0, 1): A < 0
        t = -(t.abs() + 0.1)
    elif name == "dt":
        t = t * 0.5
    return t.to(device=v.device, dtype=v.dtype)


def probe_sizes(region: ChunkedSSD) -> list[Sizes | None]:
    """The size assignments to probe the region at: None (dynamo's example) for a graph
    whose only symbolic size of x is the batch (rows never mix); for a symbolic length,
    several lengths its range and guards admit. NoMatch for symbolic heads or head_dim,
    or a length that is an expression rather than a size of its own."""
    shape = val(region.x).shape
    symbolic = [name for name, s in zip(("batch", "length", "heads", "head_dim"), shape)
                if isinstance(s, torch.SymInt)]
    if [name for name in symbolic if name not in ("batch", "length")]:
        raise NoMatch(f"{region.x.name}: x's {', '.join(symbolic)} symbolic; the region is "
                      f"probed at example sizes, which stand only for the batch and length")
    if "length" not in symbolic:
        return [None]
    if not isinstance(shape[1].node.expr, sympy.Symbol):
        raise NoMatch(f"{region.x.name}: x's length is {shape[1].node.expr}, not a size of "
                      f"its own: the region cannot be probed at the lengths it runs at")
    env, example = shape[1].node.shape_env, hint(shape[1])
    examples = getattr(env, "backed_var_to_val", None) or env.var_to_val
    base = {sym: int(v) for sym, v in examples.items()}
    # Operands traced as separate inputs carry a length symbol each (x's, and another
    # that the padding is computed from): every symbol at the example length takes the
    # probe's length (one that is not a length, at that value by chance, is the batch:
    # harmless), and the guards reject any assignment the graph would not run at
    symbols = {sym for sym, v in base.items() if v == example}
    bounds = [env.var_to_range[s] for s in symbols if s in env.var_to_range]
    guards = list(dict.fromkeys(g.expr for g in env.guards if g.expr.free_symbols & symbols))
    c = region.chunk

    def at(n: int) -> Sizes:
        return {**base, **dict.fromkeys(symbols, n)}

    def admitted(n: int) -> bool:
        return (all(b.lower <= n <= b.upper for b in bounds)
                and all(_holds(g, at(n)) for g in guards))

    # dynamo's guards often pin the chunk count and whether there is padding: beside the
    # example, one length of each other (chunks, padded) class the guards admit and one
    # more of the example's own, up to four; a padded class is tried at its ends (one
    # past a chunk boundary, one short of the next)
    def kind(n: int) -> tuple[int, bool]:
        return -(-n // c), n % c != 0

    chosen = [example]
    for k in range(1, 5):
        for n in (k * c, (k - 1) * c + 1, k * c - 1):
            taken = sum(kind(m) == kind(n) for m in chosen)
            room = 2 if kind(n) == kind(example) else 1
            if len(chosen) < 4 and n >= 1 and n not in chosen and taken < room \
                    and admitted(n):
                chosen.append(n)
    return [at(n) for n in chosen]


def _holds(guard: sympy.Basic, sizes: Sizes) -> bool:
    """Whether a guard holds at `sizes`: evaluated with Python's integer arithmetic (a
    sympy substitution re-simplifies every Max and Mod on the way: 30x slower)."""
    try:
        return bool(sympy_interp(PythonReferenceAnalysis, sizes, guard))
    except (AttributeError, KeyError, NotImplementedError, TypeError):  # an op it lacks
        return bool(guard.xreplace(sizes))


def verify(region: ChunkedSSD) -> ChunkedSSD:
    """The region with B and C in their roles, or NoMatch when it is not the SSD: it must
    agree with the reference at every assignment of `probe_sizes`."""
    # the region rounds where its inputs' dtype does (dt's softplus in bf16, ...): that
    # dtype's tolerance; a region computing another map misses by far more
    out = val(region.y if region.y is not None else region.final).dtype
    tol = max(TOLERANCE.get(out, 1e-4), TOLERANCE.get(val(region.x).dtype, 1e-4))
    roles = ((region.B, region.C), (region.C, region.B))
    errors = [0.0, 0.0]  # each role's worst error over the probes
    base = {"x": region.x, "dt": region.dt, "A": region.A, "D": region.D,
            "dt_bias": region.dt_bias, "h0": region.h0}
    for i, (b_node, c_node) in enumerate(roles):
        module, symbols = region_module(region, {**base, "B": b_node, "C": c_node})
        for sizes in probe_sizes(region):
            errors[i] = max(errors[i], _error(region, module, symbols,
                                              {**base, "B": b_node, "C": c_node}, sizes))
            if errors[i] > tol:
                break
        else:
            region.B, region.C = b_node, c_node
            return region
    raise NoMatch(f"{region.anchor.name}: the region does not compute the SSD recurrence "
                  f"(relative error {min(errors):.3g} against it on random operands)")


def _error(region: ChunkedSSD, module: fx.GraphModule, symbols: list[torch.SymInt],
           operands: dict[str, fx.Node | None], sizes: Sizes | None) -> float:
    """The region's relative error against the reference on random operands (B and C
    in the roles `operands` gives them) at `sizes`."""
    gen = torch.Generator().manual_seed(0)
    args = {k: _random(n, k, gen, sizes=sizes) for k, n in operands.items()
            if n is not None and k != "C"}
    # only the final state is used (B is C): C is a stand-in for B
    args["C"] = (args["B"] if operands["B"] is operands["C"]
                 else _random(operands["C"], "C", gen, sizes=sizes))
    with torch.no_grad():
        y, final = module(*(args[k] for k in OPERANDS if k in args),
                          *(size(s, sizes) for s in symbols))
        y_ref, final_ref = reference.ssd_chunked(
            args["x"], args["dt"], args["A"], args["B"], args["C"], args.get("D"),
            args.get("dt_bias"), region.dt_softplus, args.get("h0"),
            dt_limit=region.dt_limit)
    err = relative_error(y.float(), y_ref) if region.y is not None else 0.0
    if region.final is not None:
        err = max(err, relative_error(final.float(), final_ref))
    return err
