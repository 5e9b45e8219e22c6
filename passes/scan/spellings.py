"""Matchers for the three spellings of a linear recurrence (see passes/scan.py):
unrolled Python loops, associative_scan (the higher-order op and the generic odd-even
tree dynamo inlines), and the cumsum / cumprod closed forms. Each returns a
`Recurrence` or raises `NoMatch` naming the node and what was expected.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware.passes.driver import NoMatch
from ioaware.passes.scan.record import (
    Recurrence,
    ScanForm,
    aten,
    fake_value,
    is_add,
    is_call,
    is_mul,
    is_tensor,
    is_zero,
    same_structure,
    time_slice,
)
from ioaware.passes.views import LAYOUT_OPS, hinted_shape

# ---------------------------------------------------------------------------------------
# matching: unrolled loops


def _steps(gm: fx.GraphModule) -> tuple[dict, dict]:
    """Candidate steps add(mul(p, q), b_t) and the links h_{t-1} → h_t between them.

    Returns (steps: add → mul, nxt: add → next add). A link exists where one operand of
    a step's mul is another step's add; a state used by two steps links to neither.
    """
    steps = {}
    for node in gm.graph.nodes:
        if is_add(node):
            muls = [x for x in node.args if is_mul(x)]
            if len(muls) >= 1:
                steps[node] = muls
    nxt: dict[fx.Node, Any] = {}
    for s, muls in steps.items():
        for m in muls:
            prevs = [x for x in m.args if x in steps]
            if len(prevs) == 1:
                p = prevs[0]
                nxt[p] = s if p not in nxt else None  # None: two successors
    return steps, {p: s for p, s in nxt.items() if s is not None}


def loop_candidates(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Chains h_0 → h_1 → … of at least two steps whose a_t or b_t is a time slice."""
    steps, nxt = _steps(gm)
    has_prev = set(nxt.values())
    chains = []
    for s in steps:
        if s in has_prev or s not in nxt:
            continue
        chain = [s]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        if len(chain) >= 2 and any(time_slice(x) for x in chain[1].args):
            chains.append(chain)
    return chains


def _split_step(add: fx.Node, prev: Any) -> tuple[fx.Node, Any, Any]:
    """(mul, a_t, b_t) of `add` = a_t · prev + b_t (either operand order)."""
    for m, b_t in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
        if is_mul(m) and prev in m.args:
            x, y = m.args
            if x is y:
                raise NoMatch(f"{add.name}: the state multiplies itself (not linear)")
            return m, (y if x is prev else x), b_t
    raise NoMatch(f"{add.name}: not a_t * h + b_t with h the previous step's state")


def _head(chain: list[fx.Node]) -> tuple[fx.Node, Any, Any, Any]:
    """The first step's (mul, a_0, b_0, h_init): the h operand is the one that is not
    the slice of the second step's a (or the same constant)."""
    _, a1, _ = _split_step(chain[1], chain[0])
    s = chain[0]
    for m, b_t in ((s.args[0], s.args[1]), (s.args[1], s.args[0])):
        if not is_mul(m):
            continue
        for a0, h in ((m.args[0], m.args[1]), (m.args[1], m.args[0])):
            t0, t1 = time_slice(a0), time_slice(a1)
            if (t0 and t1 and t0[:2] == t1[:2]) or (not t1 and not t0 and same_structure(a0, a1)):
                return m, a0, b_t, h
    raise NoMatch(f"{s.name}: the first step does not multiply by the same a as the others")


