"""Functions the executor tests run as Parsl apps (importable by worker processes)."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b


def boom(message: str) -> None:
    raise ArithmeticError(message)
