import os
import sys

import pytest
import torch
from hypothesis import settings

# Every run draws the same examples (per test, from its name): CI reproduces a failure
# exactly, and a red run is never a coin toss. HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

sys.path.insert(0, os.path.dirname(__file__))  # tests/spellings.py and friends


@pytest.fixture
def interpret():
    """Run generated kernels under Triton's interpreter for this test."""
    from ioaware.config import config

    old = config.interpret
    config.interpret = True
    yield
    config.interpret = old


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (GPU tier)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
