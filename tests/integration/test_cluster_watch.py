"""The dispatcher with ``--watch-nodes`` against the fake API server: a real dispatcher process,
real agents, the real ``kubernetes`` client, and the effects a client sees (docs/kubernetes.md's
table). Throughout, the dispatcher keeps dispatching: the API being away, erring or hanging
changes nothing but what it learns late, and it catches up.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.kubeapi import FakeKubeAPI, node_object
from dispatcher import Client, LocalCluster

from . import apps
from .scrape import scrape, series

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        api.put(node_object("local-0"))
        api.put(node_object("local-1"))
        yield api


@pytest.fixture
def cluster(api: FakeKubeAPI, tmp_path: Path, logs: Path) -> Iterator[LocalCluster]:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    with LocalCluster(
        2,
        log_dir=logs,
        http=True,
        # The server ends each watch after 2 s; silence for 4 s means a hung connection.
        dispatcher_args=["--watch-nodes", "--watch-timeout", "2", "--watch-read-timeout", "4"],
        dispatcher_env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""},
    ) as c:
        api.wait_watching()
        yield c


def until(what: Callable[[], bool], why: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def state(client: Client, name: str) -> tuple[str, str]:
    for info in client.nodes():
        if info.node_name == name:
            return info.state, info.reason
    return "absent", ""


def probe(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_cordon_moves_new_work_away_and_an_uncordon_brings_it_back(api: FakeKubeAPI, cluster: LocalCluster) -> None:
    with cluster.client() as client:
        api.put(node_object("local-0", cordoned=True))
        until(lambda: state(client, "local-0") == ("draining", "cordoned"), "the cordon was not applied")
        futures = [client.submit(apps.square, n, node="local-0") for n in range(6)]
        assert [f.result(timeout=60) for f in futures] == [n * n for n in range(6)]
        assert {f.node_name for f in futures} == {"local-1"}  # pinned to a cordoned node: the pool
        api.put(node_object("local-0"))
        until(lambda: state(client, "local-0") == ("alive", ""), "the uncordon was not applied")
        again = client.submit(apps.square, 7, node="local-0")
        assert again.result(timeout=60) == 49
        assert again.node_name == "local-0"
    samples = scrape(cluster.http_url)
    assert series(samples, "saga_dispatch_node_drains_total", "node", "reason") == {("local-0", "cordoned"): 1}
    assert series(samples, "saga_dispatch_tasks_resolved_total", "node", "outcome") == {
        ("local-1", "ok"): 6,
        ("local-0", "ok"): 1,
    }
    assert series(samples, "saga_dispatch_node_watch_synced") == {(): 1}


def test_a_deleted_node_is_gone_its_work_runs_elsewhere_and_its_agent_is_refused(
    api: FakeKubeAPI, cluster: LocalCluster, logs: Path
) -> None:
    with cluster.client() as client:
        slow = client.submit(apps.slow_where, 1, 3.0, node="local-1")
        until(lambda: client.nodes()[1].in_flight == 1, "the task never started on local-1")
        api.delete("local-1")
        until(lambda: state(client, "local-1") == ("gone", "deleted"), "the deletion was not applied")
        assert slow.result(timeout=60)[:2] == ("local-0", 1)  # run again elsewhere; the cut-off copy never counts
        assert slow.node_name == "local-0"
        pinned = client.submit(apps.square, 3, node="local-1")
        assert pinned.result(timeout=60) == 9
        assert pinned.node_name == "local-0"
        # The agent of local-1 keeps trying to register and is refused while its Node is not listed.
        agent_log = logs / "local-1.log"
        until(lambda: "was deleted" in agent_log.read_text(), "the agent was not refused")
        api.put(node_object("local-1"))
        until(lambda: state(client, "local-1")[0] == "alive", "the agent did not come back once listed")
    samples = scrape(cluster.http_url)
    assert series(samples, "saga_dispatch_node_deaths_total", "node", "reason") == {("local-1", "k8s_deleted"): 1}
    refused = series(samples, "saga_dispatch_peers_refused_total", "side", "reason")
    assert refused["agent", "deleted"] >= 1  # the agent's tries while its Node was not listed


def test_the_api_away_erring_or_hanging_never_stops_dispatching_and_the_watch_catches_up(
    api: FakeKubeAPI, cluster: LocalCluster
) -> None:
    assert cluster.http_url
    errors = 0
    with cluster.client() as client:
        for fault in ("down", "5xx", "hang"):
            if fault == "down":
                api.down()
            elif fault == "5xx":
                api.fail_next(50, status=503)
                api.drop_watches()
            else:
                api.hang_next(1)
                api.end_watches()
            futures = [client.submit(apps.square, n, node=f"local-{n % 2}") for n in range(20)]
            assert [f.result(timeout=60) for f in futures] == [n * n for n in range(20)], fault
            assert all(f.node_name == f"local-{n % 2}" for n, f in enumerate(futures)), fault
            assert probe(cluster.http_url + "/readyz") == 200, fault  # ready never hangs on the API
            assert probe(cluster.http_url + "/healthz") == 200, fault
            api.put(node_object("local-0", cordoned=True))  # said while the API is out of reach
            if fault == "down":
                api.up()
            elif fault == "5xx":
                api._fail.clear()
            until(lambda: state(client, "local-0") == ("draining", "cordoned"), f"no catch-up after {fault}", 90)
            api.put(node_object("local-0"))
            until(lambda: state(client, "local-0") == ("alive", ""), f"no uncordon after {fault}", 90)
            restarts = series(scrape(cluster.http_url), "saga_dispatch_node_watch_restarts_total", "reason")
            assert restarts.get(("error",), 0) > errors, fault  # the fault made the watch start over
            errors = restarts["error",]


def test_an_agent_whose_node_the_api_does_not_list_waits_until_it_is_listed(
    api: FakeKubeAPI, cluster: LocalCluster, logs: Path
) -> None:
    assert cluster.keys_dir is not None
    argv = [sys.executable, "-m", "dispatcher", "--log-format", "json", "agent", "--dispatcher", cluster.agent_url]
    argv += ["--node-name", "local-9", "--workers", "1", "--keys", str(cluster.keys_dir)]
    with (logs / "local-9.log").open("ab") as log:
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        with cluster.client() as client:
            until(lambda: state(client, "local-9") == ("pending", "not-in-api"), "the agent was not held")
            waiting = client.submit(apps.where, 9, node="local-9")
            assert waiting.result(timeout=60)[0] in ("local-0", "local-1")  # not on a node the API does not know
            api.put(node_object("local-9"))
            until(lambda: state(client, "local-9") == ("alive", ""), "listed, the node was not released")
            assert client.submit(apps.where, 10, node="local-9").result(timeout=60)[0] == "local-9"
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_the_probes_answer_over_http(cluster: LocalCluster) -> None:
    assert probe(cluster.http_url + "/healthz") == 200
    assert probe(cluster.http_url + "/readyz") == 200
    assert probe(cluster.http_url + "/nothing") == 404


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_agent_is_ready_once_registered_and_not_before(tmp_path: Path) -> None:
    port = free_port()
    with LocalCluster(1, log_dir=tmp_path / "logs", start_agents=False, insecure=True) as cluster:
        argv = [sys.executable, "-m", "dispatcher", "agent", "--dispatcher", "tcp://127.0.0.1:1", "--node-name", "n1"]
        argv += ["--workers", "1", "--http-port", str(port), "--http-host", "127.0.0.1"]
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            until(lambda: _answers(url + "/healthz"), "the agent's probes never answered")
            assert probe(url + "/healthz") == 200
            assert probe(url + "/readyz") == 503  # no dispatcher at that address: not registered
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        argv[argv.index("tcp://127.0.0.1:1")] = cluster.agent_url
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            until(lambda: _answers(url + "/readyz") and probe(url + "/readyz") == 200, "never ready")
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        probe(url)
    except OSError:
        return False
    return True
