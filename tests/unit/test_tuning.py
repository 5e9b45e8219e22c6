"""codegen/tuning.py on the CPU: what needs no device (timing itself runs on the GPU)."""

from __future__ import annotations

from ioaware.codegen import tuning


def test_no_candidates_gives_the_default():
    chosen = {}
    assert tuning.tuned_config(chosen, "k", [], (1, 2), ("class",), trial=None) == (1, 2)
    assert chosen == {}  # nothing recorded: tuning never ran


def test_a_chosen_class_is_a_lookup():
    def trial(config):
        raise AssertionError("timed again")

    chosen = {("class",): (64, 4)}
    assert tuning.tuned_config(chosen, "k", [(32, 2), (64, 4)], (32, 2), ("class",),
                               trial) == (64, 4)


def test_progress_line_only_past_a_second(capsys):
    quick = tuning._Progress("attention_fwd.forward", ("cuda", 4096), 3)
    quick.update(1, 0.2, (128, 64), 0.5)
    quick.done()
    assert capsys.readouterr().err == ""
    slow = tuning._Progress("attention_fwd.forward", ("cuda", 4096), 3)
    slow.update(2, 1.5, (128, 64), 0.5)
    slow.update(3, 2.5, (64, 64), 0.4)
    slow.done()
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line at the end when stderr is not a terminal
    assert "autotuning attention_fwd.forward" in err and "3/3 configs, 2.5 s" in err


def test_not_capturing_without_cuda():
    assert tuning.capturing() is False
