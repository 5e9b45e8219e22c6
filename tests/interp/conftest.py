import pytest

from ioaware.config import config


@pytest.fixture(scope="module")
def interpreted_kernels(tmp_path_factory: pytest.TempPathFactory):
    """Kernels under the interpreter for a whole module, compiled into a private cache
    directory (kernel test modules use it through `pytestmark`)."""
    old = config.interpret, config.cache_dir
    config.interpret = True
    config.cache_dir = tmp_path_factory.mktemp("ioaware-cache")
    yield
    config.interpret, config.cache_dir = old