def match_loop(chain: list[fx.Node]) -> Recurrence:
    mul0, a0, b0, h_init = _head(chain)
    parts = [(chain[0], mul0, a0, b0)]
    for prev, s in itertools.pairwise(chain):
        m, a_t, b_t = _split_step(s, prev)
        parts.append((s, m, a_t, b_t))

    first_b = time_slice(b0)
    if first_b is None:
        raise NoMatch(f"{chain[0].name}: b_0 = {getattr(b0, 'name', b0)} is not a time slice "
                      "b[..., t, ...] of one tensor")
    b_src, dim, b_index0, keepdim = first_b
    a_slice0 = time_slice(a0)
    a_const = a_slice0 is None
    if a_const and isinstance(a0, fx.Node) and not is_tensor(a0):
        raise NoMatch(f"{chain[0].name}: a_0 is not a tensor or a number")
    length = len(chain)
    step = 1
    for t, (s, m, a_t, b_t) in enumerate(parts):
        tb = time_slice(b_t)
        if tb is None or tb[0] is not b_src or tb[1] != dim or tb[3] != keepdim:
            raise NoMatch(f"{s.name}: step {t} adds {getattr(b_t, 'name', b_t)}, not a slice of "
                          f"{b_src.name} along dim {dim} as step 0 does (the steps differ)")
        if t == 1:
            step = tb[2] - b_index0
            if step not in (1, -1):
                raise NoMatch(f"{s.name}: steps read {b_src.name} at {b_index0}, {tb[2]}: "
                              "not consecutive time steps")
        if tb[2] != b_index0 + step * t:
            raise NoMatch(f"{s.name}: step {t} reads {b_src.name}[{tb[2]}] along dim {dim}, "
                          f"expected {b_index0 + step * t} (the steps differ)")
        if a_const:
            if not same_structure(a_t, a0):
                raise NoMatch(f"{s.name}: step {t} multiplies by {getattr(a_t, 'name', a_t)}, "
                              f"step 0 by {getattr(a0, 'name', a0)} (the steps differ)")
        else:
            ta = time_slice(a_t)
            if (ta is None or ta[0] is not a_slice0[0] or ta[1] != a_slice0[1] or ta[3] != keepdim
                    or ta[2] != tb[2]):
                raise NoMatch(f"{s.name}: step {t} multiplies by {getattr(a_t, 'name', a_t)}, "
                              f"not {a_slice0[0].name} at the step's own time (the steps differ)")
        if len(m.users) != 1:
            users = ", ".join(u.name for u in m.users)
            raise NoMatch(f"{m.name}: the product a_t·h_(t-1) of step {t} is used elsewhere "
                          f"({users})")
    size = hinted_shape(b_src)[dim]
    reverse = step == -1
    expected_first = size - 1 if reverse else 0
    if b_index0 != expected_first or length != size:
        raise NoMatch(f"{chain[0].name}: the loop covers {length} of the {size} steps along "
                      f"dim {dim} of {b_src.name}, starting at {b_index0}")
    if not a_const and fake_value(a_slice0[0]).dim() != fake_value(b_src).dim():
        raise NoMatch(f"{a0.name}: a and b have ranks {fake_value(a_slice0[0]).dim()} and "
                      f"{fake_value(b_src).dim()}")
    h0 = None if is_zero(h_init) else h_init
    if h0 is not None and not is_tensor(h0):
        raise NoMatch(f"{chain[0].name}: initial state {h_init} is not a tensor")
    states = [s for s, *_ in parts]
    if reverse:
        states.reverse()
    region = [n for s, m, a_t, b_t in parts for n in (s, m, a_t, b_t) if isinstance(n, fx.Node)
              and (n in (s, m) or time_slice(n))]
    a_full = a0 if a_const else a_slice0[0]
    return Recurrence(form=ScanForm.LOOP, a=a_full, b=b_src, dim=dim, length=length,
                      reverse=reverse, h0=h0, anchor=chain[0], region=region, states=states,
                      a_const=a_const,
                      keepdim=keepdim)


MATMUL_OPS = {aten.mm.default, aten.bmm.default, aten.mv.default}


def through_views(node: Any) -> Any:
    while is_call(node, *LAYOUT_OPS):
        node = node.args[0]
    return node


def matrix_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """Heads of chains h_t = M_t @ h_{t-1} + b_t (two steps or more): not diagonal, left
    to eager, and said so."""
    step = {}
    for node in gm.graph.nodes:
        if is_add(node):
            for x in node.args:
                mm = through_views(x)
                if is_call(mm, *MATMUL_OPS):
                    prev = [through_views(y) for y in mm.args]
                    step[node] = (mm, prev)
    heads = []
    for node, (mm, prev) in step.items():
        if not any(p in step for p in prev) and any(
                any(node is p for p in step[u][1]) for u in _users_through_views(node)
                if u in step):
            heads.append(node)
    return heads


