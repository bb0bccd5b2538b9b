"""The planning process: SAGA runs here, never on a thread of the Parsl program.

SAGA is CPU-bound and holds the GIL for seconds on large DAGs, and HEFT and CPOP break ties by
iterating frozensets, so their plans are reproducible only under a fixed hash seed. One child
process, started once with ``PYTHONHASHSEED=0``, serves plan requests over a socket pair; a
request that overruns ``timeout_s`` kills it (a scheduler such as DPS can run for hours) and the
next request starts a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from parsl_adapter.placement import Graph, Network, Placed, Plan, PlanningError

HASH_SEED = "0"
READY = "ready"
_START_TIMEOUT_S = 120.0


class PlannerProcess:
    """A client for the planning process. Thread-safe: one request at a time."""

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._unconfirmed = False
        """Started, and its READY not read yet."""

    def start(self, *, wait: bool = True) -> None:
        """Start the planning process. Importing SAGA takes it a second or two: with
        ``wait=False`` do other work meanwhile, then :meth:`ready` (or the first plan) waits."""
        with self._lock:
            self._launch()
            if wait:
                self._await_ready()

    def ready(self) -> None:
        """Wait until the planning process has imported SAGA; PlanningError if it cannot."""
        with self._lock:
            if self._proc is None:
                self._launch()
            self._await_ready()

    def _start(self) -> None:
        self._launch()
        self._await_ready()

    def _launch(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONHASHSEED": HASH_SEED, PARENT_ENV: str(os.getpid())}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "parsl_adapter.planning_process", str(child.fileno())],
            pass_fds=[child.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        self._conn = Connection(parent.detach())
        self._unconfirmed = True

    def _await_ready(self) -> None:
        """Importing SAGA takes a second or two: wait for it here, not inside a request's timeout."""
        if not self._unconfirmed:
            return
        assert self._conn is not None
        try:
            started = self._conn.poll(_START_TIMEOUT_S) and self._conn.recv() == READY
        except (EOFError, OSError) as exc:
            self._kill()
            raise PlanningError(f"the planning process died while it started: {exc!r}") from exc
        if not started:
            self._kill()
            raise PlanningError(f"the planning process did not start within {_START_TIMEOUT_S:g} s")
        self._unconfirmed = False

    def plan(self, graph: Graph, network: Network, scheduler: str | Any) -> tuple[Plan, float]:
        """(plan, seconds SAGA took). Raises PlanningError for bad input, a failed or overrunning scheduler."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._await_ready()
            assert self._conn is not None
            self._requests += 1
            request_id = self._requests
            try:
                self._conn.send((request_id, graph, network, scheduler))
                if not self._conn.poll(self.timeout_s):
                    self._kill()
                    raise PlanningError(f"planning took longer than {self.timeout_s:g} s; the planner was restarted")
                reply_id, reply, error, elapsed_s = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                self._kill()
                raise PlanningError(f"the planning process died: {exc!r}") from exc
            assert reply_id == request_id, (reply_id, request_id)
            if error is not None:
                raise PlanningError(error)
            placed, makespan_s, name = reply
            return Plan({n: Placed(node, start, end) for n, node, start, end in placed}, makespan_s, name), elapsed_s

    def terminate(self) -> None:
        """Kill the planning process now, without waiting for a plan under way (which then fails
        with PlanningError); the next ``plan()`` would start a fresh one."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()

    def _kill(self) -> None:
        self._unconfirmed = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                    if self._proc is not None:
                        self._proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()
