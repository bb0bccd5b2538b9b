"""The dispatcher service: a pure core inside a thin ZeroMQ shell.

- ``config``: :class:`CoreConfig` and :class:`DispatcherConfig`, every default written once.
- ``events``: what goes into the core (events, past tense) and what comes out (commands).
- ``tasks``, ``node``: a task record and the rank-ordered queue; one node's actor.
- ``stealing``: the soft-affinity policy, a pure function.
- ``core``: :class:`DispatcherCore`, ``handle(event) -> commands``; ``invariants`` checks its rules.
- ``service``: :class:`DispatcherService`, the shell: sockets, clock, decode -> core -> send.
- ``main``: ``saga-dispatch dispatcher``.

Depends on ``dispatcher.protocol`` and ``dispatcher.runtime`` only: never on the client, Parsl
or SAGA (the dispatcher never unpickles a payload). The names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.runtime.lazy import lazy_exports

if TYPE_CHECKING:
    from dispatcher.server.config import CoreConfig, DispatcherConfig
    from dispatcher.server.core import DispatcherCore
    from dispatcher.server.service import DispatcherService

_EXPORTS = {
    "CoreConfig": "dispatcher.server.config",
    "DispatcherConfig": "dispatcher.server.config",
    "DispatcherCore": "dispatcher.server.core",
    "DispatcherService": "dispatcher.server.service",
}

__all__ = ["CoreConfig", "DispatcherConfig", "DispatcherCore", "DispatcherService"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
