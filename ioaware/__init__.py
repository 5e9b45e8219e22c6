"""ioaware: an IO-aware graph compiler for PyTorch.

    model = ioaware.compile(model)                # or @ioaware.compile
    torch.compile(model, backend="ioaware")       # registered by entry point
    print(ioaware.explain(model, *args))          # what was rewritten, and why not the rest

Importing ioaware registers its ops (`torch.ops.ioaware.*`: the kernel families'
schemas, fakes, autograd, prices), as importing any library that defines torch ops does:
a graph that names them (printed, exported, or cached by Inductor) and a user calling
`torch.ops.ioaware.selective_scan(...)` directly both find them after `import ioaware`.
"""

from ioaware import logs as _logs
from ioaware.api import compile, explain
from ioaware.backend import counters
from ioaware.codegen import load_families as _load_families
from ioaware.config import config
from ioaware.explain import Explanation, Fallback, Rewrite
from ioaware.verify import VerificationError
from ioaware.version import __version__

_logs.register()  # TORCH_LOGS=ioaware
_load_families()  # torch.ops.ioaware.* exist from here on

__all__ = ["Explanation", "Fallback", "Rewrite", "VerificationError", "__version__", "compile",
           "config", "counters", "explain"]
