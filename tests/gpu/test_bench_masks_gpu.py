"""`ioaware bench attention --mask` on a CUDA GPU, at a small size: every variant's
ioaware rows and Flex pass the bench's own check against eager (the learned table's
gradient included for `bias`) and get a time; the window is shrunk to bite at N=1000."""

from __future__ import annotations

import pytest
import torch

from ioaware.bench import masks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_every_masked_variant_checks_and_times(kind, monkeypatch):
    monkeypatch.setattr(masks, "WINDOW", 100)
    rows = masks.bench_masked(kind, 2, 4, 1000, 64, "bf16", vs=("flex",),
                              warmup_ms=1, rep_ms=5)
    by_name = {r.variant: r for r in rows}
    for name in ("ioaware kernel", "ioaware.compile(eager)"):
        row = by_name[name]
        assert row.ok, (name, row.rel_err, row.note)
        assert row.fwd_ms and row.fwd_bwd_ms and row.fwd_tflops, (name, row)
    flex = by_name["flex_attention"]
    # Flex may be missing from this torch (or its captured-gradient support); if it
    # ran, it must agree with eager too, and the speed-ups are against it
    if flex.ok is not None:
        assert flex.ok, (flex.rel_err, flex.note)
        assert by_name["ioaware kernel"].speedup_fwd is not None