def _users_through_views(node: fx.Node) -> list[fx.Node]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        for u in n.users:
            if is_call(u, *LAYOUT_OPS, *MATMUL_OPS):
                stack.append(u)
            else:
                out.append(u)
    return out


# ---------------------------------------------------------------------------------------
# matching: associative_scan


def _combine_is_linear(combine: fx.GraphModule) -> str | None:
    """None if the combine subgraph is (a1, b1), (a2, b2) → (a1·a2, a2·b1 + b2), else why."""
    ph = [n for n in combine.graph.nodes if n.op == "placeholder"]
    out = next(n for n in combine.graph.nodes if n.op == "output")
    if len(ph) != 4:
        return f"the combine function takes {len(ph)} tensors, expected 2 pairs (a, b)"
    a1, b1, a2, b2 = ph
    res = out.args[0]
    if len(res) != 2:
        return f"the combine function returns {len(res)} tensors, expected (a, b)"
    oa, ob = res
    if not (is_mul(oa) and set(oa.args) == {a1, a2}):
        return "the combine's first output is not a1·a2"
    if not is_add(ob):
        return "the combine's second output is not a2·b1 + b2"
    for m, other in ((ob.args[0], ob.args[1]), (ob.args[1], ob.args[0])):
        if other is b2 and is_mul(m) and set(m.args) == {a2, b1}:
            return None
    return "the combine's second output is not a2·b1 + b2"


HOP_TARGETS = {op for op in [getattr(torch.ops.higher_order, "associative_scan", None)] if op}


def hop_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_call(n, *HOP_TARGETS)]


def match_hop(gm: fx.GraphModule, node: fx.Node) -> Recurrence:
    combine, xs = node.args[0], node.args[1]
    extra = node.args[2] if len(node.args) > 2 else ()
    sub = getattr(gm, combine.target) if combine.op == "get_attr" else None
    if not isinstance(sub, fx.GraphModule):
        raise NoMatch(f"{node.name}: the combine function is not a graph")
    if extra:
        raise NoMatch(f"{node.name}: the combine function closes over {len(extra)} tensors")
    why = _combine_is_linear(sub)
    if why is not None:
        raise NoMatch(f"{node.name}: {why}; only the linear recurrence is rewritten")
    a, b = xs
    outs = [u for u in node.users if is_call(u, operator.getitem)]
    states = [u for u in outs if u.args[1] == 1]
    if len(states) != 1:
        raise NoMatch(f"{node.name}: expected one reader of the states, found {len(states)}")
    # The scan's first output, Π_{s<=t} a_s, is what torch.cumprod gives; a graph that
    # reads it (captures on CUDA keep the getitem alive) gets that instead.
    products = [u for u in outs if u.args[1] == 0 and u.users]
    return Recurrence(form=ScanForm.ASSOCIATIVE_SCAN, a=a, b=b, dim=0,
                      length=hinted_shape(b)[0], reverse=False, h0=None, anchor=node,
                      region=[node, *outs],
                      all_states=states[0], products=products[0] if products else None)


# The odd-even tree of combine_mode="generic", interpreted on row intervals.


@dataclasses.dataclass
class _Rows:
    """Abstract value along axis 0: row i combines time steps lo[i]..hi[i] (lo = -1: a
    row with no meaning, from padding). kind: "a" (Π a), "b" (the state from 0 over
    the interval), "ab" (a·b of adjacent intervals, waiting for its + b)."""

    kind: str
    lo: np.ndarray
    hi: np.ndarray
    mid: np.ndarray | None = None  # "ab": where the b part ends

    def __len__(self) -> int:
        return len(self.lo)


def _rows_slice(v: _Rows, start: Any, end: Any, step: Any) -> _Rows:
    sl = slice(start, end, step)
    return _Rows(v.kind, v.lo[sl], v.hi[sl], None if v.mid is None else v.mid[sl])


