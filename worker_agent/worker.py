"""The worker process: run one Parsl apply message at a time, exactly as HTEX's workers do.

Tasks arrive over a pipe as ``(key, payload)``; the reply is ``(key, outcome, bytes)`` with the
result serialized by ``parsl.serialize`` or the exception wrapped in ``RemoteExceptionWrapper``,
so any Parsl app runs unchanged and its exceptions re-raise on the submit side.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from parsl.app.errors import RemoteExceptionWrapper
from parsl.executors.execute_task import execute_task
from parsl.serialize import serialize

from dispatcher.lifeline import die_with_parent_thread
from dispatcher.protocol import Outcome
from worker_agent.config import NODE_NAME_ENV, NODE_SPEED_ENV

READY = "ready"
"""First message of a worker on its pipe: imports done, ready for tasks."""


def run_task(payload: bytes) -> tuple[Outcome, bytes]:
    """Execute one packed apply message; never raises for the app's sake."""
    try:
        value: Any = execute_task(payload)
        return Outcome.OK, serialize(value, buffer_threshold=1_000_000)
    except Exception:
        return Outcome.APP_ERROR, serialize(RemoteExceptionWrapper(*sys.exc_info()))


def worker_main(conn: Connection, node_name: str, speed: float) -> None:
    """Entry point of a worker process (spawned by the pool)."""
    os.environ["SAGA_DISPATCH_PARENT_PID"] = str(os.getppid())
    die_with_parent_thread(signal.SIGKILL)
    # The agent decides when workers stop (it drains first); a group-wide SIGTERM or Ctrl-C must
    # not kill a running task. If the agent dies, PR_SET_PDEATHSIG kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ[NODE_NAME_ENV] = node_name
    os.environ[NODE_SPEED_ENV] = repr(speed)
    conn.send((READY, os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, payload = message
        started = time.perf_counter()
        outcome, data = run_task(payload)
        runtime_s = time.perf_counter() - started
        try:
            conn.send((key, outcome, data, runtime_s))
        except (BrokenPipeError, OSError):
            return
