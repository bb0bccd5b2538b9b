"""Task functions the benchmarks run (importable by every contender's workers)."""

from __future__ import annotations

import os
import time


def noop(x: int = 0) -> int:
    return x


def sleep10ms() -> None:
    time.sleep(0.01)


def wf_task(name: str, *_parents: object, cost: float = 0.0) -> tuple[str, str, int, int]:
    """A workflow task of benchmark 5: (name, node, start ns, end ns) after sleeping cost / speed.

    The speed is NODE_SPEED (saga-dispatch's agents set it); under HTEX, whose blocks play the
    nodes, it is the block's entry in BENCH_SPEEDS."""
    started = time.monotonic_ns()
    speed = os.environ.get("NODE_SPEED")
    node = os.environ.get("NODE_NAME")
    if speed is None:
        block = int(os.environ.get("PARSL_WORKER_BLOCK_ID", "0"))
        speed = os.environ.get("BENCH_SPEEDS", "1").split(",")[block]
        node = f"block-{block}"
    time.sleep(cost / float(speed))
    return name, node or "?", started, time.monotonic_ns()


def stamped_sleep10ms(i: int = 0) -> tuple[int, int, int, int]:
    """(worker pid, start ns, end ns, i) of a 10 ms sleep, for the sleep timeline."""
    started = time.monotonic_ns()
    time.sleep(0.01)
    return os.getpid(), started, time.monotonic_ns(), i


def blob_size(i: int, blob: bytes) -> tuple[int, int]:
    """(i, the argument's size): the large-payload workload's no-op, checked for its value."""
    return i, len(blob)
