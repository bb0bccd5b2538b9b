"""Entry point of the planning process (``python -m parsl_adapter.planning_process FD``).

Started by :class:`parsl_adapter.planner.PlannerProcess` with ``PYTHONHASHSEED=0``; serves plan
requests on the socket FD until told to stop or its parent dies.
"""

from __future__ import annotations

import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from dispatcher.runtime.lifeline import die_with_parent
from parsl_adapter.placement import PlanningError, plan
from parsl_adapter.planner import READY


def serve(fd: int) -> None:
    conn = Connection(fd)
    conn.send(READY)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        request_id, graph, network, scheduler = request
        started = time.perf_counter()
        try:
            result = plan(graph, network, scheduler)
            # Plain tuples: unpickling frozen slotted dataclasses costs a fields() call per task.
            placed = [(name, at.node, at.start_s, at.end_s) for name, at in result.placed.items()]
            reply: tuple[Any, ...] = (request_id, (placed, result.makespan_s, result.scheduler), None)
        except Exception as exc:
            reply = (request_id, None, str(exc) if isinstance(exc, PlanningError) else f"{type(exc).__name__}: {exc}")
        conn.send((*reply, time.perf_counter() - started))


if __name__ == "__main__":
    die_with_parent()
    import saga.schedulers  # noqa: F401  (import once, before reporting ready)

    serve(int(sys.argv[1]))
