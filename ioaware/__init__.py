"""ioaware: an IO-aware graph compiler for PyTorch.

    model = ioaware.compile(model)                # or @ioaware.compile
    torch.compile(model, backend="ioaware")       # registered by entry point
    print(ioaware.explain(model, *args))          # what was rewritten, and why not the rest
"""

from ioaware import logs as _logs
from ioaware.api import compile, explain
from ioaware.backend import counters
from ioaware.config import config
from ioaware.explain import Explanation, Fallback, Rewrite
from ioaware.verify import VerificationError
from ioaware.version import __version__

_logs.register()  # TORCH_LOGS=ioaware

__all__ = ["Explanation", "Fallback", "Rewrite", "VerificationError", "__version__", "compile",
           "config", "counters", "explain"]
