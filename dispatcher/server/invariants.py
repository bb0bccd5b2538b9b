"""The dispatcher core's invariants (the rules at the top of ``core.py``), checked after every
step of every transcript test. O(tasks): never called on the hot path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher import protocol as p
from dispatcher.protocol import TaskKey
from dispatcher.server.node import ACCEPTS_PINS, CONNECTED, HELD, NodeState
from dispatcher.server.tasks import POOL

if TYPE_CHECKING:
    from dispatcher.server.core import DispatcherCore


def check(core: DispatcherCore) -> None:
    """Raise AssertionError naming the first broken rule."""
    seen: dict[TaskKey, str] = {}
    for node in core.nodes.values():
        assert node.credit >= 0, node
        assert node.credit + len(node.in_flight) <= max(node.capacity, len(node.in_flight)), node
        if node.state is not NodeState.ALIVE and not (node.state is NodeState.DRAINING and node.reason in HELD):
            assert node.credit == 0, node
        if node.reason in HELD:
            assert node.state is NodeState.DRAINING, node
        if node.name in core._deleted:  # rule 10: a deleted Node's node is gone and refused
            assert node.state in (NodeState.DEAD, NodeState.GONE), node
        assert (node.name in core._hungry) == (node.state is NodeState.ALIVE and node.credit > 0), node
        if node.state not in ACCEPTS_PINS:
            assert not node.queue, node
        if node.state not in CONNECTED:
            assert not node.in_flight, node
        for record in node.queue.records():
            assert record.key not in seen, (record, seen.get(record.key))
            assert record.node_name == node.name, record
            seen[record.key] = node.name
        for key, record in node.in_flight.items():
            assert key not in seen, (record, seen.get(key))
            assert record.holder == node.name, record
            assert record.queue is None, record
            seen[key] = f"on {node.name}"
    for record in core.pool.records():
        assert record.key not in seen, (record, seen.get(record.key))
        pinned = core.nodes.get(record.node_name) if record.node_name is not None else None
        assert pinned is None or pinned.state not in ACCEPTS_PINS or record.stolen, (record, pinned)
        seen[record.key] = POOL
    assert seen.keys() == core.tasks.keys(), set(seen) ^ set(core.tasks)
    assert len(core.pool) == len(core.pool.records())
    for peer, node in core._agents.items():
        assert node.peer == peer, (node, peer)
    for request_id, (victim, _thief, keys) in core._steals.items():
        assert core.nodes[victim].state in CONNECTED, (request_id, victim)
        for key in keys:
            asked = core.tasks.get(key)
            assert asked is None or asked.steal_id in (0, request_id), asked
    asking = {r.steal_id for r in core.tasks.values() if r.steal_id}
    assert asking <= core._steals.keys(), asking - core._steals.keys()
    assert core._soft == sum(1 for r in core.tasks.values() if r.flags & p.SOFT_AFFINITY)
    held = sum(len(r.payload) for r in core.tasks.values() if r.payload is not None)
    assert core.payload_bytes == held, (core.payload_bytes, held)  # rule 13's account
    fetching = sum(r.size for r in core.tasks.values() if r.payload is None and r.fetching is not None)
    assert core.fetch_bytes == fetching, (core.fetch_bytes, fetching)
    for record in core.tasks.values():
        assert record.payload is not None or record.holder is not None or core._fetchable(record.key[0]), record
        assert not record.flags & p.HELD, record
        assert record.payload is None or (len(record.payload) == record.size and record.fetching is None), record
        assert record.payload is not None or record.fetch is not None, record  # its size is known
    for name, node in core._waiting.items():  # rule 13: a node waits for a payload only with credit
        assert core.nodes[name] is node, node
        assert node.name in core._hungry, node
