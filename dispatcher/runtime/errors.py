"""The base of every saga-dispatch error, so the CLI can print one clear line for any of them."""

from __future__ import annotations


class DispatchError(Exception):
    """Base class of saga-dispatch errors."""
