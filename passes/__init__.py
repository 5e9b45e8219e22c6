"""Graph rewrites, one file per family; `pipeline.py` is the ordered recipe."""
