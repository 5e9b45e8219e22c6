"""ioaware: an IO-aware graph compiler for PyTorch."""

__version__ = "0.1.0"
