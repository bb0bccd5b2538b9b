"""NodeActor: one Kubernetes node as the dispatcher sees it. Pure state, no I/O, no clock.

An actor owns its rank-ordered queue of pinned tasks, the set of tasks in flight on its agent,
its flow-control credit and its liveness. The core changes it one event at a time.

Lifecycle::

    PENDING --register--> ALIVE --drain--> DRAINING --bye--> GONE
       |                    |                  |
       +--grace expired-----+--silent/replaced-+-----------> DEAD
    DEAD / GONE --register (new incarnation)--> ALIVE

* PENDING: tasks are pinned to it but no agent has registered yet; they wait in its queue.
* ALIVE: its agent is registered and heard from within ``interval x liveness``.
* DRAINING: its agent is stopping: no new tasks, running ones finish.
* DEAD / GONE: no agent (silent or cleanly left). Its work moved to the shared pool; tasks pinned
  to it later go to the pool too, until an agent registers under its name again.

With the Node watch, the cluster's word moves a node too (``reason`` says why): a cordoned Node
holds its ALIVE node in DRAINING until it is uncordoned; an agent whose Node the API does not
list waits in DRAINING ("not-in-api", reported as pending) until it is listed; a deleted Node's
node is GONE at once. A *held* node (cordoned, not-in-api) keeps counting its agent's credit, so
it takes work again the moment it is released.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from dispatcher.protocol import TaskKey
from dispatcher.server.journal import Journal
from dispatcher.server.tasks import NO_JOURNAL, TaskQueue, TaskRecord


class NodeState(StrEnum):
    PENDING = "pending"
    ALIVE = "alive"
    DRAINING = "draining"
    DEAD = "dead"
    GONE = "gone"


HELD: Final = frozenset({"cordoned", "not-in-api"})
"""Reasons a DRAINING node may become ALIVE again (the cluster holds it, not its agent)."""
ACCEPTS_PINS = frozenset({NodeState.PENDING, NodeState.ALIVE})
"""States in which a task pinned to the node waits in the node's own queue."""
CONNECTED = frozenset({NodeState.ALIVE, NodeState.DRAINING})
"""States in which an agent is attached and its heartbeats are watched."""


class NodeActor:
    """The dispatcher's view of one node and its agent."""

    __slots__ = (
        "_jstep",
        "agent_id",
        "busy_workers",
        "credit",
        "done",
        "in_flight",
        "incarnation",
        "journal",
        "last_seen",
        "last_sent",
        "name",
        "own_speed",
        "peer",
        "pending_since",
        "prefetch",
        "queue",
        "reason",
        "runtime_s",
        "slots",
        "speed",
        "state",
        "versions",
        "worker_respawns",
    )

    def __init__(self, name: str, now: float, journal: Journal = NO_JOURNAL) -> None:
        self.name = name
        self.journal = journal
        """The core's undo log: every change below is noted there first."""
        self._jstep = 0
        self.state = NodeState.PENDING
        self.reason = ""
        """Why it is in its state where the cluster or its agent said (``HELD``, "draining",
        "deleted"); "" otherwise."""
        self.queue = TaskQueue(name, journal)
        self.in_flight: dict[TaskKey, TaskRecord] = {}
        self.peer: bytes | None = None
        self.worker_respawns = 0
        """As the node's agent last reported it (AGENT_STATUS), for the incarnation that sent it."""
        self.busy_workers = 0
        self.agent_id = ""
        self.incarnation = 0
        self.slots = 0
        self.prefetch = 0
        self.speed = 1.0
        self.own_speed = 0.0
        """The speed its agent advertised; 0: none (the Node's label, else 1.0, is its speed)."""
        self.versions = ""
        """Its agent's runtime versions (REGISTER's ``versions``)."""
        self.credit = 0
        self.done = 0
        self.runtime_s: float | None = None
        """EMA of its tasks' runtimes (stealing estimates waits with it)."""
        self.last_seen = now
        self.last_sent = now
        self.pending_since = now

    def __repr__(self) -> str:
        return (
            f"<node {self.name} {self.state} inc={self.incarnation} queued={len(self.queue)} "
            f"in_flight={len(self.in_flight)} credit={self.credit}>"
        )

    @property
    def capacity(self) -> int:
        """Most tasks this node may hold at once: running plus prefetched."""
        return self.slots + self.prefetch

    def attach(
        self, peer: bytes, agent_id: str, *, slots: int, prefetch: int, speed: float, now: float, versions: str = ""
    ) -> None:
        """A new agent incarnation registered under this name (``speed`` 0: it gives none)."""
        assert not self.in_flight, self
        self.journal.save(self)
        self.state = NodeState.ALIVE
        self.reason = ""
        self.versions = versions
        self.own_speed = speed
        self.peer = peer
        self.agent_id = agent_id
        self.incarnation += 1
        self.slots = slots
        self.prefetch = prefetch
        self.speed = speed or 1.0
        self.credit = 0
        self.last_seen = now
        self.last_sent = now
        self.worker_respawns = self.busy_workers = 0  # a new agent counts from zero

    def grant(self, n: int) -> None:
        """The agent asked for ``n`` more tasks; never beyond its capacity, never unless ALIVE
        or held (it gets them once released)."""
        if self.state is not NodeState.ALIVE and not (self.state is NodeState.DRAINING and self.reason in HELD):
            return
        self.journal.save(self)
        self.credit = max(0, min(self.credit + n, self.capacity - len(self.in_flight)))

    def start(self, record: TaskRecord) -> None:
        """``record`` is being sent to this node's agent."""
        journal = self.journal
        journal.save(record)
        journal.save(self)
        journal.keep(self.in_flight, record.key)
        record.holder = self.name
        self.in_flight[record.key] = record
        self.credit -= 1

    def detach(self, state: NodeState) -> list[TaskRecord]:
        """The agent is gone (``state`` is DEAD or GONE): return its queued and in-flight work."""
        journal = self.journal
        journal.save(self)
        self.state = state
        self.reason = ""  # a hold ends with the agent (a deletion says so itself)
        self.credit = 0
        self.busy_workers = 0  # nothing runs there for us any more
        work = list(self.in_flight.values())
        for record in work:
            journal.keep(self.in_flight, record.key)
            journal.save(record)
            record.release()
        self.in_flight.clear()
        work.extend(self.queue.take_all())
        return work
