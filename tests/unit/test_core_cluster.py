"""Rule 10 and 11 as transcripts: what the Kubernetes API says of a Node moves its node (cordon,
uncordon, NotReady, deletion, a Node not listed), and runtime versions that differ refuse pinned
tasks. One test per row of the table in docs/kubernetes.md."""

from __future__ import annotations

import pytest

from dispatcher import protocol as p
from dispatcher.server.events import ClusterNode
from dispatcher.server.node import NodeState

from .transcript import CLIENT, CLIENT_ID, Transcript, logs, resolved, result, sent_tasks, to_agents, to_client

pytestmark = pytest.mark.unit


@pytest.fixture
def t() -> Transcript:
    t = Transcript(heartbeat_interval_s=0.5, liveness=3, pending_grace_s=10.0)
    t.hello()
    t.listed("node-a", "node-b")
    return t


def info(t: Transcript, name: str) -> p.NodeInfo:
    [row] = [n for n in t.core.node_infos() if n.node_name == name]
    return row


def changed(out: list[object]) -> list[tuple[str, str]]:
    return [(m.node_name, m.state) for m in to_client(out) if isinstance(m, p.NodeChanged)]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cordon


def test_a_cordon_drains_the_node_and_its_queued_and_prefetched_tasks_go_to_the_pool(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=1)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0))
    assert sorted(t.core.nodes["node-a"].in_flight) == [(CLIENT_ID, 1), (CLIENT_ID, 2)]

    out = t.observed("node-a", cordoned=True)
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("draining", "cordoned")
    assert changed(out) == [("node-a", "draining")]
    [(peer, ask)] = to_agents(out)  # the prefetched and running ones asked back, in two phases
    assert peer == b"node-a" and isinstance(ask, p.StealRequest)
    assert {r.task_id for r in ask.tasks} == {1, 2}
    assert [r.key for r in t.core.pool.records()] == [(CLIENT_ID, 3)]  # queued: to the pool at once

    # The agent had started 1, not 2: only 2 leaves it; 1 finishes there.
    out = t.agent(b"node-a", p.StealReply(ask.request_id, (p.TaskRef(CLIENT_ID, 2),)))
    assert sorted(r.key for r in t.core.pool.records()) == [(CLIENT_ID, 2), (CLIENT_ID, 3)]
    out = t.agent(b"node-b", p.Credit(1))
    assert sent_tasks(out, b"node-b") == [2]  # lowest rank first, from the pool
    out = t.agent(b"node-a", result(1))
    assert [r.task_id for r in resolved(out)] == [1]
    # New work pinned to a cordoned node goes to the pool; the node gets nothing.
    out = t.submit((4, "node-a", 3.0))
    assert sent_tasks(out, b"node-a") == []
    assert t.core.tasks[CLIENT_ID, 4].queue is t.core.pool


def test_uncordon_brings_back_the_node_with_the_credit_its_agent_gave_meanwhile(t: Transcript) -> None:
    t.register("node-a", slots=2, credit=0)
    t.observed("node-a", cordoned=True)
    t.agent(b"node-a", p.Credit(2))  # its agent keeps asking: counted, not used
    out = t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    assert sent_tasks(out, b"node-a") == []
    out = t.observed("node-a", cordoned=False)
    assert changed(out) == [("node-a", "alive")]
    assert sent_tasks(out, b"node-a") == [1, 2]  # its pinned tasks came back from the pool
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("alive", "")


