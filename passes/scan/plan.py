"""The scan plan: which kernel a matched recurrence becomes, and what it replaces.

`selective_scan` (Mamba) when a = exp(Δ ⊗ A), b = Δ ⊗ B ⊗ u over [Bt, Dc, L, N] and the
states are read out with C (readout.py, fusion.py): the (Bt, Dc, L, N) tensors a, b and
the states never reach HBM, the region reads u, Δ, B, C once and writes y.
`linear_scan` otherwise, on the materialised a and b; the readout stays as it was, and
the plan says why it was not fused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import fx

from ioaware import cost
from ioaware.codegen.scan import tiles
from ioaware.codegen.scan.price import linear_scan_cost, selective_scan_cost
from ioaware.codegen.scan.spec import ScanKind, ScanSpec
from ioaware.passes.driver import NoMatch
from ioaware.passes.scan.fusion import (
    Epilogue,
    frame_axes,
    match_epilogue,
    match_selective,
    softplus_nodes,
)
from ioaware.passes.scan.order import NodeOrder
from ioaware.passes.scan.readout import match_full_readout, match_readout
from ioaware.passes.scan.record import Readout, Recurrence, Selective, dtype_of, is_tensor
from ioaware.passes.views import hinted_shape
from ioaware.spec import DTYPES, dtype_name


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """One recurrence's rewrite, decided.

    kind: the kernel. nodes: the eager nodes it replaces (what "before" prices).
    after: the kernel's modelled Cost. detail: `Rewrite.detail` (plain data).
    selective, readout, epilogue: the fused producers, readout and gate (selective only).
    order: the scan pass run's node order, which the rewrite refreshes.
    """

    kind: ScanKind
    rec: Recurrence
    nodes: list[fx.Node]
    after: cost.Cost
    detail: dict[str, Any]
    order: NodeOrder
    selective: Selective | None = None
    readout: Readout | None = None
    epilogue: Epilogue | None = None


def plan_rewrite(rec: Recurrence, order: NodeOrder, profile: Any = None) -> ScanPlan:
    """Selective (fused producers and readout) where it matches, else linear, or NoMatch.
    A selective scan is priced at the tile tiles.scan_tile gives on `profile`."""
    why_not = None
    if not rec.reverse:
        try:
            return _selective(rec, order, profile)
        except NoMatch as e:
            why_not = str(e)
    return _linear(rec, order, why_not)


def _selective(rec: Recurrence, order: NodeOrder, profile: Any) -> ScanPlan:
    ro = match_readout(rec, order) if rec.states is not None else match_full_readout(rec, order)
    sel = match_selective(rec)
    epi = match_epilogue(rec, sel, ro)
    extra = _extra_state_users(rec, ro, epi, order)
    if extra:
        raise NoMatch(extra)
    u_dtype = dtype_of(sel.u)
    if u_dtype not in DTYPES.values():
        raise NoMatch(f"{sel.u.name}: u is {u_dtype}")
    bt, dc, n = (sel.frame[i] for i in range(4) if i != rec.dim)
    spec = ScanSpec(kind=ScanKind.SELECTIVE, dtype=dtype_name(u_dtype), d_state=n,
                    has_h0=rec.h0 is not None, has_D=epi.D is not None,
                    has_z=epi.z is not None, has_delta_bias=sel.delta_bias is not None,
                    delta_softplus=sel.softplus)
    dax = [i for i in range(4) if i != rec.dim][1]
    grouped = ro.grouped or (dax in frame_axes(sel.B, sel.frame) and dc != 1)
    has_bias = sel.delta_bias is not None
    tile = None if profile is None else tiles.scan_tile(profile, n, u_dtype.itemsize)
    after = selective_scan_cost(
        bt, dc, rec.length, n, u_dtype.itemsize, groups=dc if grouped else 1,
        has_D=epi.D is not None, has_z=epi.z is not None,
        has_delta_bias=has_bias, delta_softplus=sel.softplus,
        block_d=tile and tile["block_d"], chunk=tile and tile["chunk"])
    nodes = [*sel.nodes, *rec.region, *ro.nodes, ro.output, *epi.nodes]
    nodes += softplus_nodes(sel)
    fused = ["softplus"] * sel.softplus + ["delta_bias"] * has_bias
    detail = _detail(rec, ["discretize", *fused, "readout", *epi.fused],
                     "selective_scan", u_dtype, n)
    detail["spec"] = spec.key()
    if tile:
        detail["tiles"] = tile
    return ScanPlan(ScanKind.SELECTIVE, rec, nodes, after, detail, order,
                    selective=sel, readout=ro, epilogue=epi)


def _linear(rec: Recurrence, order: NodeOrder, why_not: str | None) -> ScanPlan:
    b_dtype = torch.promote_types(dtype_of(rec.b), dtype_of(rec.a) if isinstance(rec.a, fx.Node)
                                  and is_tensor(rec.a) else dtype_of(rec.b))
    if b_dtype not in DTYPES.values():
        raise NoMatch(f"{rec.b.name}: the recurrence is in {b_dtype}, not fp16/bf16/fp32")
    state_dtype = dtype_of(rec.states[0]) if rec.states else dtype_of(rec.all_states)
    if state_dtype != b_dtype:
        raise NoMatch(f"{rec.anchor.name}: the state is {state_dtype} but a, b promote to "
                      f"{b_dtype}")
    rows, feats = _rows_features(hinted_shape(rec.b), rec.dim)
    after = linear_scan_cost(rows, rec.length, feats, b_dtype.itemsize,
                                  has_h0=rec.h0 is not None)
    detail = _detail(rec, [], "linear_scan", b_dtype, 1)
    if why_not:
        detail["not_fused"] = why_not
    return ScanPlan(ScanKind.LINEAR, rec, list(rec.region), after, detail, order)


def _rows_features(shape: tuple[int, ...], dim: int) -> tuple[int, int]:
    rows = int(np.prod(shape[:dim])) if dim else 1
    feats = int(np.prod(shape[dim + 1:])) if dim + 1 < len(shape) else 1
    return rows, feats


def _extra_state_users(rec: Recurrence, ro: Readout, epi: Epilogue, order: NodeOrder
                       ) -> str | None:
    """Why the states cannot all stay in the kernel, or None. Only the last state may
    have other readers (they get h_last), and only after the fused region's output,
    where h_last is defined."""
    allowed = set(rec.region) | set(ro.nodes)
    readers = [u for n in ro.last for u in n.users]
    if rec.states is not None:
        for t, s in enumerate(rec.states[:-1]):
            extra = [u for u in s.users if u not in allowed]
            if extra:
                return (f"{s.name}: the state of step {t} is used outside the readout "
                        f"({extra[0].name})")
        readers = [u for u in rec.states[-1].users if u not in allowed]
    early = [u for u in readers if order(u) < order(epi.output)]
    if early:
        return f"{early[0].name}: reads the last state before the readout is complete"
    return None


def _detail(rec: Recurrence, fused: list[str], op: str, dtype: torch.dtype, d_state: int
            ) -> dict:
    return {"form": rec.form.value, "length": rec.length, "d_state": d_state, "fused": fused,
            "op": op, "dtype": dtype_name(dtype), "reverse": rec.reverse}
