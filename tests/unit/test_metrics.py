"""What the core counts for /metrics, as transcripts, and the exposition parsed back by
prometheus_client's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import protocol as p
from dispatcher.server.access import AccessCounters
from dispatcher.server.events import Command, Count, FrameRejected, Observe
from dispatcher.server.metrics import (
    BUCKETS,
    COUNTERS,
    DEATH_CAUSES,
    DRAIN_CAUSES,
    FRAME_REASONS,
    HISTOGRAMS,
    MONITORING_FATES,
    OUTCOMES,
    Metrics,
    WatchGauges,
    render,
    snapshot,
)

from .transcript import CLIENT_ID, Transcript, result

pytestmark = pytest.mark.unit


class Counted(Transcript):
    """A transcript whose every step's measures go into a :class:`Metrics`, as the shell's do."""

    def __init__(self, **config: object) -> None:
        super().__init__(**config)
        self.metrics = Metrics()

    def _step(self, event: object) -> list[Command]:
        out = super()._step(event)
        for command in out:
            if isinstance(command, Count | Observe):
                check_declared(command)
                self.metrics.record(command)
        return out

    def count(self, metric: str) -> dict[tuple[str, ...], int]:
        return dict(self.metrics.counts[metric])


BOUNDED = {("tasks_resolved", 1): OUTCOMES, ("node_deaths", 1): DEATH_CAUSES, ("node_drains", 1): DRAIN_CAUSES,
           ("frames_rejected", 1): FRAME_REASONS, ("frames_rejected", 0): ("agent", "client"),
           ("peers_refused", 0): ("agent", "client"), ("monitoring_messages", 1): MONITORING_FATES}  # fmt: skip


def check_declared(command: Count | Observe) -> None:
    """Every measure the core emits is a declared metric, with its labels, from its bounded sets."""
    declared = COUNTERS if isinstance(command, Count) else HISTOGRAMS
    assert command.metric in declared, command
    assert len(command.labels) == len(declared[command.metric][0]), command
    for (metric, i), allowed in BOUNDED.items():
        if metric == command.metric:
            assert command.labels[i] in allowed, command


@pytest.fixture
def t() -> Counted:
    t = Counted(heartbeat_interval_s=0.5, liveness=3, pending_grace_s=10.0)
    t.hello()
    return t


def test_tasks_are_counted_where_they_were_pinned_sent_and_resolved_with_their_wait_and_run(t: Counted) -> None:
    t.register("node-a", slots=2)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, None, 2.0), at=1.0)
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r", 0.25),)), at=2.0)
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 2, p.Outcome.APP_ERROR, b"e", 3.0),), credit=1), at=5.0)
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 3, p.Outcome.OK, b"r", 0.0),)), at=5.0)
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 3, p.Outcome.OK, b"r", 0.0),)), at=5.5)  # again
    assert t.count("tasks_submitted") == {("node-a",): 2, ("(pool)",): 1}
    assert t.count("tasks_dispatched") == {("node-a",): 3}
    assert t.count("tasks_resolved") == {("node-a", "ok"): 2, ("node-a", "app_error"): 1}
    assert t.count("duplicates_dropped") == {("node-a",): 1}
    run = t.metrics.histograms["task_run_seconds"]["node-a",]
    wait = t.metrics.histograms["task_wait_seconds"]["node-a",]
    assert (run.count, run.sum) == (3, 3.25)
    # queued at 1.0; started = the result's arrival less its run: 1.75, 2.0 and 5.0
    assert (wait.count, wait.sum) == (3, pytest.approx(0.75 + 1.0 + 4.0))


def test_rejected_and_cancelled_tasks_are_counted_for_no_node() -> None:
    t = Counted(max_task_bytes=1024)
    t.hello()
    t.client(p.Submit((p.TaskSpec(1, "node-a", 0.0, b"x" * 2048),)))  # too large
    t.submit((2, "node-b", 0.0))
    t.client(p.Cancel((2,)))
    assert t.count("tasks_submitted") == {("(none)",): 1, ("node-b",): 1}
    assert t.count("tasks_resolved") == {("(none)", "rejected"): 1, ("(none)", "cancelled"): 1}


def test_monitoring_messages_are_counted_forwarded_or_dropped_per_node(t: Counted) -> None:
    t.register("node-a")
    t.submit((1, "node-a", 0.0))
    t.agent(b"node-a", p.Monitor((p.MonitoringItem(CLIENT_ID, 1, b"m"), p.MonitoringItem(CLIENT_ID, 9, b"m"))))
    assert t.count("monitoring_messages") == {("node-a", "forwarded"): 1, ("node-a", "dropped"): 1}


def test_every_way_a_node_ends_or_stops_taking_work_is_counted_by_reason(t: Counted) -> None:
    t.listed("node-a", "node-b", "node-c", "node-d", "node-e")
    for name in ("node-a", "node-b", "node-c", "node-d"):
        t.register(name, slots=1)
    t.observed("node-a", cordoned=True)
    t.deleted("node-b")
    t.agent(b"node-c", p.Drain(()))
    t.agent(b"node-c", p.Bye())
    t.submit((1, "node-e", 0.0))  # pinned to a node whose agent never comes
    t.tick(1.0)
    for name in ("node-a", "node-d"):
        t.agent(name.encode(), p.Heartbeat(), at=1.0)
    t.tick(2.0)  # node-d silent for 1 s: alive; at 2.6 s dead
    t.agent(b"node-a", p.Heartbeat(), at=2.5)
    t.tick(2.6)
    t.tick(11.0)
    assert t.count("node_drains") == {("node-a", "cordoned"): 1, ("node-c", "agent"): 1}
    assert t.count("node_deaths") == {
        ("node-b", "k8s_deleted"): 1,
        ("node-c", "bye"): 1,
        ("node-d", "heartbeat"): 1,
        ("node-e", "never_registered"): 1,
        ("node-a", "heartbeat"): 1,
    }


def test_refusals_and_rejected_frames_are_counted_by_bounded_reasons(t: Counted) -> None:
    t.agent(b"x", p.Register("Not_A_Node", "agent-x", 1, 0, 1.0))
    t.client(p.Hello("other", protocol_version=1), peer=b"other")
    t._step(FrameRejected("client", "expected 1 frame", 0.0, "t", kind="frames"))
    t._step(FrameRejected("agent", "garbage", 0.0, "t"))
    t.agent(b"nobody", result(9))  # a result from a peer that never registered
    assert t.count("peers_refused") == {("agent", "name"): 1, ("client", "version"): 1}
    assert t.count("frames_rejected") == {("client", "frames"): 1, ("agent", "malformed"): 1}
    assert t.count("duplicates_dropped") == {("(none)",): 1}  # no such task: it counts as dropped


def test_with_metrics_off_the_core_issues_no_measures() -> None:
    t = Counted(metrics=False)
    t.hello()
    t.register("node-a", slots=1)
    out = t.submit((1, "node-a", 0.0))
    out += t.agent(b"node-a", result(1))
    assert not [c for c in out if isinstance(c, Count | Observe)]
    assert all(not series for series in t.metrics.counts.values())


def test_the_exposition_parses_back_with_cumulative_buckets_and_the_state(t: Counted) -> None:
    t.register("node-a", slots=2)
    t.submit((1, "node-a", 0.0), (2, "node-a", 1.0), (3, "node-z", 2.0))
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 1, p.Outcome.OK, b"r", 0.003),)), at=0.01)
    t.agent(b"node-a", p.Results((p.TaskResult(CLIENT_ID, 2, p.Outcome.OK, b"r", 2.0),)), at=3.0)
    access = AccessCounters()
    access.accepted["client"] = 3
    access.authenticated["client"] = 2
    access.handshakes_failed["client", "unknown_key"] = 1
    watch = WatchGauges(synced=True, restarts={"expired": 1, "error": 2}, since_contact_s=0.5)
    text = render(snapshot(t.metrics, t.core, access, watch, events_rejected=0)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    run = {dict(k[1])["le"]: v for k, v in samples.items() if k[0] == "saga_dispatch_task_run_seconds_bucket"}
    assert len(run) == len(BUCKETS) + 1
    assert run["0.001"] == 0 and run["0.005"] == 1 and run["1.0"] == 1 and run["5.0"] == 2 and run["+Inf"] == 2
    assert samples["saga_dispatch_task_run_seconds_count", (("node", "node-a"),)] == 2
    assert samples["saga_dispatch_node_queued_tasks", (("node", "node-z"),)] == 1  # pending, waited for
    assert samples["saga_dispatch_nodes", (("state", "pending"),)] == 1
    assert samples["saga_dispatch_node_state", (("node", "node-a"), ("reason", ""), ("state", "alive"))] == 1
    assert samples["saga_dispatch_handshakes_failed_total", (("reason", "unknown_key"), ("side", "client"))] == 1
    assert samples["saga_dispatch_node_watch_restarts_total", (("reason", "expired"),)] == 1
    assert samples["saga_dispatch_node_watch_lag_seconds", ()] == 0.5
    assert samples["saga_dispatch_unresolved_tasks", ()] == 1
    assert samples["saga_dispatch_clients", ()] == 1


def test_a_node_the_core_forgot_takes_its_series_with_it(t: Counted) -> None:
    t.listed("node-a", "node-b")
    t.register("node-a", slots=1)
    t.register("node-b", slots=1)
    t.submit((1, "node-a", 0.0), (2, None, 1.0))
    t.agent(b"node-a", result(1))
    t.agent(b"node-b", result(2))
    t.deleted("node-a")
    t.tick(5.0)  # the sweep drops a deleted Node's entry once no task names it
    assert "node-a" not in t.core.nodes
    snap = snapshot(t.metrics, t.core, AccessCounters(), None, events_rejected=0)
    everywhere = [labels for series in snap.counts.values() for labels in series]
    everywhere += [labels for series in snap.histograms.values() for labels in series]
    assert not [labels for labels in everywhere if labels[0] == "node-a"]
    assert snap.counts["tasks_resolved"] == {("node-b", "ok"): 1}  # node-a's went with it
    assert snap.counts["tasks_submitted"].get(("(pool)",)) == 1  # the special labels stay


def test_a_revoked_client_s_tasks_count_as_resolved_to_no_one() -> None:
    t = Counted()
    t.keys({"agent-key": ""}, {"client-key"})
    t.client(p.Hello(CLIENT_ID), key="client-key")
    t.client(p.Submit((p.TaskSpec(1, "node-z", 0.0, b"f"), p.TaskSpec(2, None, 1.0, b"f"))), key="client-key")
    t.keys({"agent-key": ""}, set())
    assert not t.core.tasks
    assert t.count("tasks_resolved") == {("(none)", "revoked"): 2}
    assert sum(t.count("tasks_submitted").values()) == 2


def test_a_dead_node_shows_no_busy_workers(t: Counted) -> None:
    t.register("node-a", slots=2)
    t.agent(b"node-a", p.AgentStatus(0, 2))
    assert t.core.nodes["node-a"].busy_workers == 2
    t.tick(5.0)
    assert t.core.nodes["node-a"].state.value == "dead" and t.core.nodes["node-a"].busy_workers == 0
