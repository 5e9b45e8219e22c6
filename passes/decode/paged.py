"""Paged caches: K and V gathered from pages through a block table feed attention.

Filled in below (the gather spellings); `find` returns None when K/V are dense.
"""

from __future__ import annotations


def find(plan, ctx):
    return None
