"""Rendering an Explanation: human units exactly, and every row and reason shown."""

from __future__ import annotations

import pytest

from ioaware.explain import Explanation, Fallback, Rewrite, render_explanation
from ioaware.tables import format_bytes, format_flops, format_ratio


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),  # decimal units, as bandwidths are quoted (3.0 TB/s)
        (1536, "1.5 KB"),
        (262_144, "262.1 KB"),
        (999_949, "999.9 KB"),
        (999_960, "1.0 MB"),  # rounds up into the next unit, never "1000.0 KB"
        (4_194_304, "4.2 MB"),
        (4 * 2**30, "4.3 GB"),  # a 4 GiB score matrix
        (3 * 10**12, "3.0 TB"),
        (-1500, "-1.5 KB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 FLOP"),
        (2_097_152, "2.1 MFLOP"),  # 4·B·H·N²·d for B=2, H=4, N=64, d=16
        (549_755_813_888, "549.8 GFLOP"),  # 4·4·16·4096²·128, half of it causal
        (3.5e12, "3.5 TFLOP"),
        (2e18, "2000.0 PFLOP"),  # past the last unit it keeps counting in it
    ],
)
def test_format_flops(n: float, text: str) -> None:
    assert format_flops(n) == text


def test_format_ratio() -> None:
    assert format_ratio(4_194_304, 262_144) == "16.0×"
    assert format_ratio(100, 0) == "-"


def _explanation() -> Explanation:
    return Explanation(
        rewrites=[
            Rewrite("attention", {"mask": "causal"}, 4_194_304, 262_144, 2_097_152, "reference"),
            Rewrite("attention", {"mask": "none", "gqa": 2}, 10**9, 10**6, 3 * 10**12, "triton",
                    graph=1),
        ],
        fallbacks=[
            Fallback("attention", "softmax output also used by mul_3 (expected one use)", 1),
        ],
        graphs=2,
    )


def test_render_shows_rows_units_and_summary() -> None:
    text = render_explanation(_explanation(), color=False)
    assert "mask=causal" in text and "mask=none, gqa=2" in text
    assert "4.2 MB → 262.1 KB" in text and "16.0×" in text
    assert "1.0 GB → 1.0 MB" in text and "1000.0×" in text
    assert "2.1 MFLOP" in text and "3.0 TFLOP" in text
    assert "reference" in text and "triton" in text
    assert "softmax output also used by mul_3 (expected one use)" in text
    # The total row sums both regions: 1_004_194_304 → 1_262_144 bytes.
    assert "1.0 GB → 1.3 MB" in text and "795.6×" in text
    assert text.rstrip().splitlines()[-1] == "found 3 regions: rewrote 2, left 1 (reasons above)"


def test_render_without_colour_has_no_escape_codes() -> None:
    assert "\x1b[" not in render_explanation(_explanation(), color=False)
    assert "\x1b[" in render_explanation(_explanation(), color=True)


def test_str_of_explanation_is_the_table() -> None:
    expl = _explanation()
    assert str(expl) == render_explanation(expl)


def test_render_empty_explanation() -> None:
    text = render_explanation(Explanation(), color=False)
    assert text.strip() == "found 0 regions: rewrote 0, left 0"


def test_render_only_fallbacks() -> None:
    expl = Explanation(fallbacks=[Fallback("scan", "loop trip count is data-dependent")], graphs=1)
    text = render_explanation(expl, color=False)
    assert "rewrites" not in text
    assert "loop trip count is data-dependent" in text
    assert text.rstrip().endswith("found 1 region: rewrote 0, left 1 (reasons above)")


def test_format_seconds() -> None:
    from ioaware.tables import format_seconds

    assert format_seconds(1.5) == "1.50 s"
    assert format_seconds(1.24e-3) == "1.24 ms"
    assert format_seconds(3.1e-6) == "3.10 µs"
    assert format_seconds(12e-9) == "12.0 ns"


def test_report_table_rows_and_speed_up() -> None:
    from ioaware.report import Figures, Region, Report, Totals
    from ioaware.tables import render, report_renderables

    # 1 GB in 1 ms before, 1 MB in 10 µs after: 100x by modelled time.
    before = Figures(hbm_bytes=10**9, flops=10**9, modelled_time_s=1e-3, bound="memory",
                     read_bytes=6 * 10**8, write_bytes=4 * 10**8)
    after = Figures(hbm_bytes=10**6, flops=10**9, modelled_time_s=1e-5, bound="compute",
                    read_bytes=9 * 10**5, write_bytes=10**5)
    report = Report(
        target="t", device="h100", dtype="bfloat16", sizes={"N": 4096}, graphs=1,
        regions=[Region(0, "attention", "rewritten", detail={"mask": "causal"},
                        backend="triton", before=before, after=after),
                 Region(0, "scan", "fallback", reason="loop trip count is data-dependent")],
        totals=Totals(before, after, {"aten::conv1d": 2}, {}),
    )
    text = render(report_renderables(report), width=140, color=False)
    assert "t on h100, bfloat16, N=4096" in text
    assert "600.0 MB" in text and "900.0 KB" in text and "100.0×" in text
    assert "1.00 ms" in text and "10.00 µs" in text and " 1000 " in text  # FLOP/B after
    assert "loop trip count is data-dependent" in text and "mask=causal; runs as triton" in text
    assert "2 unpriced ops (not in the totals): aten::conv1d ×2" in text
    assert text.rstrip().splitlines()[-1].startswith("found 2 regions: rewrote 1, left 1")
