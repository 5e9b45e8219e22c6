"""Rendering an Explanation: human units exactly, and every row and reason shown."""

from __future__ import annotations

import pytest

from ioaware.explain import Explanation, Fallback, Rewrite
from ioaware.tables import format_bytes, format_flops, format_ratio, render_explanation


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
