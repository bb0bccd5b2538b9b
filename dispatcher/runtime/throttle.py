"""How often a repeated complaint is logged: the first, then every n-th, so garbage cannot flood the log."""

from __future__ import annotations


def log_due(total: int, added: int = 1, every: int = 1000) -> bool:
    """Whether to log now that a counter went from ``total - added`` to ``total``: it is the
    first of its kind, or it passed a multiple of ``every``."""
    return total == added or total // every != (total - added) // every
