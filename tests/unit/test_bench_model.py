"""`ioaware bench model`: runs on the CPU at tiny sizes (kernels under the interpreter),
and bad input exits 2 with one line naming the argument."""

from __future__ import annotations

import json

import pytest

from ioaware import cli

TINY = ["--batch", "1", "--seq-len", "16", "--layers", "1", "--hidden", "32", "--heads", "2",
        "--vocab", "64", "--steps", "1", "--warmup", "0", "--dtype", "fp32"]


def test_llama_gqa_runs_on_the_cpu(interpret, capsys):
    code = cli.main(["bench", "model", "llama", *TINY, "--kv-heads", "1",
                     "--variants", "eager,ioaware", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert [r["variant"] for r in rows] == ["eager", "ioaware"]
    eager, fast = rows
    assert eager["ms"] > 0 and fast["ms"] > 0 and fast["first_call_s"] > 0
    assert fast["regions"] == 1 and eager["regions"] is None
    assert fast["rel_err"] < 1e-5  # the same weights and tokens: eager's logits
    assert fast["peak_bytes"] is None  # CUDA only
    assert captured.err.count("[bench] llama") == 4  # a line as each variant starts and ends


@pytest.mark.parametrize("argv, message", [
    (["foo"], "model='foo' not understood; expected one of llama, mistral"),
    (["llama", "--hidden", "100"], "--hidden=100 is not a multiple of --heads=16"),
    (["llama", "--kv-heads", "3"], "--kv-heads=3 must divide --heads=16"),
    (["gpt2", "--kv-heads", "4"], "--kv-heads=4: gpt2 has no grouped-query attention"),
    (["llama", "--seq-len", "0"], "--seq-len=0: expected a positive integer"),
    (["llama", "--variants", "eager,fast"], "--variants: fast not understood"),
    (["llama", "--batch", "two"], "argument --batch: invalid int value: 'two'"),
    (["llama", "--train", "--infer"], "not allowed with argument --train"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    try:
        code = cli.main(["bench", "model", *argv])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("ioaware ") and "torch " in out and "triton " in out


def test_a_variant_past_its_timeout_is_a_row_saying_so():
    from ioaware.bench.model import Sizes, bench_model

    sizes = Sizes(batch=1, seq_len=16, layers=1, hidden=32, heads=2, kv_heads=1, vocab=64)
    rows = bench_model("llama", sizes, ["eager"], steps=1000, warmup=0, timeout=0.05,
                       dtype="fp32", device="cpu")
    assert rows[0].ms is None and "did not finish within --timeout=0.05 s" in rows[0].note


def test_a_spent_deadline_leaves_the_rest_as_rows_saying_so():
    import time

    from ioaware.bench.model import Sizes, bench_model

    sizes = Sizes(batch=1, seq_len=16, layers=1, hidden=32, heads=2, kv_heads=1, vocab=64)
    rows = bench_model("llama", sizes, ["eager", "sdpa"], steps=1, warmup=0, dtype="fp32",
                       device="cpu", deadline=time.monotonic() + 1)
    assert [r.variant for r in rows] == ["eager", "sdpa"]
    assert all(r.ms is None and "not run: the time given" in r.note for r in rows)
