import pytest

from ioaware.config import config


@pytest.fixture(autouse=True)
def _generated_kernels_only(monkeypatch):
    """The GPU tier checks the generated kernels through the compiler, so regions run
    them rather than an SDPA backend measured faster; test_attention_choice_gpu.py sets
    `config.implementations` itself to check the choice."""
    monkeypatch.setattr(config, "implementations", ("generated",))
