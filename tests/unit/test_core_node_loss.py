"""Node loss in the core, one transition per test: death, NODE_LOST, notices, re-pins, heals, restarts."""

from __future__ import annotations

import pytest

from dispatcher import protocol as p
from dispatcher.server.node import NodeState

from .transcript import CLIENT_ID, Transcript, logs, resolved, result, sent_tasks, to_agents, to_client

pytestmark = pytest.mark.unit


@pytest.fixture
def t() -> Transcript:
    t = Transcript(heartbeat_interval_s=0.5, liveness=3)
    t.hello()
    return t


def kill(t: Transcript, name: str, at: float, survivors: tuple[str, ...] = ()) -> list[p.Message]:
    """Let ``name`` fall silent until ``at`` while ``survivors`` keep talking; returns client messages."""
    for other in survivors:
        t.agent(other.encode(), p.Heartbeat(), at=at)
    return to_client(t.tick(at))


def test_death_requeues_queued_and_in_flight_but_fails_no_retry_tasks_node_lost(t: Transcript) -> None:
    t.register("node-a", slots=2)
    t.register("node-b", slots=4, credit=0)
    t.client(p.Submit((
        p.TaskSpec(1, "node-a", 0.0, b"f"),
        p.TaskSpec(2, "node-a", 1.0, b"f", p.NO_RETRY_ON_NODE_LOSS),
        p.TaskSpec(3, "node-a", 2.0, b"f", p.NO_RETRY_ON_NODE_LOSS),  # queued: never started, may move
    )))  # fmt: skip
    for other in ("node-b",):
        t.agent(other.encode(), p.Heartbeat(), at=2.0)
    [lost] = resolved(t.tick(2.0))
    assert (lost.task_id, lost.outcome) == (2, p.Outcome.NODE_LOST)
    assert set(t.core.tasks) == {(CLIENT_ID, 1), (CLIENT_ID, 3)}
    assert sent_tasks(t.agent(b"node-b", p.Credit(4)), b"node-b") == [1, 3]


def test_a_no_retry_task_running_on_a_dead_node_resolves_node_lost(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.client(p.Submit((p.TaskSpec(7, "node-a", 0.0, b"f", p.NO_RETRY_ON_NODE_LOSS),)))
    t.tick(1.0)
    out = t.tick(1.6)
    [res] = resolved(out)
    assert res.outcome is p.Outcome.NODE_LOST and res.task_id == 7 and res.node_name == "node-a"
    assert b"node node-a died while running it" in res.payload
    assert t.core.tasks_resolved == 1 and not t.core.tasks


def test_clients_hear_when_nodes_register_and_die(t: Transcript) -> None:
    out = t.register("node-a", slots=1, speed=2.0)
    assert p.NodeChanged("node-a", "alive", 1, 2.0) in to_client(out)
    out = t.tick(1.6)
    assert p.NodeChanged("node-a", "dead", 1, 2.0) in to_client(out)


def test_repin_moves_queued_tasks_and_leaves_running_ones(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))  # 1 runs on a, 2 queued on a
    out = t.client(p.Repin((p.Placement(1, "node-b", 0.0), p.Placement(2, "node-b", 5.0))))
    assert to_agents(out) == []
    assert list(t.core.nodes["node-a"].in_flight) == [(CLIENT_ID, 1)]
    assert sent_tasks(t.agent(b"node-b", p.Credit(1)), b"node-b") == [2]


def test_repin_to_a_node_not_yet_seen_waits_for_it(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0))
    t.client(p.Repin((p.Placement(1, "node-new", 0.0),)))
    assert t.core.nodes["node-new"].state is NodeState.PENDING
    assert sent_tasks(t.register("node-new", slots=1), b"node-new") == [1]


def test_partition_heal_first_result_wins_and_the_other_copy_is_cancelled(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.register("node-b", slots=1)
    t.submit((1, "node-a", 0.0))
    kill(t, "node-a", 2.0, survivors=("node-b",))  # a is cut off; task 1 re-runs on b
    assert list(t.core.nodes["node-b"].in_flight) == [(CLIENT_ID, 1)]
    out = t.agent(b"node-a", result(1, payload=b"from-a"))  # the partition heals; a finished first
    assert resolved(out) == [p.Resolution(1, p.Outcome.OK, b"from-a", "node-a")]
    assert (b"node-b", p.CancelTasks((p.TaskRef(CLIENT_ID, 1),))) in to_agents(out)
    assert resolved(t.agent(b"node-b", result(1, payload=b"from-b"))) == []
    assert t.core.duplicates_dropped == 1


def test_after_a_dispatcher_restart_resubmission_and_late_results_resolve_once() -> None:
    """A fresh core (the restarted dispatcher): the agent comes back, the client re-sends,
    and a result from the old incarnation's run arrives in between."""
    t = Transcript(dispatcher_id="d2")
    t.hello()
    t.register("node-a", slots=1, credit=0)
    late = t.agent(b"node-a-old-socket", result(1, payload=b"old"))  # before the re-send: unknown, dropped
    assert resolved(late) == [] and t.core.duplicates_dropped == 1
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    t.submit((1, "node-a", 0.0))  # the client's re-send races its first send: ignored
    assert t.core.tasks_submitted == 2
    assert sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a") == [1]
    assert len(resolved(t.agent(b"node-a", result(1)))) == 1
    assert resolved(t.agent(b"node-a", result(1))) == []


def test_a_drained_node_is_announced_and_its_queue_moves(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0))
    out = t.agent(b"node-a", p.Drain(()))
    assert p.NodeChanged("node-a", "draining", 1, 1.0) in to_client(out)
    assert len(t.core.pool) == 1
    assert "node_draining" in logs(out)
