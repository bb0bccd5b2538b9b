"""saga-dispatch: an actor-style ZeroMQ dispatcher for SAGA-placed Parsl workflows.

The rooms of this package, one role each (``docs/architecture.md`` has the import rule):

- ``dispatcher.protocol``: the wire contract. Depends on nothing of ours.
- ``dispatcher.runtime``: logging set-up, the parent lifeline, socket helpers, text tables.
- ``dispatcher.server``: the dispatcher service (a pure core inside a ZeroMQ shell).
- ``dispatcher.client``: the standalone :class:`Client` and the errors set on its futures.
- ``dispatcher.local``: :class:`LocalCluster`, a dispatcher and agents as local subprocesses.
- ``dispatcher.cli``: the ``saga-dispatch`` command, which starts each role by module name.

The names below are loaded on first use (PEP 562), so ``import dispatcher.protocol`` or
``import dispatcher.server`` costs no client, and no Parsl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.runtime.lazy import lazy_exports

if TYPE_CHECKING:
    from dispatcher.client import (
        AccessRefused,
        Client,
        DispatchError,
        DispatcherUnavailable,
        NodeLost,
        TaskCancelled,
        TaskFailed,
        TaskRejected,
        WorkerLost,
    )
    from dispatcher.local import LocalCluster

_EXPORTS = {
    "AccessRefused": "dispatcher.client",
    "Client": "dispatcher.client",
    "DispatchError": "dispatcher.client",
    "DispatcherUnavailable": "dispatcher.client",
    "NodeLost": "dispatcher.client",
    "TaskCancelled": "dispatcher.client",
    "TaskFailed": "dispatcher.client",
    "TaskRejected": "dispatcher.client",
    "WorkerLost": "dispatcher.client",
    "LocalCluster": "dispatcher.local",
}

__all__ = [
    "AccessRefused",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
