"""The `ioaware` command: help for every subcommand, bad TARGETs, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ioaware.cli import EXIT_USAGE, main
from ioaware.config import config

SUBCOMMANDS = [[], ["report"], ["calibrate"], ["demo"], ["bench"], ["bench", "attention"]]


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
    "not a .py file": (lambda tmp: str(tmp / "model.txt") + ":make", "expected path/to/file.py"),
    "model raises": (
        lambda tmp: _write(tmp, "import torch\ndef f(x):\n    raise ValueError('bad input')\n"
                                "def make():\n    return (f, (torch.ones(2),))\n"),
        "running the model raised ValueError: bad input"),
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
    # The stable keys of docs/report.md, schema_version 1.
    assert set(report) == {"schema_version", "target", "device", "dtype", "sizes", "graphs",
                           "flop_convention", "regions", "summary", "totals", "notes"}
    assert report["schema_version"] == 1 and report["dtype"] == "float32"
    assert set(report["device"]) == {"name", "peak_flops", "hbm_bandwidth"}
    figures = {"read_bytes", "write_bytes", "hbm_bytes", "flops", "transcendentals",
               "sram_bytes", "intensity_flop_per_byte", "bound", "modelled_time_s",
               "expressions"}
    for region in report["regions"]:
        assert set(region) == {"graph", "kind", "status", "reason", "detail", "backend",
                               "before", "after"}
        assert set(region["before"]) == figures and set(region["after"]) == figures
    assert set(report["totals"]) == {"before", "after", "unpriced_ops_before",
                                     "unpriced_ops_after", "unpriced_before", "unpriced_after"}
    assert set(report["totals"]["before"]) == figures
    assert report["summary"] == {"regions": 2, "rewritten": 2, "fallback": 0}


OVERRIDE_NOT_TAKEN = "def make():\n    import torch\n    return (torch.relu, (torch.ones(2),))\n"


@pytest.mark.parametrize(("flag", "value"), [("--batch", "4"), ("--seq-len", "128"),
                                             ("--dtype", "bf16")])
def test_override_make_does_not_take_is_one_line(flag: str, value: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = _write(tmp_path, OVERRIDE_NOT_TAKEN)
    assert main(["report", target, flag, value]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"{flag} needs make() to take a" in lines[0]


def test_report_unknown_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "gpt", "--device", "tpu9000"]) == EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ioaware report: --device") and "h100" in lines[0]


def test_report_rejects_non_positive_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "gpt", "--seq-len", "0"])
    assert exit_info.value.code == EXIT_USAGE
    assert "expected a positive integer" in capsys.readouterr().err


def test_report_on_a_saved_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # What `ioaware calibrate` leaves behind: a profile saved under a new name. Double
    # the H100's bandwidth and the memory-bound attention regions get twice as fast.
    import dataclasses

    from ioaware import hardware

    monkeypatch.setattr(config, "profile_dir", tmp_path)
    h100 = hardware.get_profile("h100")
    fast = dataclasses.replace(h100, measured_hbm_bandwidth=2 * h100.bandwidth)
    hardware.save_profile(fast, "h100-fast")
    times = {}
    for device in ("h100", "h100-fast"):
        assert main(["report", "sdpa_gqa", "--device", device, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["device"]["name"] == device
        times[device] = report["totals"]["before"]["modelled_time_s"]
    assert times["h100-fast"] < times["h100"]


def test_calibrate_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU message is not reachable")
    assert main(["calibrate", "--name", "mine"]) == EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0]


def test_measure_without_cuda_still_prints_the_model(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU message is not reachable")
    assert main(["report", "sdpa_gqa", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "whole graph" in out  # the modelled report
    assert "measure: no CUDA GPU here" in out


def test_measure_parses_ncu_csv() -> None:
    from ioaware.measure import parse_ncu_csv

    text = (
        "==PROF== Connected to process 1\n"
        '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
        '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
        '"Metric Value"\n'
        '"0","1","python","h","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0",'
        '"Command line profiler metrics","dram__bytes_read.sum","Mbyte","1,234.5"\n'
        '"0","1","python","h","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0",'
        '"Command line profiler metrics","dram__bytes_write.sum","byte","4096"\n'
    )
    kernels = parse_ncu_csv(text)
    assert kernels == {"0 _attn_fwd": {"dram__bytes_read.sum": 1_234_500_000.0,
                                       "dram__bytes_write.sum": 4096.0}}


def test_demo_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "forward  vs eager" in out and "backward vs eager" in out and "FAIL" not in out
    assert "2 attention regions rewritten in the compiled model" in out  # one per block
    assert "found 2 regions: rewrote 2, left 0" in out


# --- on a CUDA GPU (the lead's GPU tier runs these with `-m gpu`) ---------------------------


@pytest.mark.gpu
def test_calibrate_on_gpu_saves_a_profile_report_can_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from ioaware import hardware

    monkeypatch.setattr(config, "profile_dir", tmp_path)
    assert main(["calibrate", "--name", "this-gpu"]) == 0
    assert "use it with: ioaware report TARGET --device this-gpu" in capsys.readouterr().out
    profile = hardware.get_profile("this-gpu")
    # Measured ceilings are real and below anything a datasheet quotes for a GPU today.
    assert 1e12 < profile.peak_flops_for("bfloat16") < 5e15
    assert 1e11 < profile.bandwidth < 2e13
    assert profile.num_sms > 0 and profile.sram_per_sm > 0
    assert main(["report", "gpt", "--device", "this-gpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"]["name"] == "this-gpu"


@pytest.mark.gpu
def test_report_measure_on_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "gpt", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "whole graph" in out and "measured on" in out
    assert "attention kernels, time" in out and "all kernels, time" in out
    # Either the counters were read, or one line says why not.
    assert "all kernels, DRAM bytes" in out or "DRAM bytes: " in out


def test_measure_cases_are_fully_priced() -> None:
    # The acceptance cases the lead times on a GPU, at tiny sizes on the CPU: each traces
    # to a canonical graph the cost model prices completely (an unpriced op would raise).
    from ioaware import hardware
    from ioaware.measure import cases, modelled_cost, modelled_dram_bytes

    found = cases(device="cpu", small=True)
    assert {"attention (ioaware, causal)", "softmax (eager)"} <= {c.name for c in found}
    for case in found:
        c = modelled_cost(case, case.inputs())
        values = c.evaluate()
        assert values["hbm_bytes"] > 0 and values["flops"] > 0, case.name
        assert 0 < modelled_dram_bytes(c, hardware.get_profile("h100")) <= values["hbm_bytes"]
    add = next(c for c in found if c.name.startswith("add"))
    # read 2 x 4096 bf16, write 4096 bf16
    assert modelled_cost(add, add.inputs()).evaluate()["hbm_bytes"] == 3 * 4096 * 2
