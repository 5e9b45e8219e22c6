"""The decode family's Spec, prices and split choice, and the decode pass's routes and
reasons (no kernels run: prices and the report on the meta device)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ioaware import hardware
from ioaware.api import explain_on
from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.codegen.decode import op as decode_op
from ioaware.codegen.decode.price import choose_splits, decode_cost, decode_time, prefill_time
from ioaware.codegen.decode.spec import DecodeSpec
from ioaware.examples import paged_decode
from ioaware.report import build_report

H100 = hardware.get_profile("h100")


def _spec(**kw) -> AttentionSpec:
    return AttentionSpec(head_dim=128, head_dim_v=128, dtype="bfloat16", causal=False,
                         scale=0.088, **kw)


def test_spec_round_trips_and_validates():
    spec = DecodeSpec(_spec(mask="kv_idx <= q_idx + 5"), paged=True)
    assert DecodeSpec.from_json(spec.to_json()) == spec
    assert spec.key() != DecodeSpec(spec.attention).key()
    with pytest.raises(ValueError, match="dropout_p"):
        DecodeSpec(_spec(dropout_p=0.1))
    with pytest.raises(TypeError, match="AttentionSpec"):
        DecodeSpec("not a spec")


def test_decode_cost_bytes():
    # B=8, Hq=32, Hkv=8, Nq=1, Nk=32768, d=128, bf16, one split
    c = decode_cost(8, 32, 8, 1, 32768, 128, 128, 2)
    kv = 8 * 8 * 32768 * (128 + 128) * 2  # K and V read once per KV head
    q = 8 * 32 * 1 * 128 * 2
    assert c.read_bytes == kv + q
    assert c.write_bytes == 8 * 32 * 128 * 2 + 8 * 32 * 4  # out, lse (fp32)
    paged = decode_cost(8, 32, 8, 1, 32768, 128, 128, 2, page_size=16)
    assert paged.read_bytes - c.read_bytes == 8 * (32768 // 16) * 8  # the block table
    split = decode_cost(8, 32, 8, 1, 32768, 128, 128, 2, splits=4)
    partial = 8 * 8 * 4 * 16 * (128 + 1) * 4  # [B·Hkv, S, 16 packed rows, dv + 1] fp32
    assert split.read_bytes - c.read_bytes == partial
    assert split.write_bytes - c.write_bytes == partial


def test_splits_fill_the_device():
    """One program per (batch, KV head) leaves an H100 idle at small batch: the model
    splits the keys until the waves are full, and not at all for a short cache."""
    s = choose_splits(H100, 8, 131072, 16, 256, 2, 64)  # B=1, Hkv=8, 128k
    assert 8 * s >= H100.num_sms  # at least one program per SM
    assert choose_splits(H100, 64, 64, 16, 256, 2, 64) == 1  # 64 keys: one tile
    t_dec, _ = decode_time(H100, 1, 32, 8, 1, 131072, 128, 128, 2)
    assert t_dec < prefill_time(H100, 1, 32, 8, 1, 131072, 128, 128, 2) / 4
    floor = 8 * 131072 * 256 * 2 / (H100.measured_hbm_bandwidth or H100.hbm_bandwidth)
    assert t_dec < 1.3 * floor


def test_decode_supports_says_why_not():
    assert decode_op.decode_supports(_spec()) is None
    assert decode_op.decode_supports(_spec(mask="kv_idx <= q_idx", mask_semantics="add",
                                           mask_fill=-1e4)) is not None


def _explain(fn, *args):
    return explain_on("h100", fn, *args)


def test_pass_routes_decode_and_not_prefill():
    q1 = torch.randn(2, 8, 1, 64)
    q_long = torch.randn(2, 8, 40, 64)
    k, v = torch.randn(2, 2, 300, 64), torch.randn(2, 2, 300, 64)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    decode = _explain(attend, q1, k, v)
    assert [r.kind for r in decode.rewrites] == ["decode"]  # one region, one record
    assert decode.rewrites[0].detail["rows"] == "4x1"
    assert decode.rewrites[0].detail["kernel"] == "split-KV decode"
    prefill = _explain(attend, q_long, k, v)
    assert [r.kind for r in prefill.rewrites] == ["attention"]
    assert not prefill.fallbacks  # prefill calls are not decode candidates at all
    # dropout keeps the prefill kernels
    dropped = _explain(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, dropout_p=0.5, enable_gqa=True), q1, k, v)
    assert [r.kind for r in dropped.rewrites] == ["attention"]
    assert any("dropout" in f.reason for f in dropped.fallbacks if f.kind == "decode")


def test_a_3d_bmm_spelling_is_routed():
    """The attention rewrite of a 3-D bmm spelling inserts views with no meta; the route
    computes their fake values (CI found `KeyError: 'val'` at Nq=1, Nk=2)."""
    def bmm_attention(q, k, v):
        s = torch.bmm(q.reshape(1, 1, 16), k.reshape(1, -1, 16).transpose(1, 2)) * 0.25
        return torch.bmm(torch.softmax(s, -1), v.reshape(1, -1, 16)).view(1, 1, 1, -1)

    q, k, v = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)
    expl = _explain(bmm_attention, q, k, v)
    assert [r.kind for r in expl.rewrites] == ["decode"] and not expl.fallbacks, expl


@pytest.mark.parametrize("gather", sorted(paged_decode.GATHERS))
def test_paged_report_reads_the_pages_once(gather):
    """`ioaware report` of the paged example: the whole graph's modelled HBM bytes within
    1.5x of reading the pages the block table names once (the gathered copies gone)."""
    model, args = paged_decode.make(gather=gather, device="meta")
    report = build_report(model, args, device="h100")
    _, k_pages, _, table, _ = args
    _, page, h_kv, d = k_pages.shape
    pages_once = table.numel() * page * h_kv * 2 * d * k_pages.element_size()
    assert [r.kind for r in report.regions if r.status == "rewritten"] == ["decode"]
    assert report.regions[0].detail["kernel"] == "paged split-KV decode"
    after = report.totals.after.hbm_bytes
    assert after <= 1.5 * pages_once, (after, pages_once)
    assert report.totals.before.hbm_bytes >= 2 * pages_once  # the gather's copy and reads
    assert math.isfinite(report.totals.after.modelled_time_s)
