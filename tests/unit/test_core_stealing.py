"""Soft-affinity stealing in the core: direct moves, two-phase steals, stale replies, strict tasks."""

from __future__ import annotations

import pytest

from dispatcher import protocol as p

from .transcript import CLIENT_ID, Transcript, resolved, result, sent_tasks, to_agents

pytestmark = pytest.mark.unit

SOFT = p.SOFT_AFFINITY


@pytest.fixture
def t() -> Transcript:
    t = Transcript(heartbeat_interval_s=10.0, liveness=3, steal_penalty_s=0.0, default_runtime_s=1.0)
    t.hello()
    return t


def submit(t: Transcript, *specs: tuple[int, str, float, int]) -> None:
    t.client(p.Submit(tuple(p.TaskSpec(i, n, r, b"f", flags) for i, n, r, flags in specs)))


def steal_requests(commands: list) -> list[tuple[bytes, p.StealRequest]]:
    return [(peer, m) for peer, m in to_agents(commands) if isinstance(m, p.StealRequest)]


def test_an_idle_node_takes_queued_soft_tasks_from_the_back_of_a_busy_line(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=0)
    submit(t, *[(i, "node-a", float(i), SOFT) for i in range(4)])  # 0 runs on a; 1, 2, 3 wait
    out = t.register("node-b", slots=1) + t.tick(0.1)
    assert sent_tasks(out, b"node-b") == [3]
    assert t.core.tasks[(CLIENT_ID, 3)].stolen and t.core.tasks_stolen == 1


def test_strict_tasks_never_leave_a_live_node(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=0)
    submit(t, *[(i, "node-a", float(i), 0) for i in range(4)])
    out = t.register("node-b", slots=1) + t.tick(0.1) + t.tick(0.2)
    assert sent_tasks(out, b"node-b") == []
    assert steal_requests(out) == []


def test_a_prefetched_task_moves_only_after_its_agent_confirms(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=3)
    submit(t, *[(i, "node-a", float(i), SOFT) for i in range(4)])  # all four on a's agent
    out = t.register("node-b", slots=1) + t.tick(0.1)
    [(peer, request)] = steal_requests(out)
    assert peer == b"node-a" and request.tasks == (p.TaskRef(CLIENT_ID, 3),)
    assert sent_tasks(out, b"node-b") == []  # nothing moves before the confirmation
    assert steal_requests(t.tick(0.2)) == []  # and it is not asked for twice
    out = t.agent(b"node-a", p.StealReply(request.request_id, request.tasks))
    assert sent_tasks(out, b"node-b") == [3]
    assert (CLIENT_ID, 3) not in t.core.nodes["node-a"].in_flight


def test_a_task_the_agent_already_started_stays_where_it_is(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=3)
    submit(t, *[(i, "node-a", float(i), SOFT) for i in range(4)])
    [(_, request)] = steal_requests(t.register("node-b", slots=1) + t.tick(0.1))
    out = t.agent(b"node-a", p.StealReply(request.request_id, ()))  # started meanwhile: not confirmed
    assert sent_tasks(out, b"node-b") == []
    assert (CLIENT_ID, 3) in t.core.nodes["node-a"].in_flight
    assert t.core.tasks[(CLIENT_ID, 3)].steal_id == 0  # may be asked for again later


def test_stale_confirmations_are_ignored(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=3)
    submit(t, *[(i, "node-a", float(i), SOFT) for i in range(4)])
    [(_, request)] = steal_requests(t.register("node-b", slots=1) + t.tick(0.1))
    assert len(resolved(t.agent(b"node-a", result(3)))) == 1  # it finished after all
    out = t.agent(b"node-a", p.StealReply(request.request_id, request.tasks))
    out += t.agent(b"node-a", p.StealReply(999, (p.TaskRef(CLIENT_ID, 2),)))  # unknown id, task still there
    assert sent_tasks(out, b"node-b") == [2]  # an agent's confirmation frees the task whatever the id
    out = t.agent(b"node-a", p.StealReply(999, (p.TaskRef(CLIENT_ID, 2),)))  # the same again: stale now
    assert sent_tasks(out, b"node-b") == [] and t.core.tasks_stolen == 1


def test_a_victim_dying_mid_steal_requeues_and_its_late_reply_is_ignored(t: Transcript) -> None:
    t = Transcript(heartbeat_interval_s=0.5, liveness=3, steal_penalty_s=0.0, default_runtime_s=1.0)
    t.hello()
    t.register("node-a", slots=1, prefetch=3)
    submit(t, *[(i, "node-a", float(i), SOFT) for i in range(4)])
    [(_, request)] = steal_requests(t.register("node-b", slots=4, credit=1) + t.tick(0.1))
    t.agent(b"node-b", p.Heartbeat(), at=1.7)
    out = t.tick(1.7)  # node-a is dead: all four go to the pool; node-b's one free slot takes the first
    assert sent_tasks(out, b"node-b") == [0]
    out = t.agent(b"node-a", p.StealReply(request.request_id, request.tasks))
    assert to_agents(out) == [(b"node-a", p.Reregister())]
    assert sent_tasks(t.agent(b"node-b", p.Credit(3)), b"node-b") == [1, 2, 3]
