"""The dispatcher core as transcripts: events with literal times in, commands out. No sockets."""

from __future__ import annotations

import pytest

from dispatcher import protocol as p
from dispatcher.server.events import ClientMessageReceived, FrameRejected
from dispatcher.server.node import NodeState

from .transcript import (
    CLIENT,
    CLIENT_ID,
    Transcript,
    fingerprint,
    logs,
    resolved,
    result,
    sent_tasks,
    to_agents,
    to_client,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def t() -> Transcript:
    t = Transcript(heartbeat_interval_s=0.5, liveness=3, pending_grace_s=10.0)
    t.hello()
    return t


# --------------------------------------------------------------------------- registration


def test_register_replies_registered_with_heartbeat_settings(t: Transcript) -> None:
    out = t.register("node-a", slots=2, credit=0)
    assert to_agents(out) == [(b"node-a", p.Registered("node-a", 1, "d1", 0.5, 3))]
    assert t.core.nodes["node-a"].state is NodeState.ALIVE
    assert logs(out) == ["node_registered"]


def test_second_live_agent_with_same_node_name_is_refused(t: Transcript) -> None:
    t.register("node-a")
    out = t.agent(b"other", p.Register("node-a", "imposter", 1, 0, 1.0))
    [(peer, message)] = to_agents(out)
    assert peer == b"other" and isinstance(message, p.Refused)
    assert "already registered by live agent agent-node-a" in message.reason
    assert t.core.nodes["node-a"].agent_id == "agent-node-a"


def test_same_agent_registering_again_keeps_its_incarnation_and_running_work(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.submit((1, "node-a", 0.0))
    out = t.agent(
        b"node-a-new-socket", p.Register("node-a", "agent-node-a", 1, 0, 1.0, running=(p.TaskRef(CLIENT_ID, 1),))
    )
    assert to_agents(out) == [(b"node-a-new-socket", p.Registered("node-a", 1, "d1", 0.5, 3))]
    assert list(t.core.nodes["node-a"].in_flight) == [(CLIENT_ID, 1)]


def test_an_agent_that_reconnects_gets_back_what_it_dropped_or_never_received(t: Transcript) -> None:
    """Its link went down: it dropped its unstarted tasks, and frames sent to its old socket were lost."""
    t.register("node-a", slots=1, prefetch=2)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0))  # 1 running, 2 and 3 prefetched
    out = t.agent(b"node-a-new", p.Register("node-a", "agent-node-a", 1, 2, 1.0, running=(p.TaskRef(CLIENT_ID, 1),)))
    assert "agent_resynced" in logs(out)
    assert list(t.core.nodes["node-a"].in_flight) == [(CLIENT_ID, 1)]
    assert sent_tasks(t.agent(b"node-a-new", p.Credit(2)), b"node-a-new") == [2, 3]


@pytest.mark.parametrize(
    ("register", "reason"),
    [
        (p.Register("Node_A", "a", 1, 0, 1.0), "not a valid Kubernetes node name"),
        (p.Register("node-a", "a", 1, 0, 1.0, protocol_version=99), "protocol version 99"),
    ],
)
def test_bad_registrations_are_refused_with_a_reason(t: Transcript, register: p.Register, reason: str) -> None:
    [(_, refused)] = to_agents(t.agent(b"x", register))
    assert isinstance(refused, p.Refused) and reason in refused.reason
    assert "node-a" not in t.core.nodes or t.core.nodes["node-a"].state is NodeState.PENDING


def test_unknown_agent_peer_is_told_to_register_again(t: Transcript) -> None:
    assert to_agents(t.agent(b"stranger", p.Credit(4))) == [(b"stranger", p.Reregister())]
    assert to_agents(t.agent(b"stranger", p.Heartbeat())) == [(b"stranger", p.Reregister())]
    assert to_agents(t.agent(b"stranger", p.Bye())) == []


# --------------------------------------------------------------------------- rank order and credit


def test_tasks_leave_each_node_queue_in_rank_order_not_arrival_order(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 5.0), (2, "node-a", 1.0), (3, "node-a", 3.0), (4, "node-a", 2.0))
    order = []
    for _ in range(4):
        order += sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a")
        t.agent(b"node-a", result(order[-1]))
    assert order == [2, 4, 3, 1]


