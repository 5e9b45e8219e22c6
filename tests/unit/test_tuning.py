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


# ---- chosen configs on disk -------------------------------------------------------------

def _timed(ms_by_config, calls):
    """A trial whose device time is given per config (the timer below reads it)."""
    def trial(config):
        calls.append(config)
        return ms_by_config[config]
    return trial


def _fresh_process(monkeypatch, tmp_path):
    """A new process's view: an empty in-memory store, the cache in tmp_path, and a
    timer that returns what the trial returns (no device here)."""
    from ioaware.config import config

    monkeypatch.setattr(config, "cache_dir", tmp_path)
    monkeypatch.setattr(tuning, "_stored", {})
    monkeypatch.setattr(tuning, "bench_ms", lambda fn: fn())


def test_a_chosen_config_persists_for_the_next_process(monkeypatch, tmp_path):
    _fresh_process(monkeypatch, tmp_path)
    configs = [(32, 2), (64, 4), (128, 8)]
    calls = []
    trial = _timed({(32, 2): 3.0, (64, 4): 1.0, (128, 8): 2.0}, calls)
    key = ("forward", "cuda:0", 4096, 4096)
    store = "ioaware_kernels_attention_fwd_abc123"
    assert tuning.tuned_config({}, "k", configs, (32, 2), key, trial, store=store) == (64, 4)
    assert calls == configs  # each candidate timed once
    assert tuning.tuning_path(store).exists()

    _fresh_process(monkeypatch, tmp_path)  # another process: no tuning, the stored config
    chosen, calls[:] = {}, []
    assert tuning.tuned_config(chosen, "k", configs, (32, 2), key, trial, store=store) == (64, 4)
    assert calls == [] and chosen == {key: (64, 4)}
    # another size class of the same module is tuned, and both stay stored
    other = ("forward", "cuda:0", 8192, 8192)
    assert tuning.tuned_config({}, "k", configs, (32, 2), other, trial, store=store) == (64, 4)
    assert len(calls) == 3
    text = tuning.tuning_path(store).read_text()
    assert "4096" in text and "8192" in text


def test_a_damaged_or_stale_entry_is_tuned_again(monkeypatch, tmp_path):
    _fresh_process(monkeypatch, tmp_path)
    store = "ioaware_kernels_scan_fwd_def456"
    path = tuning.tuning_path(store)
    path.parent.mkdir(parents=True)
    configs = [(32, 2), (64, 4)]
    key = ("forward", 1024)
    calls = []
    trial = _timed({(32, 2): 1.0, (64, 4): 2.0}, calls)
    for damaged in ('{"module": "ioaware_kernels_scan_fwd_def456", "configs": {"(', "\x00\x01",
                    '{"module": "another", "configs": {}}'):
        path.write_text(damaged)
        _fresh_process(monkeypatch, tmp_path)
        calls.clear()
        assert tuning.tuned_config({}, "k", configs, (64, 4), key, trial, store=store) == (32, 2)
        assert calls == configs  # re-tuned
        _fresh_process(monkeypatch, tmp_path)  # and the file was rebuilt
        assert tuning.stored_config(store, key, configs) == (32, 2)
    # a stored config that is no longer a candidate (templates changed) is not used
    assert tuning.stored_config(store, key, [(16, 1), (64, 4)]) is None


def test_nothing_ran_is_not_stored(monkeypatch, tmp_path):
    _fresh_process(monkeypatch, tmp_path)

    def fails(config):
        raise RuntimeError("out of resources")

    store = "ioaware_kernels_attention_bwd_0"
    assert tuning.tuned_config({}, "k", [(1,), (2,)], (9,), ("c",), fails, store=store) == (9,)
    assert not tuning.tuning_path(store).exists()
