"""Runnable example models; each file has make() -> (model, args[, kwargs])."""