def test_a_batch_goes_out_in_rank_order_up_to_the_credit(t: Transcript) -> None:
    t.register("node-a", slots=2, prefetch=1, credit=0)
    t.submit(*[(i, "node-a", float(10 - i)) for i in range(10)])
    assert sent_tasks(t.agent(b"node-a", p.Credit(3)), b"node-a") == [9, 8, 7]


def test_credit_never_exceeds_slots_plus_prefetch(t: Transcript) -> None:
    t.register("node-a", slots=2, prefetch=1, credit=0)
    t.submit(*[(i, "node-a", float(i)) for i in range(10)])
    assert sent_tasks(t.agent(b"node-a", p.Credit(50)), b"node-a") == [0, 1, 2]
    assert sent_tasks(t.agent(b"node-a", p.Credit(50)), b"node-a") == []
    t.agent(b"node-a", result(0))
    assert sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a") == [3]


def test_results_carry_the_credit_they_free_and_it_is_used_after_them(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0))
    assert sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a") == [1]
    freed = p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),), credit=5)
    out = t.agent(b"node-a", freed)
    assert [r.task_id for r in resolved(out)] == [1]
    assert sent_tasks(out, b"node-a") == [2]  # one slot: the credit is capped like a CREDIT's
    assert sent_tasks(t.agent(b"node-a", p.Results((), credit=1)), b"node-a") == []  # still busy with 2


def test_an_unknown_peers_results_and_credit_do_not_count(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    assert sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a") == [1]
    out = t.agent(b"stranger", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),), credit=1))
    assert resolved(out) == [] and t.core.results_refused == 1  # who it is, nobody can say
    assert (b"stranger", p.Reregister()) in to_agents(out)
    assert sent_tasks(out, b"stranger") == [] and sent_tasks(out, b"node-a") == []
    out = t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r"),)))
    assert [r.task_id for r in resolved(out)] == [1]  # the real one still resolves it


def test_pinned_tasks_go_only_to_their_node(t: Transcript) -> None:
    t.register("node-a", slots=4)
    t.register("node-b", slots=4)
    out = t.submit((1, "node-b", 0.0), (2, "node-a", 0.0), (3, "node-b", 1.0))
    assert sent_tasks(out, b"node-a") == [2]
    assert sent_tasks(out, b"node-b") == [1, 3]


def test_unpinned_tasks_go_to_whichever_node_has_credit(t: Transcript) -> None:
    t.register("node-a", slots=1)
    out = t.submit((1, None, 0.0), (2, None, 1.0))
    assert sent_tasks(out, b"node-a") == [1]
    out = t.register("node-b", slots=1)
    assert sent_tasks(out, b"node-b") == [2]


def test_node_merges_its_own_queue_and_the_pool_by_rank(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 2.0), (2, None, 1.0), (3, "node-a", 0.0))
    order = []
    for _ in range(3):
        order += sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a")
        t.agent(b"node-a", result(order[-1]))
    assert order == [3, 2, 1]


def test_task_pinned_to_unregistered_node_waits_for_it(t: Transcript) -> None:
    t.register("node-a", slots=4)
    out = t.submit((1, "node-later", 0.0))
    assert sent_tasks(out, b"node-a") == []
    assert logs(out) == ["node_awaited"]
    out = t.register("node-later", slots=1)
    assert sent_tasks(out, b"node-later") == [1]


