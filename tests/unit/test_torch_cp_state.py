"""Reading torch's context_parallel state (ioaware/parallel/torch_cp.py) without a
process group: off when nothing replaced SDPA, a clear error (not local attention) when
torch's context-parallel wrapper is installed in a way ioaware does not know."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from ioaware.parallel import torch_cp


def test_off_when_sdpa_is_torchs_own():
    assert torch_cp.active() is None


def test_unknown_context_parallel_wrapper_is_refused(monkeypatch):
    def wrapper(*args, **kwargs):
        raise AssertionError("never called")

    wrapper.__module__ = "torch.distributed.tensor.experimental._future_cp"
    monkeypatch.setattr(F, "scaled_dot_product_attention", wrapper)
    with pytest.raises(RuntimeError, match="in a way ioaware does not know"):
        torch_cp.active()


def test_another_librarys_sdpa_is_not_context_parallel(monkeypatch):
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: None)
    assert torch_cp.active() is None