def test_uncordon_leaves_an_agent_that_is_itself_draining_draining(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.observed("node-a", cordoned=True)
    t.agent(b"node-a", p.Drain(()))
    t.observed("node-a", cordoned=False)
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("draining", "draining")


def test_a_node_cordoned_before_its_agent_registers_is_held_at_registration(t: Transcript) -> None:
    t.observed("node-a", cordoned=True)
    out = t.register("node-a", slots=1)
    assert isinstance(to_agents(out)[0][1], p.Registered)
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("draining", "cordoned")
    out = t.submit((1, "node-a", 0.0))
    assert sent_tasks(out, b"node-a") == []


# --------------------------------------------------------------------------- NotReady


def test_a_not_ready_node_is_suspect_and_dead_at_its_first_missed_heartbeat(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.submit((1, "node-a", 0.0))
    t.observed("node-a", ready=False)
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("alive", "suspect")
    assert t.core.nodes["node-a"].state is NodeState.ALIVE  # the API's word alone kills nothing
    t.tick(0.9)
    assert t.core.nodes["node-a"].state is NodeState.ALIVE
    out = t.tick(1.01)  # silent for more than two intervals, where 3 (liveness) is the rule
    assert t.core.nodes["node-a"].state is NodeState.DEAD
    assert "node_dead" in logs(out)
    assert t.core.tasks[CLIENT_ID, 1].queue is t.core.pool


def test_a_ready_node_that_misses_one_heartbeat_lives_on(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.tick(1.2)
    assert t.core.nodes["node-a"].state is NodeState.ALIVE
    t.tick(1.6)
    assert t.core.nodes["node-a"].state is NodeState.DEAD


# --------------------------------------------------------------------------- deletion


def test_a_deleted_node_is_gone_at_once_and_its_agent_refused_until_it_is_listed_again(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=1)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0))
    out = t.deleted("node-a")
    assert (info(t, "node-a").state, info(t, "node-a").reason) == ("gone", "deleted")
    assert changed(out) == [("node-a", "gone")]
    assert to_agents(out) == []  # its agent is cut off: nothing more goes to it
    assert sorted(r.key for r in t.core.pool.records()) == [(CLIENT_ID, 1), (CLIENT_ID, 2), (CLIENT_ID, 3)]
    # Its agent is refused; new tasks pinned to it go straight to the pool.
    [(_, refusal)] = to_agents(t.agent(b"node-a-2", p.Register("node-a", "agent-node-a", 1, 0, 1.0)))
    assert isinstance(refusal, p.Refused) and "was deleted" in refusal.reason
    t.submit((4, "node-a", 3.0))
    assert t.core.tasks[CLIENT_ID, 4].queue is t.core.pool
    # In-flight work runs again elsewhere; the first result wins.
    out = t.agent(b"node-b", p.Credit(1))
    assert sent_tasks(out, b"node-b") == [1]
    assert [r.task_id for r in resolved(t.agent(b"node-b", result(1)))] == [1]
    # Listed again, the node may register again.
    t.observed("node-a")
    out = t.agent(b"node-a-2", p.Register("node-a", "agent-node-a", 1, 0, 1.0))
    assert isinstance(to_agents(out)[0][1], p.Registered)


def test_a_node_deleted_in_the_gap_of_a_410_is_gone_after_the_re_list(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.register("node-b", slots=1)
    t.submit((1, "node-a", 0.0))
    out = t.listed("node-b")  # the re-list after 410 Gone: node-a was deleted meanwhile
    assert changed(out) == [("node-a", "gone")]
    assert info(t, "node-a").reason == "deleted"
    assert sent_tasks(out, b"node-b") == [1]


def test_a_deleted_node_is_forgotten_once_no_task_names_it(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0))
    t.deleted("node-a")
    t.tick(1.2)
    assert "node-a" in t.core.nodes  # task 1 still names it
    t.agent(b"node-b", p.Credit(1), at=1.3)
    t.agent(b"node-b", result(1), at=1.3)
    out = t.tick(2.4)
    assert "node-a" not in t.core.nodes
    assert "node_forgotten" in logs(out)
    t.submit((2, "node-a", 0.0))  # still deleted: to the pool, no new entry
    assert "node-a" not in t.core.nodes


# --------------------------------------------------------------------------- not in the API


def test_an_agent_for_a_node_the_api_does_not_list_waits_until_it_appears(t: Transcript) -> None:
    out = t.register("node-x", slots=1)
    assert isinstance(to_agents(out)[0][1], p.Registered)
    assert (info(t, "node-x").state, info(t, "node-x").reason) == ("pending", "not-in-api")
    out = t.submit((1, "node-x", 0.0))
    assert sent_tasks(out, b"node-x") == []
    out = t.observed("node-x")
    assert sent_tasks(out, b"node-x") == [1]
    assert (info(t, "node-x").state, info(t, "node-x").reason) == ("alive", "")


def test_before_the_first_list_nothing_is_held() -> None:
    t = Transcript()
    t.hello()
    t.register("node-x", slots=1)
    assert (info(t, "node-x").state, info(t, "node-x").reason) == ("alive", "")
    t.observed("node-x", cordoned=True)  # a watch event before any list changes nothing
    assert info(t, "node-x").state == "alive"
    t.listed(ClusterNode("node-x", cordoned=True))
    assert (info(t, "node-x").state, info(t, "node-x").reason) == ("draining", "cordoned")


# --------------------------------------------------------------------------- node facts and versions


def test_the_speed_label_is_the_speed_of_a_node_whose_agent_gives_none(t: Transcript) -> None:
    t.observed("node-a", speed=2.5)
    t.agent(b"node-a", p.Register("node-a", "agent-a", 1, 0, 0.0))
    assert info(t, "node-a").speed == 2.5
    out = t.observed("node-a", speed=4.0)
    assert info(t, "node-a").speed == 4.0
    assert [m for m in to_client(out) if isinstance(m, p.NodeChanged)] == [p.NodeChanged("node-a", "alive", 1, 4.0)]
    t.observed("node-a", speed=4.0, zone="eu-1a")
    assert info(t, "node-a").zone == "eu-1a"
    t.register("node-b", speed=1.5)  # an agent's own speed wins
    t.observed("node-b", speed=3.0)
    assert info(t, "node-b").speed == 1.5


def test_a_task_pinned_to_a_node_with_other_runtime_versions_is_rejected_saying_which() -> None:
    t = Transcript()
    t.client(p.Hello(CLIENT_ID, versions="python=3.12.1 parsl=2026.10.26"), peer=CLIENT)
    t.agent(b"node-a", p.Register("node-a", "a", 1, 0, 1.0, versions="python=3.13.5 parsl=2026.10.26"))
    t.agent(b"node-b", p.Register("node-b", "b", 1, 0, 1.0, versions="python=3.12.7 parsl=2026.10.26"))
    t.agent(b"node-b", p.Credit(1))
    out = t.submit((1, "node-a", 0.0), (2, "node-b", 0.0))
    [rejection] = resolved(out)
    assert rejection.task_id == 1 and rejection.outcome is p.Outcome.REJECTED
    assert b"python 3.12.1 here, 3.13.5 on the node" in rejection.payload
    assert sent_tasks(out, b"node-b") == [2]  # same major.minor: fine


# --------------------------------------------------------------------------- found in review


@pytest.mark.parametrize("how", ["silent", "bye"])
def test_a_held_node_that_dies_is_no_longer_held(t: Transcript, how: str) -> None:
    t.register("node-a", slots=1)
    t.register("node-x", slots=1)  # not listed: held, "not-in-api"
    t.observed("node-a", cordoned=True)
    if how == "silent":
        t.agent(b"node-b-peer", p.Heartbeat(), at=0.0)
        t.tick(2.0)
    else:
        t.agent(b"node-a", p.Bye())
        t.agent(b"node-x", p.Bye())
    for name in ("node-a", "node-x"):
        assert info(t, name).state in ("dead", "gone")
        assert info(t, name).reason == ""


def test_a_hold_s_late_steal_reply_sends_a_strict_task_back_to_its_released_node(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=1)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    [(_, ask)] = to_agents(t.observed("node-a", cordoned=True))
    assert isinstance(ask, p.StealRequest)
    t.observed("node-a", cordoned=False)  # released before the agent answered
    out = t.agent(b"node-a", p.StealReply(ask.request_id, (p.TaskRef(CLIENT_ID, 2),)))
    record = t.core.tasks[CLIENT_ID, 2]
    assert record.queue is t.core.nodes["node-a"].queue and not record.stolen  # home, not the pool
    assert t.core.tasks_stolen == 0
    out = t.agent(b"node-b", p.Credit(1))
    assert sent_tasks(out, b"node-b") == []  # node-b never gets node-a's strict task
    out = t.agent(b"node-a", p.Credit(1))
    assert sent_tasks(out, b"node-a") == [2]


def test_keys_reloaded_after_a_deleted_node_was_forgotten_change_nothing_else() -> None:
    t = Transcript(heartbeat_interval_s=0.5, liveness=3)
    t.keys({"ka": "", "kb": ""}, {"kc"})
    t.client(p.Hello(CLIENT_ID), key="kc")
    t.listed("node-a", "node-b")
    t.agent(b"node-a", p.Register("node-a", "a", 1, 0, 1.0), key="ka")
    t.agent(b"node-b", p.Register("node-b", "b", 1, 0, 1.0), key="kb")
    t.deleted("node-a")
    t.agent(b"node-b", p.Heartbeat(), at=1.2)
    t.tick(1.2)
    assert "node-a" not in t.core.nodes and "node-a" not in t.core._node_keys
    t.keys({"ka": "", "kb": "", "kd": ""}, {"kc"})  # a rotation: must not trip on the forgotten node
    assert info(t, "node-b").state == "alive"


def test_tasks_queued_for_a_node_before_its_agent_said_its_versions_are_refused_at_registration() -> None:
    t = Transcript()
    t.client(p.Hello(CLIENT_ID, versions="python=3.12.1"), peer=CLIENT)
    t.submit((1, "node-a", 0.0))  # node-a is PENDING: nothing to compare with yet
    out = t.agent(b"node-a", p.Register("node-a", "a", 1, 0, 1.0, versions="python=3.13.5"))
    [rejection] = resolved(out)
    assert rejection.task_id == 1 and rejection.outcome is p.Outcome.REJECTED
    assert b"python 3.12.1 here, 3.13.5 on the node" in rejection.payload
    t.agent(b"node-a", p.Bye())  # gone: a later task pinned there goes to the pool, not refused
    t.submit((2, "node-a", 0.0))
    assert t.core.tasks[CLIENT_ID, 2].queue is t.core.pool


def test_a_relisted_nodes_pool_tasks_join_its_queue_when_a_submit_awaits_it() -> None:
    """Rule 2: tasks pinned to a deleted Node wait in the pool; when the Node is listed again and a
    later SUBMIT awaits it, they move to its queue with the new one, in their order."""
    t = Transcript()
    t.hello()
    t.listed("node-a")
    t.deleted("node-a")
    t.submit((1, "node-a", 0.0))  # pinned to a deleted Node: the pool
    assert t.core.tasks[(CLIENT_ID, 1)].queue is t.core.pool
    t.listed("node-a")
    t.submit((2, "node-a", 1.0))
    queue = t.core.nodes["node-a"].queue
    assert t.core.tasks[(CLIENT_ID, 1)].queue is queue and t.core.tasks[(CLIENT_ID, 2)].queue is queue
    assert not t.core.pool
    assert sent_tasks(t.register("node-a", slots=2), b"node-a") == [1, 2]
