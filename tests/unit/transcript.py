"""A harness that drives the dispatcher core like a transcript: events in, commands out.

Every step runs ``validate_state()``, so a test that only looks at commands still checks the
core's invariants after each event.
"""

from __future__ import annotations

from typing import Any

from dispatcher import protocol as p
from dispatcher.server.core import CoreConfig, DispatcherCore
from dispatcher.server.events import (
    AgentMessageReceived,
    ClientMessageReceived,
    ClusterNode,
    Command,
    FrameRejected,
    KeysChanged,
    Log,
    NodeDeleted,
    NodeObserved,
    NodesListed,
    SendToAgent,
    SendToClient,
    Ticked,
)


class _Injected(Exception):
    """The failure a transcript injects at the end of a step."""


def fingerprint(core: DispatcherCore) -> Any:
    """Everything the core holds, comparable (the order of hungry nodes aside: see journal.py)."""

    def record(r: Any) -> Any:
        queue = r.queue.name if r.queue is not None else None
        return (r.key, r.node_name, r.rank, r.flags, queue, r.seq, r.holder, r.earlier, r.steal_id, r.stolen, r.payload,
                r.fetching, r.refill, r.size, r.fetches)  # fmt: skip

    def queued(q: Any) -> Any:
        return (len(q), sorted((r.rank, r.seq, r.key) for r in q.records()))

    def node(n: Any) -> Any:
        slots = [getattr(n, name) for name in n.__slots__ if name not in ("queue", "in_flight", "journal")]
        return (n.name, repr(slots), sorted(n.in_flight), queued(n.queue))

    return (
        sorted(node(n) for n in core.nodes.values()),
        sorted(record(r) for r in core.tasks.values()),
        queued(core.pool),
        sorted((peer, n.name) for peer, n in core._agents.items()),
        sorted(core._hungry),
        sorted(core._waiting),
        sorted(core._unanswered),
        sorted(core._client_protocols.items()),
        sorted(core._clients.items()),
        sorted(core._client_ids.items()),
        sorted(core._steals.items()),
        sorted(core._node_keys.items()),
        sorted(core._client_keys.items()),
        None if core._agent_keys is None else sorted(core._agent_keys.items()),
        sorted(core._bound_names),
        None if core._client_key_set is None else sorted(core._client_key_set),
        core._counters(),
        core._now,
        None if core._api is None else sorted(core._api.items()),
        sorted(core._deleted),
        sorted(core._client_versions.items()),
        core._swept,
    )


CLIENT = b"client-peer"
CLIENT_ID = "c1"


class Transcript:
    def __init__(self, **config: Any) -> None:
        config.setdefault("dispatcher_id", "d1")
        self.core = DispatcherCore(CoreConfig(**config))
        self.now = 0.0

    def _step(self, event: Any) -> list[Command]:
        self.now = event.now
        self._fails_and_leaves_nothing(event)
        commands = self.core.handle(event)
        self.core.validate_state()
        return commands

    def _fails_and_leaves_nothing(self, event: Any) -> None:
        """Every step of every transcript is first run to its end and then made to fail: the
        state must be exactly what it was (the core's steps are atomic), then the step runs."""
        before = fingerprint(self.core)

        def fail() -> None:
            raise _Injected

        self.core._check_step = fail  # type: ignore[method-assign]
        try:
            self.core.handle(event)
        except _Injected:
            pass
        else:  # pragma: no cover
            raise AssertionError("the injected failure did not happen")
        finally:
            del self.core._check_step
        after = fingerprint(self.core)
        assert after == before, "a failed step left changes behind"
        self.core.validate_state()

    def agent(self, peer: bytes, message: Any, at: float | None = None, key: str = "") -> list[Command]:
        return self._step(AgentMessageReceived(peer, message, self.now if at is None else at, "t", key))

    def client(self, message: Any, at: float | None = None, peer: bytes = CLIENT, key: str = "") -> list[Command]:
        return self._step(ClientMessageReceived(peer, message, self.now if at is None else at, "t", key))

    def keys(self, agents: dict[str, str], clients: set[str]) -> list[Command]:
        """The allow-lists (re)loaded: agent key -> bound node name ("" shared), client keys."""
        return self._step(KeysChanged(agents, frozenset(clients), self.now, "keys"))

    def listed(self, *nodes: ClusterNode | str) -> list[Command]:
        """The Node watch listed these Nodes (and no others)."""
        facts = tuple(n if isinstance(n, ClusterNode) else ClusterNode(n) for n in nodes)
        return self._step(NodesListed(facts, self.now, "list"))

    def observed(self, name: str, **facts: Any) -> list[Command]:
        return self._step(NodeObserved(ClusterNode(name, **facts), self.now, "watch"))

    def deleted(self, name: str) -> list[Command]:
        return self._step(NodeDeleted(name, self.now, "watch"))

    def tick(self, at: float) -> list[Command]:
        return self._step(Ticked(at, "tick"))

    def garbage(self, at: float | None = None) -> list[Command]:
        return self._step(FrameRejected("agent", "junk", self.now if at is None else at, "t"))

    # -------------------------------------------------------------- common openings

    def register(
        self,
        name: str,
        slots: int = 1,
        prefetch: int = 0,
        credit: int | None = None,
        agent_id: str | None = None,
        speed: float = 1.0,
    ) -> list[Command]:
        peer = name.encode()
        out = self.agent(peer, p.Register(name, agent_id or f"agent-{name}", slots, prefetch, speed))
        credit = slots + prefetch if credit is None else credit
        if credit:
            out += self.agent(peer, p.Credit(credit))
        return out

    def hello(self, peer: bytes = CLIENT, client_id: str = CLIENT_ID) -> list[Command]:
        return self.client(p.Hello(client_id), peer=peer)

    def submit(
        self, *specs: tuple[int, str | None, float], payload: bytes = b"fn", at: float | None = None
    ) -> list[Command]:
        return self.client(p.Submit(tuple(p.TaskSpec(t, n, r, payload) for t, n, r in specs)), at=at)


def sent_tasks(commands: list[Command], peer: bytes) -> list[int]:
    """Task ids sent to ``peer`` in these commands, in order."""
    return [
        t.task_id
        for c in commands
        if isinstance(c, SendToAgent) and c.peer == peer and isinstance(c.message, p.Tasks)
        for t in c.message.tasks
    ]


def to_agents(commands: list[Command]) -> list[tuple[bytes, p.Message]]:
    return [(c.peer, c.message) for c in commands if isinstance(c, SendToAgent)]


def resolved(commands: list[Command], peer: bytes = CLIENT) -> list[p.Resolution]:
    return [
        r
        for c in commands
        if isinstance(c, SendToClient) and c.peer == peer and isinstance(c.message, p.Resolved)
        for r in c.message.results
    ]


def to_client(commands: list[Command], peer: bytes = CLIENT) -> list[p.Message]:
    return [c.message for c in commands if isinstance(c, SendToClient) and c.peer == peer]


def logs(commands: list[Command]) -> list[str]:
    return [c.event for c in commands if isinstance(c, Log)]


def result(task_id: int, outcome: p.Outcome = p.Outcome.OK, payload: bytes = b"r") -> p.Results:
    return p.Results((p.TaskResult(CLIENT_ID, task_id, outcome, payload),))
