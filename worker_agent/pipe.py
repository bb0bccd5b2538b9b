"""The pipe between the agent and one worker process: what travels on it, and how a worker starts.

Agent -> worker: ``(key, payload)``, a Parsl apply message to run. Worker -> agent: first
``(READY, pid)`` once its imports are done, then ``(key, outcome, bytes, runtime_s)`` per task,
and ``(MONITORING, client_id, task_id, bytes)`` for each Parsl monitoring message a task's
radio sent (:mod:`worker_agent.radio`), ahead of that task's result.

:func:`start_worker` is the process target: it imports the worker module (and so Parsl) in the
child only, so the agent itself never loads Parsl: it forwards payloads without unpickling them.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

READY = "ready"
"""First message of a worker on its pipe: imports done, ready for tasks."""
MONITORING = "monitoring"
"""Tags a monitoring message on the pipe (a result's first item is its key, a tuple)."""


def start_worker(conn: Connection, node_name: str, speed: float) -> None:
    """The worker process's entry point (spawn-started by the pool)."""
    from worker_agent.worker import worker_main

    worker_main(conn, node_name, speed)
