"""`ioaware report`: every bundled example to table, JSON, HTML and PNG; exact byte counts
of an attention region at two sizes and two dtypes; formulas that evaluate to the numbers."""

from __future__ import annotations

import json
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sympy

from ioaware.cli import EXAMPLES, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The regions each example is built to show (rewritten, or left with a reason).
EXPECTED_KINDS = {"gpt": {"attention"}, "llama": {"attention"}, "sdpa_gqa": {"attention"},
                  "mamba": {"scan"}, "hybrid": {"attention", "scan"},
                  "paged_decode": {"decode"}}


class _Text(HTMLParser):
    """The visible text of a page, and whether it pulls anything in from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and "://" in value:
                self.external.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _run_report(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(["report", *words]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_example_renders_table_json_html_png(example: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    paths = {ext: tmp_path / f"report.{ext}" for ext in ("json", "html", "png")}
    out = _run_report(capsys, example, "--device", "h100", "--json", str(paths["json"]),
                      "--html", str(paths["html"]), "--plot", str(paths["png"]))
    assert f"{example} on h100, float32" in out and "whole graph" in out
    assert "HBM read" in out and "modelled time" in out

    report = json.loads(paths["json"].read_text())
    assert report["schema_version"] == 1 and report["target"] == example
    assert report["device"]["name"] == "h100" and report["graphs"] >= 1
    summary = report["summary"]
    assert summary["regions"] == len(report["regions"])
    assert summary["rewritten"] + summary["fallback"] == summary["regions"]
    totals = report["totals"]
    for side in ("before", "after"):
        t = totals[side]
        assert t["hbm_bytes"] == t["read_bytes"] + t["write_bytes"] > 0
        assert t["flops"] > 0 and t["modelled_time_s"] > 0
    assert totals["unpriced_ops_before"] == sum(totals["unpriced_before"].values())
    # A rewrite never adds modelled traffic to the graph, and every rewritten region's
    # before side is part of the graph's before side.
    assert totals["after"]["hbm_bytes"] <= totals["before"]["hbm_bytes"]
    rewritten = [r for r in report["regions"] if r["status"] == "rewritten"]
    assert sum(r["before"]["hbm_bytes"] for r in rewritten) <= totals["before"]["hbm_bytes"]
    for r in rewritten:
        assert r["after"]["hbm_bytes"] <= r["before"]["hbm_bytes"]
    assert {r["kind"] for r in report["regions"]} >= EXPECTED_KINDS[example]
    for r in report["regions"]:
        assert r["status"] in ("rewritten", "fallback")
        assert r["status"] == "rewritten" or r["reason"]

    page = _Text()
    page.feed(paths["html"].read_text())
    text = "".join(page.text)
    assert "whole graph" in text and "HBM read" in text and f"{example} on h100" in text
    assert page.external == []  # self-contained

    png = paths["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width > 100 and height > 100


def _gpt_region(capsys: pytest.CaptureFixture[str], *overrides: str) -> dict:
    report = json.loads(_run_report(capsys, "gpt", "--device", "h100", "--json", *overrides))
    regions = [r for r in report["regions"] if r["status"] == "rewritten"]
    assert len(regions) == 2  # one per block, both the same
    return {**regions[0], "sizes": report["sizes"]}


def _unfused_gpt_bytes(B: int, N: int, itemsize: int) -> int:
    """HBM bytes of one eager attention region of examples/gpt.py (4 heads, d = 16):
    per (batch, head) S = N² scores, each pass reading and writing them:
        QKᵀ        read Q, K 2·N·16·it        write S·it
        / sqrt(d)  read S·it                  write S·it
        masked_fill read S·it + N² bool mask  write S·it   (the mask is shared by all heads)
        softmax    read S·it                  write S·it
        P @ V      read S·it + V N·16·it      write O N·16·it
    = 4·B·(8·N²·it + 64·N·it) + N²."""
    return 4 * B * (8 * N * N * itemsize + 64 * N * itemsize) + N * N


@pytest.mark.parametrize(("B", "N"), [(2, 64), (3, 128)])
def test_attention_bytes_before_are_exact(B: int, N: int,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    region = _gpt_region(capsys, "--batch", str(B), "--seq-len", str(N))
    assert region["sizes"] == {"B": B, "N": N}
    assert region["before"]["hbm_bytes"] == _unfused_gpt_bytes(B, N, 4)


def test_dtype_override_halves_the_scores(capsys: pytest.CaptureFixture[str]) -> None:
    region = _gpt_region(capsys, "--dtype", "bf16")
    assert region["detail"]["dtype"] == "bfloat16"
    assert region["before"]["hbm_bytes"] == _unfused_gpt_bytes(2, 64, 2)


def test_doubling_seq_len_quadruples_attention_bytes_before(
        capsys: pytest.CaptureFixture[str]) -> None:
    small = _gpt_region(capsys, "--seq-len", "1024")["before"]["hbm_bytes"]
    large = _gpt_region(capsys, "--seq-len", "2048")["before"]["hbm_bytes"]
    # 4·B·(32·N² + 256·N) + N²: the N² terms quadruple, the N terms double.
    assert large == _unfused_gpt_bytes(2, 2048, 4) and small == _unfused_gpt_bytes(2, 1024, 4)
    assert 3.95 < large / small < 4.0


def test_large_sizes_are_priced_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    # 32k tokens: the eager scores alone would be 4·2·32768²·4 bytes = 34 GB per pass. The
    # report builds the model on the meta device, so this takes as long as 64 tokens.
    region = _gpt_region(capsys, "--seq-len", "32768")
    assert region["before"]["hbm_bytes"] == _unfused_gpt_bytes(2, 32768, 4)
    # Fused, K and V are re-read once per query block instead of 8 passes over the scores.
    assert region["after"]["hbm_bytes"] < region["before"]["hbm_bytes"] // 20


def test_formulas_evaluate_to_the_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    report = json.loads(_run_report(capsys, "gpt", "--json", "--seq-len", "96", "--formulas"))
    sizes = {sympy.Symbol(k): v for k, v in report["sizes"].items()}
    names = {"N": sympy.Symbol("N"), "B": sympy.Symbol("B")}  # sympy's own N is a function
    checked = 0
    sides = [report["totals"]["before"], report["totals"]["after"]]
    sides += [r[s] for r in report["regions"] for s in ("before", "after") if r[s]]
    for side in sides:
        for field, text in side["expressions"].items():
            value = sympy.sympify(text, locals=names).xreplace(sizes)
            assert int(sympy.ceiling(value)) == side[field], (field, text)
            checked += 1
    assert checked >= 10
    b, n = names["B"], names["N"]
    region_before = sympy.sympify(report["regions"][0]["before"]["expressions"]["hbm_bytes"],
                                  locals=names)
    assert sympy.expand(region_before) == sympy.expand(4 * b * (32 * n**2 + 256 * n) + n**2)


def test_terminal_formulas_and_unpriced(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_report(capsys, "llama", "--formulas", "--seq-len", "32")
    assert "formulas" in out and "B*N" in out
    # A line always says how many ops went unpriced (none, or which and how many).
    assert "every op priced" in out or "unpriced op" in out


def test_fallback_regions_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The softmax output is used twice: the attention pass must leave it and say why.
    target = tmp_path / "shared_probs.py"
    target.write_text(
        "import torch\n"
        "def attention(q, k, v):\n"
        "    p = torch.softmax(q @ k.transpose(-2, -1), dim=-1)\n"
        "    return p @ v, p.sum()\n"
        "def make():\n"
        "    return attention, tuple(torch.randn(2, 4, 32, 16) for _ in range(3))\n"
    )
    report = json.loads(_run_report(capsys, f"{target}:make", "--json"))
    fallbacks = [r for r in report["regions"] if r["status"] == "fallback"]
    assert fallbacks and all(r["reason"] and r["before"] is None for r in fallbacks)
    assert report["summary"]["rewritten"] == 0


def test_model_that_needs_data_runs_on_its_own_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # .item() cannot run on meta tensors: the report says so and runs the model for real.
    target = tmp_path / "reads_a_value.py"
    target.write_text(
        "import torch\n"
        "def scaled(x):\n"
        "    return torch.softmax(x * float(x.abs().max().item()), dim=-1)\n"
        "def make():\n"
        "    return scaled, (torch.randn(4, 8),)\n"
    )
    assert main(["report", f"{target}:make", "--json"]) == 0
    captured = capsys.readouterr()
    assert "does not run on the meta device" in captured.err
    assert json.loads(captured.out)["totals"]["before"]["flops"] > 0


def test_regions_carry_the_numbers_the_passes_decided_by() -> None:
    # The report's rewritten regions are explain()'s rewrites, number for number: the
    # report prices what the passes priced, on the same profile.
    import ioaware
    from ioaware.examples import hybrid
    from ioaware.report import build_report

    model, args = hybrid.make()
    expl = ioaware.api.explain_on("h100", model, *args)
    report = build_report(model, args, device="h100", target="hybrid")
    assert [r.kind for r in report.rewritten] == [r.kind for r in expl.rewrites]
    assert "attention" in {r.kind for r in expl.rewrites}
    for mine, theirs in zip(report.rewritten, expl.rewrites):
        assert mine.before.hbm_bytes == theirs.hbm_bytes_before
        assert mine.after.hbm_bytes == theirs.hbm_bytes_after
        assert mine.after.flops == theirs.flops
        assert mine.detail == theirs.detail


def test_rewrites_show_and_are_priced_at_the_profiles_tile(
        capsys: pytest.CaptureFixture[str]) -> None:
    # gpt: 4 heads, d = 16, fp32, causal, B = 2, N = 64. On the H100 the best forward
    # tile (tiles.attention_tile) is what the region's kernel is priced at and shows.
    from ioaware.codegen.attention.price import flash_attention_cost
    from ioaware.codegen.attention.tiles import attention_tile
    from ioaware.codegen.scan.tiles import scan_tile
    from ioaware.hardware import PROFILES

    region = _gpt_region(capsys)
    tile = attention_tile(PROFILES["h100"], 16, 16, 4)
    assert region["detail"]["tiles"] == tile
    after = flash_attention_cost(2, 4, 4, 64, 64, 16, 16, 4, True, tile["block_m"],
                                 tile["block_n"], num_stages=tile["num_stages"])
    assert region["after"]["hbm_bytes"] == after.evaluate()["hbm_bytes"]
    # the terminal table prints it in the detail column
    assert "tiles=" in _run_report(capsys, "gpt", "--device", "h100")
    report = json.loads(_run_report(capsys, "mamba", "--device", "h100", "--json"))
    scans = [r for r in report["regions"] if r["kind"] == "scan" and r["status"] == "rewritten"]
    # mamba's small config: d_state 8, fp32; 16 channels x 8 states = 4 per thread
    assert scans and all(r["detail"]["op"] == "selective_scan" for r in scans)
    assert all(r["detail"]["tiles"] == scan_tile(PROFILES["h100"], 8, 4)
               == {"block_d": 16, "chunk": 16, "num_warps": 1, "num_stages": 2} for r in scans)


def test_rewritten_regions_carry_their_dram_bytes() -> None:
    # what `report --measure` holds against Nsight Compute: the kernel's IO-model bytes
    # less the re-reads L2 serves (the hybrid example's are all small enough to hit)
    import ioaware
    from ioaware import cost
    from ioaware.examples import hybrid
    from ioaware.hardware import PROFILES
    from ioaware.report import build_report

    model, args = hybrid.make()
    expl = ioaware.api.explain_on("h100", model, *args)
    report = build_report(model, args, device="h100", target="hybrid")
    for mine, theirs in zip(report.rewritten, expl.rewrites):
        values = theirs.cost_after.evaluate()
        assert cost.l2_hits(theirs.cost_after, PROFILES["h100"]) == (
            values["l2_reread_bytes"] > 0)
        assert mine.after.dram_bytes == values["hbm_bytes"] - values["l2_reread_bytes"]


def test_measure_says_when_kernels_fit_in_l2() -> None:
    # `report --measure` explains counters that read below the model: the hybrid example's
    # kernels each move far less than the H100's 50 MB L2; a profile with a tiny L2 gets
    # no such line.
    import dataclasses

    from ioaware import hardware
    from ioaware.examples import hybrid
    from ioaware.measure import _l2_resident_notes
    from ioaware.report import build_report

    model, args = hybrid.make()
    report = build_report(model, args, device="h100", target="hybrid")
    notes = _l2_resident_notes(report)
    kinds = {r.kind for r in report.rewritten}
    assert len(notes) == len(kinds) and all("L2" in n for n in notes)
    tiny = dataclasses.replace(hardware.PROFILES["h100"], name="tiny-l2", l2_bytes=1,
                               measured_l2_bytes=None)
    hardware.PROFILES["tiny-l2"] = tiny
    try:
        assert hardware.get_profile("tiny-l2").l2 == 1  # found, so [] below is the rule's
        assert _l2_resident_notes(dataclasses.replace(report, device="tiny-l2")) == []
    finally:
        del hardware.PROFILES["tiny-l2"]
