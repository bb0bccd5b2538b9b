"""Task functions the benchmarks run (importable by every contender's workers)."""

from __future__ import annotations

import time


def noop(x: int = 0) -> int:
    return x


def sleep10ms() -> None:
    time.sleep(0.01)