def _interpret(node: fx.Node, env: dict) -> _Rows | None:
    """The abstract value of `node`, or None when it is not part of a tree scan."""
    args = node.args
    if is_call(node, aten.slice.Tensor):
        v = env.get(args[0])
        dim = args[1] if len(args) > 1 else 0
        if v is None or dim != 0:
            return None
        start = args[2] if len(args) > 2 else None
        end = args[3] if len(args) > 3 else None
        step = args[4] if len(args) > 4 else 1
        return _rows_slice(v, start, end, step)
    if is_call(node, aten.cat.default):
        parts = [env.get(x) for x in args[0]]
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if dim != 0 or any(p is None for p in parts) or len({p.kind for p in parts}) != 1:
            return None
        return _Rows(parts[0].kind, np.concatenate([p.lo for p in parts]),
                     np.concatenate([p.hi for p in parts]))
    if is_call(node, aten.pad.default, aten.constant_pad_nd.default):
        v, pad = env.get(args[0]), list(args[1])
        rank = fake_value(node).dim()
        if v is None or len(pad) != 2 * rank or any(pad[:-2]) or pad[-2] != 0:
            return None
        extra = np.full(pad[-1], -1)
        return _Rows(v.kind, np.concatenate([v.lo, extra]), np.concatenate([v.hi, extra]))
    if is_call(node, aten.stack.default):
        parts = [env.get(x) for x in args[0]]
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1 or len(parts) != 2 or any(p is None for p in parts) or \
                parts[0].kind != parts[1].kind or len(parts[0]) != len(parts[1]):
            return None
        # stack on axis 1 then view(…) merging axes 0, 1: rows interleave
        return _Rows(parts[0].kind + "|stacked", np.stack([parts[0].lo, parts[1].lo], 1),
                     np.stack([parts[0].hi, parts[1].hi], 1))
    if is_call(node, aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        v = env.get(args[0])
        if v is None or not v.kind.endswith("|stacked"):
            return None
        s_in, s_out = hinted_shape(args[0]), hinted_shape(node)
        if s_out != (s_in[0] * s_in[1], *s_in[2:]):
            return None
        return _Rows(v.kind.split("|")[0], v.lo.reshape(-1), v.hi.reshape(-1))
    if is_call(node, aten.flip.default):
        v = env.get(args[0])
        if v is None or list(args[1]) not in ([0], [-fake_value(node).dim()]):
            return None
        return _Rows(v.kind, v.lo[::-1], v.hi[::-1])
    if is_mul(node):
        x, y = (env.get(a) for a in args)
        if x is None or y is None or len(x) != len(y):
            return None
        if x.kind == "a" and y.kind == "a":
            lo, hi = np.minimum(x.lo, y.lo), np.maximum(x.hi, y.hi)
            ok = ((x.hi + 1 == y.lo) | (y.hi + 1 == x.lo)) & (x.lo >= 0) & (y.lo >= 0)
            return _Rows("a", np.where(ok, lo, -1), np.where(ok, hi, -1))
        if {x.kind, y.kind} == {"a", "b"}:
            a_, b_ = (x, y) if x.kind == "a" else (y, x)
            ok = (b_.hi + 1 == a_.lo) & (a_.lo >= 0) & (b_.lo >= 0)
            return _Rows("ab", np.where(ok, b_.lo, -1), np.where(ok, a_.hi, -1),
                         np.where(ok, a_.lo, -1))
        return None
    if is_add(node):
        x, y = (env.get(a) for a in args)
        if x is None or y is None or len(x) != len(y) or {x.kind, y.kind} != {"ab", "b"}:
            return None
        ab, b_ = (x, y) if x.kind == "ab" else (y, x)
        # a2·b1 + b2: the b part must cover exactly the a part's interval
        ok = (ab.mid == b_.lo) & (ab.hi == b_.hi) & (ab.lo >= 0) & (b_.lo >= 0)
        return _Rows("b", np.where(ok, ab.lo, -1), np.where(ok, ab.hi, -1))
    return None


def tree_candidates(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(a, b) pairs the odd-even tree starts from: a first combine mul(a[1::2], b[::2])."""
    pairs = []
    for node in gm.graph.nodes:
        if not is_mul(node):
            continue
        x, y = node.args
        sx, sy = _odd_even(x), _odd_even(y)
        if sx and sy and sx[1] != sy[1]:
            a, b = (sx[0], sy[0]) if sx[1] == 1 else (sy[0], sx[0])
            if (a is not b and is_tensor(a) and hinted_shape(a) == hinted_shape(b)
                    and (a, b) not in pairs
                    and not _combined(a) and not _combined(b)):
                pairs.append((a, b))
    return pairs


def _combined(node: Any) -> bool:
    """An inner level of a tree: a combine's output (a mul or add of odd-even slices)."""
    stack, seen = [node], 0
    while stack and seen < 8:
        n = stack.pop()
        seen += 1
        if _odd_even(n):
            return True
        if is_mul(n) or is_add(n):
            stack.extend(x for x in n.args if isinstance(x, fx.Node))
    return False


def _odd_even(node: Any) -> tuple[fx.Node, int] | None:
    """(X, start) for X[start::2] along axis 0."""
    if is_call(node, aten.slice.Tensor) and len(node.args) == 5 and node.args[1] == 0 \
            and node.args[4] == 2 and node.args[2] in (0, 1):
        return node.args[0], node.args[2]
    return None


def match_tree(gm: fx.GraphModule, a: fx.Node, b: fx.Node) -> Recurrence:
    """The states node of the odd-even tree from leaves a, b (time on axis 0)."""
    length = hinted_shape(b)[0]
    reverse = False
    leaves = {a: "a", b: "b"}
    env = {x: _Rows(kind, np.arange(length), np.arange(length)) for x, kind in leaves.items()}
    region, found = [], None
    target = np.arange(length)
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(x in env for x in node.all_input_nodes):
            continue
        v = _interpret(node, env)
        if v is None:
            continue
        env[node] = v
        region.append(node)
        if (v.kind == "b" and len(v) == length and np.array_equal(v.hi, target)
                and np.array_equal(v.lo, np.zeros(length))):
            found = node
            break
    if found is None:
        raise NoMatch(f"{b.name}: the odd-even tree over {a.name}, {b.name} does not compute "
                      "the linear recurrence (its combine is not (a1·a2, a2·b1 + b2), or a "
                      "step is missing)")
    keep = _ancestors(found, set(region))
    return Recurrence(form=ScanForm.ASSOCIATIVE_SCAN, a=a, b=b, dim=0, length=length,
                      reverse=reverse, h0=None, anchor=found,
                      region=[n for n in region if n in keep],
                      all_states=found)


def _ancestors(node: fx.Node, within: set[fx.Node]) -> set[fx.Node]:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in out or n not in within:
            continue
        out.add(n)
        stack.extend(n.all_input_nodes)
    return out


def unmove(rec: Recurrence) -> None:
    """Read a and b before the wrapper's movedim(x, dim, 0) (and flip, for reverse=True),
    and the states after its flip and movedim back, so the scan runs on the caller's
    layout (no copies)."""
    flips = [x for x in (rec.a, rec.b) if is_call(x, aten.flip.default) and list(x.args[1]) == [0]]
    users = list(rec.all_states.users)
    if (len(flips) == 2 and len(users) == 1 and is_call(users[0], aten.flip.default)
            and list(users[0].args[1]) == [0]):
        rec.a, rec.b, rec.reverse = rec.a.args[0], rec.b.args[0], True
        rec.all_states = users[0]
        rec.region.append(users[0])
    srcs = []
    for x in (rec.a, rec.b):
        if is_call(x, aten.movedim.intlist, aten.movedim.int):
            src, dst = x.args[1], x.args[2]
            src = src[0] if isinstance(src, (list, tuple)) else src
            dst = dst[0] if isinstance(dst, (list, tuple)) else dst
            if dst == 0:
                srcs.append((x.args[0], src % fake_value(x).dim()))
                continue
        srcs.append(None)
    out = rec.all_states
    back = [u for u in out.users if is_call(u, aten.movedim.intlist, aten.movedim.int)]
    if None in srcs or srcs[0][1] != srcs[1][1] or len(back) != 1 or len(out.users) != 1:
        return
    dim = srcs[0][1]
    bsrc, bdst = back[0].args[1], back[0].args[2]
    bsrc = bsrc[0] if isinstance(bsrc, (list, tuple)) else bsrc
    bdst = bdst[0] if isinstance(bdst, (list, tuple)) else bdst
    if bsrc != 0 or bdst % fake_value(back[0]).dim() != dim:
        return
    rec.a, rec.b, rec.dim = srcs[0][0], srcs[1][0], dim
    rec.all_states = back[0]
    rec.region.append(back[0])


# ---------------------------------------------------------------------------------------
# matching: closed forms


def _cumulative_product(p: Any) -> tuple[Any, int, bool] | None:
    """(a or log a, dim, is_log) when p is Π_{s≤t} a_s along dim: exp(cumsum(x, dim)) (x is
    log a, or a's log is taken explicitly) or cumprod(a, dim)."""
    if is_call(p, aten.cumprod.default) and not p.kwargs.get("dtype"):
        return p.args[0], p.args[1] % fake_value(p).dim(), False
    if is_call(p, aten.exp.default) and is_call(p.args[0], aten.cumsum.default):
        cs = p.args[0]
        if cs.kwargs.get("dtype"):
            return None
        x, dim = cs.args[0], cs.args[1] % fake_value(cs).dim()
        if is_call(x, aten.log.default):
            return x.args[0], dim, False
        return x, dim, True
    return None


def closed_form_candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """mul(P, cumsum(b / P)) nodes: h_t = P_t · Σ_{s≤t} b_s / P_s with P = Π a."""
    out = []
    for node in gm.graph.nodes:
        if is_mul(node) and any(is_call(x, aten.cumsum.default) for x in node.args):
            out.append(node)
    return out


def match_closed_form(node: fx.Node) -> Recurrence:
    """h = P · cumsum(b / P, dim), P = exp(cumsum(log a, dim)) or cumprod(a, dim): the
    recurrence h_t = a_t·h_{t-1} + b_t from h_{-1} = 0, without dividing by P (which
    underflows for long L; there eager gives inf or NaN and the scan the recurrence's
    value)."""
    for p, s in (node.args, reversed(node.args)):
        if not is_call(s, aten.cumsum.default) or s.kwargs.get("dtype"):
            continue
        prod = _cumulative_product(p)
        inner = s.args[0]
        if (prod is None or not is_call(inner, aten.div.Tensor)
                or not same_structure(inner.args[1], p)):
            continue
        a, dim, is_log = prod
        b = inner.args[0]
        if s.args[1] % fake_value(s).dim() != dim or not is_tensor(b) or not is_tensor(a):
            raise NoMatch(f"{node.name}: the cumulative product and sum run along different "
                          "axes")
        rank = fake_value(node).dim()
        if fake_value(b).dim() != rank or fake_value(a).dim() != rank:
            raise NoMatch(f"{node.name}: a and b of ranks {fake_value(a).dim()}, "
                          f"{fake_value(b).dim()} broadcast into the state")
        region = [node, s, inner, p, *([p.args[0]] if is_call(p, aten.exp.default) else [])]
        if is_call(p, aten.exp.default) and is_call(p.args[0].args[0], aten.log.default):
            region.append(p.args[0].args[0])
        if inner.args[1] is not p:
            region += [inner.args[1], inner.args[1].args[0]]
        return Recurrence(form=ScanForm.CUMSUM, a=a, b=b, dim=dim,
                          length=hinted_shape(node)[dim], reverse=False, h0=None, anchor=node,
                          region=region,
                          all_states=node, a_is_log=is_log)
    raise NoMatch(f"{node.name}: a product with a cumsum that is not P·cumsum(b / P) with "
                  "P = exp(cumsum(log a)) or cumprod(a) on the same axis")


