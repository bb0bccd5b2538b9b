"""/metrics from a real dispatcher, parsed by prometheus_client's own parser, against what ran."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest
import zmq

from dispatcher import LocalCluster
from dispatcher.client.errors import TaskFailed
from dispatcher.runtime.keys import load_public

from . import apps
from .scrape import scrape, series

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def outcome(future: Future[Any]) -> str:
    try:
        future.result()
    except TaskFailed:
        raise
    except Exception:
        return "app_error"  # the app's own exception, re-raised
    return "ok"


def test_counters_equal_what_ran_per_node_and_outcome_after_a_steal_and_a_node_death(logs: Path) -> None:
    from parsl.serialize import pack_apply_message

    with (
        LocalCluster(3, workers=1, prefetch=3, heartbeat_interval_s=0.2, http=True, log_dir=logs) as cluster,
        cluster.client() as client,
    ):
        a, b, c = cluster.node_names
        pinned: list[tuple[Future[Any], str]] = []
        # 1. Soft-affinity work piled on a: the idle nodes steal some of it.
        for i in range(12):
            payload = pack_apply_message(apps.slow_where, (i, 0.2), {})
            pinned.append((client.submit_payload(payload, node=a, rank=float(i), soft_affinity=True), a))
        wait([f for f, _ in pinned], timeout=60)
        # 2. App errors on b, successes on c.
        pinned += [(client.submit(apps.fail, f"no {i}", node=b, rank=float(i)), b) for i in range(5)]
        pinned += [(client.submit(apps.where, i, node=c, rank=float(i)), c) for i in range(10)]
        wait([f for f, _ in pinned], timeout=60)
        # 3. c dies with work in flight: its tasks run again on a and b.
        doomed = [client.submit(apps.slow_where, i, 0.05, node=c, rank=100.0 + i) for i in range(40)]
        pinned += [(f, c) for f in doomed]
        deadline = time.monotonic() + 30
        while sum(f.done() for f in doomed) < 3:
            assert time.monotonic() < deadline, "c never ran anything"
            time.sleep(0.01)
        cluster.kill_agent(c, signal.SIGKILL)
        _, not_done = wait([f for f, _ in pinned], timeout=60)
        assert not not_done
        status = client.status()
        samples = scrape(cluster.http_url)

    futures = [f for f, _ in pinned]
    ran = Counter((f.node_name, outcome(f)) for f in futures)
    assert ran[b, "app_error"] == 5
    assert any(f.node_name != c for f in doomed), "nothing of c's ran elsewhere"
    assert series(samples, "saga_dispatch_tasks_resolved_total", "node", "outcome") == ran
    assert series(samples, "saga_dispatch_tasks_submitted_total", "node") == Counter((node,) for _, node in pinned)

    stolen = series(samples, "saga_dispatch_tasks_stolen_total", "node")
    assert sum(stolen.values()) == status.tasks_stolen, stolen
    assert stolen[a,] > 0, stolen  # (a stolen task waiting on its thief may be stolen again from there)
    first_twelve = [f.node_name for f, _ in pinned[:12]]
    assert 0 < first_twelve.count(b) + first_twelve.count(c) <= status.tasks_stolen

    assert series(samples, "saga_dispatch_node_deaths_total", "node", "reason") == {(c, "heartbeat"): 1}
    assert series(samples, "saga_dispatch_node_drains_total", "node", "reason") == {}

    resolved_on = Counter(f.node_name for f in futures)
    dispatched = series(samples, "saga_dispatch_tasks_dispatched_total", "node")
    for node in (a, b, c):
        assert dispatched[node,] >= resolved_on[node]
    assert dispatched[c,] > resolved_on[c], "c died with nothing in flight: the death was not mid-run"
    runs = series(samples, "saga_dispatch_task_run_seconds_count", "node")
    waits = series(samples, "saga_dispatch_task_wait_seconds_count", "node")
    assert runs == waits == {(node,): n for node, n in resolved_on.items()}
    slept = sum(0.2 for f in futures[:12] if f.node_name == a) + sum(0.05 for f in doomed if f.node_name == a)
    assert series(samples, "saga_dispatch_task_run_seconds_sum", "node")[a,] >= slept  # each slept that long

    dropped = series(samples, "saga_dispatch_duplicates_dropped_total", "node")
    assert sum(dropped.values()) == status.duplicates_dropped
    assert series(samples, "saga_dispatch_nodes", "state") == {
        ("alive",): 2,
        ("dead",): 1,
        ("pending",): 0,
        ("draining",): 0,
        ("gone",): 0,
    }
    assert series(samples, "saga_dispatch_unresolved_tasks") == {(): 0}
    assert set(series(samples, "saga_dispatch_node_in_flight_tasks", "node").values()) == {0}
    assert series(samples, "saga_dispatch_events_rejected_total") == {(): 0}
    info = series(samples, "saga_dispatch_build_info", "version", "protocol")
    assert list(info.values()) == [1]
    # CURVE is on (the embedded mode's ephemeral keys): every connection so far authenticated.
    assert series(samples, "saga_dispatch_handshakes_total", "side")["agent",] >= 3


def test_a_peer_with_an_unknown_key_is_counted_as_an_authentication_failure(logs: Path) -> None:
    with LocalCluster(1, http=True, log_dir=logs) as cluster:
        before = series(scrape(cluster.http_url), "saga_dispatch_handshakes_failed_total", "side")
        assert before.get(("client",), 0) == 0
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)
        public, secret = zmq.curve_keypair()
        rogue.curve_publickey, rogue.curve_secretkey = public, secret
        assert cluster.keys_dir is not None
        rogue.curve_serverkey = load_public(cluster.keys_dir, "dispatcher")
        rogue.setsockopt(zmq.LINGER, 0)
        try:
            rogue.connect(cluster.client_url)
            deadline = time.monotonic() + 30
            while True:  # the handshake fails in libzmq's own time; its monitor event follows
                failed = series(scrape(cluster.http_url), "saga_dispatch_handshakes_failed_total", "side")
                if failed.get(("client",), 0) >= 1:
                    break
                assert time.monotonic() < deadline, failed
                time.sleep(0.05)
        finally:
            rogue.close()
        samples = scrape(cluster.http_url)
    assert series(samples, "saga_dispatch_handshakes_failed_total", "side", "reason")
    assert series(samples, "saga_dispatch_tasks_submitted_total", "node") == {}
