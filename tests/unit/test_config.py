"""Every switch is read from the environment by `ioaware.config`, once, into a field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioaware.config import Config

# Each variable, a value a user would set, and the field it becomes.
SWITCHES = [
    ("IOAWARE_INTERPRET", "1", "interpret", True),
    ("IOAWARE_CACHE_DIR", "/somewhere/cache", "cache_dir", Path("/somewhere/cache")),
    ("IOAWARE_DEVICE", "a100", "default_device", "a100"),
    ("IOAWARE_PROFILE_DIR", "/somewhere/profiles", "profile_dir", Path("/somewhere/profiles")),
    ("IOAWARE_FAST_LAUNCH", "0", "fast_launch", False),
    ("IOAWARE_IMPLEMENTATIONS", "generated, cudnn", "implementations", ("generated", "cudnn")),
]


@pytest.mark.parametrize(("variable", "value", "field", "expected"), SWITCHES,
                         ids=[s[0] for s in SWITCHES])
def test_each_variable_sets_its_field(monkeypatch: pytest.MonkeyPatch, variable: str,
                                      value: str, field: str, expected: object) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(Config(), field) == expected


def test_defaults_without_the_variables(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    for variable, *_ in SWITCHES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = Config()
    assert config.interpret is False and config.fast_launch is True
    assert config.default_device == "h100"
    assert config.implementations == ("generated", "cudnn", "flash", "efficient")
    assert config.profile_dir == tmp_path / "ioaware" / "profiles"
