import os
import sys

import pytest
import torch

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
