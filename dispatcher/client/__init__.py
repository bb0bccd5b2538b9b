"""The standalone client: submit Python functions to a dispatcher and get futures back.

:class:`Client` (one I/O thread owns its DEALER socket) and the errors set on its futures.
Parsl is imported only where a call is packed or a result unpacked, so ``saga-dispatch status``
needs none of it.
"""

from dispatcher.client.client import Client, TaskFuture
from dispatcher.client.errors import (
    AccessRefused,
    DispatcherUnavailable,
    NodeLost,
    TaskCancelled,
    TaskFailed,
    TaskRejected,
    WorkerLost,
)
from dispatcher.runtime.errors import DispatchError

__all__ = [
    "AccessRefused",
    "Client",
    "DispatchError",
    "DispatcherUnavailable",
    "NodeLost",
    "TaskCancelled",
    "TaskFailed",
    "TaskFuture",
    "TaskRejected",
    "WorkerLost",
]
