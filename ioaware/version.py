"""ioaware's version, in a module of its own so that the kernel cache can key on it
without importing the package's public face (api -> backend -> passes -> codegen)."""

__version__ = "0.1.0"
