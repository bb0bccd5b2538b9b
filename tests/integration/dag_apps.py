"""Functions the executor tests run as Parsl apps (importable by worker processes)."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b


def boom(message: str) -> None:
    raise ArithmeticError(message)


def fail_once(marker: str) -> str:
    """Fail the first time (creating ``marker``), succeed on a retry: returns the node."""
    import os
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("first try fails")
    return os.environ["NODE_NAME"]


def node_after(seconds: float) -> str:
    """Sleep, then say which node ran it."""
    import os
    import time

    time.sleep(seconds)
    return os.environ["NODE_NAME"]