def test_task_pinned_to_never_registered_node_goes_to_pool_after_grace(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-ghost", 0.0), at=1.0)
    t.agent(b"node-a", p.Heartbeat(), at=10.9)
    t.tick(10.9)
    assert t.core.nodes["node-ghost"].state is NodeState.PENDING
    t.agent(b"node-a", p.Heartbeat(), at=11.1)
    out = t.tick(11.1)
    assert "node_dead" in logs(out)
    assert sent_tasks(t.agent(b"node-a", p.Credit(1)), b"node-a") == [1]


# --------------------------------------------------------------------------- results


def test_result_goes_to_the_submitting_client_with_the_node_that_ran_it(t: Transcript) -> None:
    t.hello(peer=b"other-client", client_id="c2")
    t.register("node-a")
    t.submit((7, "node-a", 0.0))
    out = t.agent(b"node-a", result(7, payload=b"42"))
    assert resolved(out) == [p.Resolution(7, p.Outcome.OK, b"42", "node-a")]
    assert resolved(out, peer=b"other-client") == []
    assert t.core.tasks == {}


def test_second_result_for_the_same_task_is_dropped(t: Transcript) -> None:
    t.register("node-a")
    t.submit((7, "node-a", 0.0))
    assert len(resolved(t.agent(b"node-a", result(7)))) == 1
    assert resolved(t.agent(b"node-a", result(7, payload=b"again"))) == []
    assert t.core.duplicates_dropped == 1
    assert t.core.tasks_resolved == 1


def test_resubmitting_a_held_task_is_ignored(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0))
    t.submit((1, "node-a", 0.0))
    assert t.core.tasks_submitted == 1
    assert sent_tasks(t.agent(b"node-a", p.Credit(4)), b"node-a") == [1]


def test_client_without_hello_is_told_to_say_hello(t: Transcript) -> None:
    [error] = to_client(t.client(p.Submit(()), peer=b"new"), peer=b"new")
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.UNKNOWN_CLIENT


def test_submission_to_an_invalid_node_name_is_rejected_not_queued(t: Transcript) -> None:
    [res] = resolved(t.submit((1, "NOT a node", 0.0)))
    assert res.outcome is p.Outcome.REJECTED and b"not a valid Kubernetes node name" in res.payload
    assert t.core.tasks == {}


# --------------------------------------------------------------------------- liveness


def test_heartbeats_are_sent_each_interval_and_silence_expires_after_interval_times_liveness(
    t: Transcript,
) -> None:
    t.register("node-a", slots=1, credit=0)
    assert to_agents(t.tick(0.4)) == []
    assert to_agents(t.tick(0.5)) == [(b"node-a", p.Heartbeat())]
    out = t.tick(1.5)
    assert t.core.nodes["node-a"].state is NodeState.ALIVE, out
    out = t.tick(1.51)
    assert t.core.nodes["node-a"].state is NodeState.DEAD
    assert logs(out) == ["node_dead"]


