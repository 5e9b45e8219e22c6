"""Graph rewrites, one folder per family; `driver.py` runs them, `pipeline.py` is the
ordered recipe."""
