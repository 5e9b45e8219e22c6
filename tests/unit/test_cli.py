"""The `ioaware` command: help for every subcommand, bad TARGETs, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ioaware.cli import EXIT_USAGE, main

SUBCOMMANDS = [[], ["report"], ["demo"], ["bench"], ["bench", "attention"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda words: " ".join(words) or "ioaware")
def test_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ioaware")


def test_console_entry_point_runs() -> None:
    # `python -m ioaware.cli` is what the `ioaware` console script calls: main() and exit.
    result = subprocess.run([sys.executable, "-m", "ioaware.cli", "--help"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "report" in result.stdout


def _write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "target.py"
    path.write_text(source)
    return str(path)


BAD_TARGETS = {
    "unknown name": (lambda tmp: "no_such_example", "bundled example"),
    "missing file": (lambda tmp: str(tmp / "missing.py") + ":make", "no such file"),
    "import fails": (lambda tmp: _write(tmp, "import not_a_module_anywhere\n") + ":make",
                     "ModuleNotFoundError"),
    "no function": (lambda tmp: _write(tmp, "x = 1\n") + ":make", "no function 'make'"),
    "make raises": (lambda tmp: _write(tmp, "def make():\n    raise ValueError('boom')\n"),
                    "make() raised ValueError: boom"),
    "wrong shape": (lambda tmp: _write(tmp, "def make():\n    return (1, 2, 3, 4)\n"),
                    "expected (model, args) or (model, args, kwargs)"),
    "args not a tuple": (
        lambda tmp: _write(tmp, "def make():\n    return (print, 3)\n"), "args is int"),
    "model not callable": (
        lambda tmp: _write(tmp, "def make():\n    return (3, ())\n"), "not callable"),
}


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_bad_target_exits_2_with_one_line(case: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    make_target, cause = BAD_TARGETS[case]
    target = make_target(tmp_path)
    assert main(["report", target]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ioaware report: TARGET") and cause in lines[0]


def test_bench_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU message is not reachable")
    assert main(["bench", "attention"]) == EXIT_USAGE
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bench_rejects_unknown_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "attention", "--vs", "sdpa,nonsense"])
    assert exit_info.value.code == EXIT_USAGE
    assert "nonsense not understood" in capsys.readouterr().err


def test_report_json_on_gpt(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "gpt", "--device", "h100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"rewrites", "fallbacks", "graphs", "device", "totals"}
    assert report["device"] == "h100" and report["graphs"] >= 1
    for rewrite in report["rewrites"]:
        assert set(rewrite) == {"kind", "detail", "hbm_bytes_before", "hbm_bytes_after",
                                "flops", "flops_before", "backend", "graph"}
    for fallback in report["fallbacks"]:
        assert set(fallback) == {"kind", "reason", "graph"}
    assert {"hbm_bytes_before", "hbm_bytes_after", "flops", "modelled_time_before_s",
            "modelled_time_after_s"} <= set(report["totals"])


def test_demo_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "forward  vs eager" in out and "backward vs eager" in out and "FAIL" not in out
    assert "2 attention regions rewritten in the compiled model" in out  # one per block
    assert "found 2 regions: rewrote 2, left 0" in out