def test_any_message_counts_as_a_heartbeat(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.agent(b"node-a", p.Credit(1), at=1.0)
    t.tick(2.4)
    assert t.core.nodes["node-a"].state is NodeState.ALIVE


def test_dead_node_queued_and_in_flight_tasks_move_to_a_live_node_lowest_rank_first(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=1)
    t.register("node-b", slots=1, credit=0)
    t.submit(*[(i, "node-a", float(i)) for i in range(5)])  # 0, 1 in flight on a; 2, 3, 4 queued
    t.agent(b"node-b", p.Heartbeat(), at=1.6)
    out = t.tick(1.6)
    assert logs(out) == ["node_dead"]
    assert t.core.nodes["node-a"].state is NodeState.DEAD
    assert len(t.core.pool) == 5
    assert sent_tasks(t.agent(b"node-b", p.Credit(1)), b"node-b") == [0]
    t.agent(b"node-b", result(0))
    assert sent_tasks(t.agent(b"node-b", p.Credit(1)), b"node-b") == [1]


def test_tasks_pinned_to_a_dead_node_go_to_the_pool(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.register("node-b", slots=1)
    t.agent(b"node-b", p.Heartbeat(), at=2.0)
    t.tick(2.0)
    assert sent_tasks(t.submit((1, "node-a", 0.0)), b"node-b") == [1]


def test_late_result_from_a_dead_incarnation_wins_if_still_unresolved(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.register("node-b", slots=1, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    t.agent(b"node-b", p.Heartbeat(), at=2.0)
    t.tick(2.0)  # node-a dead; task 1 back in the pool
    out = t.agent(b"node-a", result(1, payload=b"late"))
    assert resolved(out) == [p.Resolution(1, p.Outcome.OK, b"late", "node-a")]
    assert (b"node-a", p.Reregister()) in to_agents(out)
    assert sent_tasks(t.agent(b"node-b", p.Credit(1)), b"node-b") == [2]


def test_returning_node_reclaims_its_pinned_tasks_from_the_pool(t: Transcript) -> None:
    t.register("node-a", slots=1, credit=0)
    t.submit((1, "node-a", 0.0))
    t.tick(2.0)
    assert len(t.core.pool) == 1
    out = t.register("node-a", agent_id="agent-node-a-2")
    assert t.core.nodes["node-a"].incarnation == 2
    assert sent_tasks(out, b"node-a") == [1]


# --------------------------------------------------------------------------- drain, bye, cancel


def test_drain_returns_unstarted_tasks_and_bye_leaves_cleanly(t: Transcript) -> None:
    t.register("node-a", slots=1, prefetch=2)
    t.register("node-b", slots=2, credit=0)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-a", 2.0))
    out = t.agent(b"node-a", p.Drain((p.TaskRef(CLIENT_ID, 2), p.TaskRef(CLIENT_ID, 3))))
    assert logs(out) == ["node_draining"]
    assert sent_tasks(t.agent(b"node-a", p.Credit(2)), b"node-a") == []
    assert sent_tasks(t.agent(b"node-b", p.Credit(2)), b"node-b") == [2, 3]
    t.agent(b"node-a", result(1))
    out = t.agent(b"node-a", p.Bye())
    assert logs(out) == ["node_left"]
    assert t.core.nodes["node-a"].state is NodeState.GONE


def test_cancel_resolves_queued_tasks_and_asks_the_agent_for_running_ones(t: Transcript) -> None:
    t.register("node-a", slots=1)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    out = t.client(p.Cancel((1, 2, 99)))
    assert [(r.task_id, r.outcome) for r in resolved(out)] == [(2, p.Outcome.CANCELLED)]
    assert to_agents(out) == [(b"node-a", p.CancelTasks((p.TaskRef(CLIENT_ID, 1),)))]


# --------------------------------------------------------------------------- queries and garbage


def test_nodes_and_status_queries_report_queues(t: Transcript) -> None:
    t.register("node-b", slots=2, credit=1, speed=2.0)
    t.submit((1, "node-b", 0.0), (2, "node-b", 1.0), (3, None, 0.0))
    [nodes] = to_client(t.client(p.NodesQuery(5)))
    assert nodes == p.Nodes(5, (p.NodeInfo("node-b", "alive", 2.0, 2, 1, 1, 1, 0, 0),))
    [status] = to_client(t.client(p.StatusQuery(6)))
    assert isinstance(status, p.Status)
    assert (status.request_id, status.pool_queued, status.tasks_submitted) == (6, 1, 3)


def test_bad_frames_are_counted_and_logged_sparingly() -> None:
    t = Transcript(bad_frame_log_every=100)
    logged = sum(len(logs(t.garbage())) for _ in range(1000))
    assert t.core.bad_frames == 1000
    assert logged == 1 + 10


# --------------------------------------------------------------------------- versions and agent counters


def test_a_frame_in_a_version_the_dispatcher_does_not_speak_is_answered_with_why(t: Transcript) -> None:
    """Before, the codec rejected the header and the core's refusal was unreachable: an old
    agent was counted as garbage and never told."""
    reason = "protocol version 1; this side speaks 2, 3"
    out = t._step(FrameRejected("agent", reason, 1.0, "s", b"old-agent", 1))
    [(peer, refused)] = to_agents(out)
    assert peer == b"old-agent" and isinstance(refused, p.Refused) and reason in refused.reason
    out = t._step(FrameRejected("client", reason, 1.0, "s", b"old-client", 1))
    [error] = to_client(out, peer=b"old-client")
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.VERSION_MISMATCH
    assert t.core.bad_frames == 2
    assert to_agents(t.garbage()) == []  # an unreadable frame gets nothing


def test_a_previous_version_agent_and_client_are_served(t: Transcript) -> None:
    older = p.PROTOCOL_VERSION - 1
    out = t.agent(b"node-a", p.Register("node-a", "a", 1, 0, 1.0, protocol_version=older))
    assert isinstance(to_agents(out)[0][1], p.Registered)
    out = t.client(p.Hello("c2", protocol_version=older), peer=b"c2-peer")
    assert isinstance(to_client(out, peer=b"c2-peer")[0], p.Welcome)


def test_agent_status_is_reported_per_node_and_steals_in_status(t: Transcript) -> None:
    t.register("node-a")
    t.agent(b"node-a", p.AgentStatus(worker_respawns=2, busy_workers=1))
    [nodes] = to_client(t.client(p.NodesQuery(1)))
    assert isinstance(nodes, p.Nodes) and nodes.nodes[0].worker_respawns == 2
    [status] = to_client(t.client(p.StatusQuery(2)))
    assert isinstance(status, p.Status) and status.tasks_stolen == t.core.tasks_stolen == 0


def test_monitoring_goes_to_the_task_s_client_only_while_the_task_is_in_flight_on_that_node(t: Transcript) -> None:
    """Rule 12: each message to the client of its task, in order; one for a task that is not in
    flight on the sending node (queued, on another node, resolved, or another client's that it
    was never given) is dropped, so an agent cannot feed a client messages of work not its own."""
    t.hello(peer=b"c2-peer", client_id="c2")
    t.register("node-a", slots=2)
    t.register("node-b")
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-b", 0.0), (4, "node-a", 2.0))
    item = p.MonitoringItem
    out = t.agent(
        b"node-a",
        p.Monitor((
            item(CLIENT_ID, 1, b"first"), item(CLIENT_ID, 3, b"b's task"), item(CLIENT_ID, 4, b"queued"),
            item("c2", 1, b"not given"), item(CLIENT_ID, 2, b"second"), item(CLIENT_ID, 1, b"third"),
        )),
    )  # fmt: skip
    assert to_client(out) == [p.Monitored((p.MonitoredItem(1, b"first"), p.MonitoredItem(2, b"second"),
                                           p.MonitoredItem(1, b"third")))]  # fmt: skip
    assert to_client(out, peer=b"c2-peer") == []
    t.agent(b"node-a", result(1))
    assert to_client(t.agent(b"node-a", p.Monitor((item(CLIENT_ID, 1, b"late"),)))) == []


def test_monitoring_held_over_a_reconnect_or_from_a_dead_incarnation_still_reaches_the_client(t: Transcript) -> None:
    """A task that finished while its agent registered again is not in REGISTER's running list:
    it is queued again, and its monitoring and result come after. Both count: it ran there."""
    t.register("node-a")
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0))
    t.agent(b"node-a", p.Register("node-a", "agent-node-a-2", 1, 0, 1.0))  # reconnected, running nothing
    out = t.agent(b"node-a", p.Monitor((p.MonitoringItem(CLIENT_ID, 1, b"held"),)))
    assert to_client(out) == [p.Monitored((p.MonitoredItem(1, b"held"),))]
    t.tick(at=10.0)  # silent: node-a is dead; task 1 ran there, task 2 never did
    assert t.core.nodes["node-a"].state is NodeState.DEAD
    late = (p.MonitoringItem(CLIENT_ID, 1, b"late"), p.MonitoringItem(CLIENT_ID, 2, b"never ran there"))
    out = t.agent(b"node-a", p.Monitor(late))
    assert to_client(out) == [p.Monitored((p.MonitoredItem(1, b"late"),))]


def test_monitoring_is_dropped_from_an_unknown_peer_and_reaches_a_previous_version_client(t: Transcript) -> None:
    t.client(p.Hello("c3", protocol_version=p.PROTOCOL_VERSION - 1), peer=b"c3-peer")
    t.register("node-a", slots=2)
    t.submit((1, "node-a", 0.0))
    t.client(p.Submit((p.TaskSpec(1, "node-a", 1.0, b"fn"),)), peer=b"c3-peer")
    out = t.agent(b"stranger", p.Monitor((p.MonitoringItem(CLIENT_ID, 1, b"forged"),)))
    assert to_client(out) == []
    out = t.agent(b"node-a", p.Monitor((p.MonitoringItem("c3", 1, b"m"), p.MonitoringItem(CLIENT_ID, 1, b"m"))))
    assert to_client(out, peer=b"c3-peer") == [p.Monitored((p.MonitoredItem(1, b"m"),))]  # version 4 has it
    assert to_client(out) == [p.Monitored((p.MonitoredItem(1, b"m"),))]


def test_a_task_s_monitoring_and_its_result_from_one_frame_each_reach_the_client_in_that_order(
    t: Transcript,
) -> None:
    t.register("node-a")
    t.submit((1, "node-a", 0.0))
    out = t.agent(b"node-a", p.Monitor((p.MonitoringItem(CLIENT_ID, 1, b"last"),)))
    out += t.agent(b"node-a", result(1))
    assert [type(m) for m in to_client(out)] == [p.Monitored, p.Resolved]


# --------------------------------------------------------------------------- atomic steps


def test_a_step_that_fails_halfway_leaves_no_task_in_flight_without_its_frame(t: Transcript) -> None:
    """The review's finding: the shell swallowed a core exception and went on with a core whose
    task was marked in flight while its TASKS frame was never sent. Now the step is undone."""

    t.register("node-a", slots=1, credit=1)
    before = fingerprint(t.core)

    def broken_send(node: object, message: p.Message) -> None:
        raise RuntimeError("a bug between marking the task in flight and sending it")

    t.core._to_agent = broken_send  # type: ignore[method-assign]
    event = ClientMessageReceived(CLIENT, p.Submit((p.TaskSpec(1, "node-a", 0.0, b"x"),)), 1.0, "submit-1")
    with pytest.raises(RuntimeError, match="a bug between"):
        t.core.handle(event)
    assert fingerprint(t.core) == before
    assert (CLIENT_ID, 1) not in t.core.tasks
    t.core.validate_state()
    del t.core._to_agent
    [(_, tasks)] = to_agents(t.core.handle(event))  # the client's re-send is served normally
    assert isinstance(tasks, p.Tasks) and tasks.tasks[0].task_id == 1


def test_the_shell_rejects_an_event_the_core_raises_on_and_serves_the_next() -> None:
    from dispatcher.server.config import DispatcherConfig
    from dispatcher.server.service import DispatcherService

    service = DispatcherService(DispatcherConfig())
    try:
        hello = ClientMessageReceived(b"peer", p.Hello("c1"), 1.0, "client-1")

        def broken(event: object) -> list[object]:
            raise RuntimeError("injected")

        handle = service.core.handle
        service.core.handle = broken  # type: ignore[method-assign]
        service._step(hello)
        assert service.events_rejected == 1
        assert service._outgoing == {}  # nothing was sent for it
        service.core.handle = handle  # type: ignore[method-assign]
        service._step(hello)
        window = service.config.core.payload_budget // 4
        assert list(service._outgoing.values()) == [[p.Welcome(service.dispatcher_id, 0.5, window)]]
    finally:
        service.close()


def test_a_rejected_submission_resolves_its_tasks_rejected_and_an_agent_is_asked_to_resync() -> None:
    """Nothing waits for an answer a rejected step will not give."""
    from dispatcher.server.config import DispatcherConfig
    from dispatcher.server.events import AgentMessageReceived
    from dispatcher.server.service import DispatcherService

    service = DispatcherService(DispatcherConfig())
    try:

        def broken(event: object) -> list[object]:
            raise RuntimeError("injected")

        service.core.handle = broken  # type: ignore[method-assign]
        submit = p.Submit((p.TaskSpec(1, None, 0.0, b"x"), p.TaskSpec(2, None, 0.0, b"y")))
        service._step(ClientMessageReceived(b"peer", submit, 1.0, "client-7"))
        service._step(AgentMessageReceived(b"agent", result(1), 1.0, "agent-8"))
        sent = {peer: messages for (_, peer), messages in service._outgoing.items()}
        [resolved] = sent[b"peer"]
        assert isinstance(resolved, p.Resolved)
        assert [(r.task_id, r.outcome) for r in resolved.results] == [(1, p.Outcome.REJECTED), (2, p.Outcome.REJECTED)]
        assert sent[b"agent"] == [p.Reregister()]
        assert service.events_rejected == 2
    finally:
        service.close()
