"""Functions the executor tests run as Parsl apps (importable by worker processes)."""

from __future__ import annotations

import os
import time
from typing import Any


def node_task(
    value: int, *parents: tuple[str, int, int], parsl_resource_specification: dict[str, Any] | None = None
) -> tuple[str, int, int]:
    """Sleep cost/speed, then return (node, value + sum of parent values, start time)."""
    started = time.monotonic_ns()
    cost = (parsl_resource_specification or {}).get("cost", 0.0)
    time.sleep(cost / float(os.environ["NODE_SPEED"]))
    return os.environ["NODE_NAME"], value + sum(p[1] for p in parents), started


def add(a: int, b: int) -> int:
    return a + b


def boom(message: str) -> None:
    raise ArithmeticError(message)
