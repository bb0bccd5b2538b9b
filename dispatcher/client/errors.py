"""Exceptions a client (the standalone Client or the Parsl executor) raises or sets on futures.

Every task ends in a result or one of these, so Parsl's retry logic always has something to act on.
"""

from __future__ import annotations

from dispatcher.protocol import Outcome
from dispatcher.runtime.errors import DispatchError


class DispatcherUnavailable(DispatchError):
    """The dispatcher did not answer in time, or the client was closed with tasks outstanding."""


class AccessRefused(DispatcherUnavailable):
    """The dispatcher refused this client: its key is not allowed, or its id belongs to another key."""

    PREFIX = "the dispatcher refused this client at "


class TaskFailed(DispatchError):
    """A task ended without a value and without an exception of its own."""

    def __init__(self, task_id: int, reason: str, node_name: str = "") -> None:
        where = f" on {node_name}" if node_name else ""
        super().__init__(f"task {task_id}{where}: {reason}")
        self.task_id = task_id
        self.reason = reason
        self.node_name = node_name


class WorkerLost(TaskFailed):
    """The worker process running the task died (crash, OOM kill, os._exit)."""


class NodeLost(TaskFailed):
    """The node running the task died and the task was not allowed to run again elsewhere."""


class TaskRejected(TaskFailed):
    """The dispatcher refused the task (e.g. an invalid node name)."""


class TaskCancelled(TaskFailed):
    """The task was cancelled before it started."""


FAILURES: dict[Outcome, type[TaskFailed]] = {
    Outcome.WORKER_LOST: WorkerLost,
    Outcome.NODE_LOST: NodeLost,
    Outcome.REJECTED: TaskRejected,
    Outcome.CANCELLED: TaskCancelled,
}
"""The exception for each outcome that carries a text reason instead of a Parsl payload."""


def failure(outcome: Outcome, task_id: int, payload: bytes, node_name: str) -> TaskFailed:
    """The exception for a non-value outcome (not OK, not APP_ERROR)."""
    return FAILURES[outcome](task_id, payload.decode("utf-8", "replace"), node_name)
