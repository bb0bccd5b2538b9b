"""Task functions the integration tests submit (importable by worker processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def where(x: int) -> tuple[str, int, int]:
    """Echo ``x`` with the node that ran it and when it started (CLOCK_MONOTONIC, system-wide)."""
    return os.environ["NODE_NAME"], x, time.monotonic_ns()


def slow_where(x: int, sleep_s: float) -> tuple[str, int, int]:
    started = time.monotonic_ns()
    time.sleep(sleep_s)
    return os.environ["NODE_NAME"], x, started


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def crash_worker(code: int) -> None:
    os._exit(code)


def crash_worker_after(sleep_s: float, code: int) -> None:
    time.sleep(sleep_s)
    os._exit(code)


def pid() -> int:
    return os.getpid()


def chatter(n: int) -> int:
    """Print ``n`` bytes to stdout (more than a pipe holds) and return ``n``."""
    import sys

    for _ in range(n // 1000):
        sys.stdout.write("x" * 999 + "\n")
    sys.stdout.flush()
    return n


def crash_leaving_grandchild(pid_file: str, code: int) -> None:
    """Fork a grandchild that keeps every descriptor of this worker open, then die with ``code``."""
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    Path(pid_file).write_text(str(child))
    os._exit(code)


def node_and_parent(x: int) -> tuple[str, int, int]:
    """Where it ran: the node name the agent gave its worker, and the worker's parent process
    (the local cluster's zygote, or a spawning agent itself)."""
    return os.environ["NODE_NAME"], x, os.getppid()


def probe(path: str) -> str:
    """What an attacker's task would do: leave a mark. A refused probe leaves none."""
    Path(path).write_text(os.environ.get("NODE_NAME", "?"))
    return path


def where_blob(x: int, blob: bytes) -> tuple[str, int, int, int]:
    """``where(x)`` and the size of a large argument (the payload budget's tests)."""
    return os.environ["NODE_NAME"], x, time.monotonic_ns(), len(blob)
