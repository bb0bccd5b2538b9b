"""saga-dispatch: an actor-style ZeroMQ dispatcher for SAGA-placed Parsl workflows.

Public surface: :class:`Client` (standalone submission), :class:`LocalCluster` (a dispatcher and
agents as local subprocesses), ``dispatcher.protocol`` (the wire contract), ``dispatcher.errors``.
Everything else in this package (core, node, tasks, events, service) is the dispatcher's inside.
"""

from dispatcher.client import Client
from dispatcher.errors import (
    DispatchError,
    DispatcherUnavailable,
    NodeLost,
    TaskCancelled,
    TaskFailed,
    TaskRejected,
    WorkerLost,
)
from dispatcher.local import LocalCluster

__all__ = [
    "Client",
    "DispatchError",
    "DispatcherUnavailable",
    "LocalCluster",
    "NodeLost",
    "TaskCancelled",
    "TaskFailed",
    "TaskRejected",
    "WorkerLost",
]
