"""Real processes, real sockets: a dispatcher and agents from LocalCluster, driven by Client."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import wait
from pathlib import Path

import psutil
import pytest
import zmq

from dispatcher import Client, LocalCluster, TaskRejected, WorkerLost
from dispatcher import protocol as p

from . import apps
from .conftest import all_pids

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def test_10k_pinned_tasks_run_on_their_node_in_rank_order(logs: Path) -> None:
    """Submitted before any agent exists, with shuffled ranks: each node must start its tasks in rank order."""
    rng = random.Random(42)
    n = 10_000
    with LocalCluster(4, workers=1, prefetch=1, start_agents=False, log_dir=logs) as cluster:
        names = cluster.node_names
        ranks = list(range(n))
        rng.shuffle(ranks)
        with cluster.client() as client:
            placed = [(names[rng.randrange(4)], ranks[i]) for i in range(n)]
            futures = [client.submit(apps.where, i, node=node, rank=rank) for i, (node, rank) in enumerate(placed)]
            for name in names:
                cluster.start_agent(name)
            _, not_done = wait(futures, timeout=240)
            assert not not_done, f"{len(not_done)} futures unresolved"
            status = client.status()
            assert client.resolutions_ignored == 0
    started_by_node: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (future, (node, rank)) in enumerate(zip(futures, placed, strict=True)):
        ran_on, value, started_ns = future.result()
        assert value == i
        assert ran_on == node == future.node_name
        started_by_node[node].append((started_ns, rank))
    for node, starts in started_by_node.items():
        ranks_in_start_order = [rank for _, rank in sorted(starts)]
        assert ranks_in_start_order == sorted(ranks_in_start_order), f"{node} started tasks out of rank order"
    assert status.tasks_submitted == status.tasks_resolved == n
    assert status.duplicates_dropped == 0 and status.bad_frames == 0


def test_agent_killed_mid_run_its_tasks_finish_on_the_others(logs: Path) -> None:
    n = 800
    with LocalCluster(4, workers=2, log_dir=logs, heartbeat_interval_s=0.2) as cluster, cluster.client() as client:
        victim = cluster.node_names[0]
        futures = [client.submit(apps.slow_where, i, 0.01, node=cluster.node_names[i % 4], rank=i) for i in range(n)]
        deadline = time.monotonic() + 30
        while sum(f.done() and f.node_name == victim for f in futures) < 10:
            assert time.monotonic() < deadline, "victim never ran anything"
            time.sleep(0.01)
        pids = all_pids(cluster.agents[victim].pid)
        cluster.kill_agent(victim, signal.SIGKILL)
        _, not_done = wait(futures, timeout=60)
        assert not not_done
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
        ), "the killed agent's workers survived it"
        assert client.resolutions_ignored == 0
        status = client.status()
    ran = [f.result() for f in futures]
    assert [x for _, x, _ in ran] == list(range(n))
    rescued = [i for i, (node, _, _) in enumerate(ran) if i % 4 == 0 and node != victim]
    assert rescued, "no task of the dead node ran elsewhere"
    assert all(node == cluster.node_names[i % 4] for i, (node, _, _) in enumerate(ran) if i % 4 != 0)
    assert {n.node_name: n.state for n in status.nodes}[victim] == "dead"


def _raw_sockets(cluster: LocalCluster) -> list[zmq.Socket[bytes]]:
    """A bare DEALER on each of the dispatcher's ports: frames that no client or agent would send."""
    socks = []
    for url in (cluster.client_url, cluster.agent_url):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url)
        socks.append(sock)
    return socks


def test_garbage_frames_do_not_stop_or_bloat_the_dispatcher(logs: Path) -> None:
    """Keyless (``insecure``), so garbage reaches the decoder from any socket; with keys,
    ``test_fuzz_auth.py`` sends it through authenticated connections."""
    rng = random.Random(1)
    with LocalCluster(2, workers=1, log_dir=logs, insecure=True) as cluster, cluster.client() as client:
        assert cluster.dispatcher is not None
        dispatcher = psutil.Process(cluster.dispatcher.pid)
        socks = _raw_sockets(cluster)

        def spray(count: int) -> None:
            for sock in socks:
                for k in range(count):
                    kind = k % 4
                    if kind == 0:
                        sock.send(rng.randbytes(rng.randrange(1, 512)))
                    elif kind == 1:
                        sock.send_multipart([b"a", b"b", b"c"])
                    elif kind == 2:  # well-formed, wrong direction
                        sock.send(b"\x93\x01\x0b\x90")
                    else:
                        sock.send(b"")

        def served() -> None:
            assert [f.result(timeout=30) for f in [client.submit(apps.square, i) for i in range(20)]] == [
                i * i for i in range(20)
            ]

        def counted(expected: int) -> None:
            """Frames on other connections are not ordered with ours: wait until all are counted."""
            deadline = time.monotonic() + 30
            while (seen := client.status().bad_frames) < expected:
                assert time.monotonic() < deadline, f"only {seen} of {expected} bad frames counted"
                time.sleep(0.05)
            assert seen == expected

        spray(1000)
        counted(2000)
        served()
        rss_after_first = dispatcher.memory_info().rss
        for _ in range(5):
            spray(1000)
        counted(12_000)
        served()
        rss_after_more = dispatcher.memory_info().rss
        for sock in socks:
            sock.close()
    growth_mb = (rss_after_more - rss_after_first) / 2**20
    assert growth_mb < 8, f"dispatcher grew {growth_mb:.1f} MiB over 10,000 more garbage frames"


def test_messages_of_too_many_frames_are_dropped_as_they_are_read(logs: Path) -> None:
    """A payload may travel in a frame of its own, so a message has several: one of 200,000 frames
    (a few MB on the wire) is read and dropped frame by frame, refused, and costs no memory."""
    with LocalCluster(1, workers=1, log_dir=logs, insecure=True) as cluster, cluster.client() as client:
        assert cluster.dispatcher is not None
        dispatcher = psutil.Process(cluster.dispatcher.pid)
        rss_before = dispatcher.memory_info().rss
        socks = _raw_sockets(cluster)
        heartbeat = p.encode(p.Heartbeat())
        small = [p.encode_parts(p.Tasks((p.TaskAssignment("c", 1, 0.0, b"x" * (p.INLINE_MAX + 1)),)))[0]]
        for sock in socks:
            for _ in range(3):
                sock.send_multipart([heartbeat, *[b""] * 200_000])
            sock.send_multipart([p.encode(p.Heartbeat()), b"x"])  # a frame where none may be
            sock.send_multipart([*small, b"x" * 10])  # a payload frame that is not the size its header says
        deadline = time.monotonic() + 60
        while (seen := client.status().bad_frames) < 10:
            assert time.monotonic() < deadline, f"only {seen} of 10 bad messages counted"
            time.sleep(0.05)
        assert client.status().bad_frames == 10
        assert [f.result(timeout=30) for f in [client.submit(apps.square, i) for i in range(20)]] == [
            i * i for i in range(20)
        ]
        growth_mb = (dispatcher.memory_info().rss - rss_before) / 2**20
        for sock in socks:
            sock.close()
    assert growth_mb < 32, f"dispatcher grew {growth_mb:.1f} MiB over 6 messages of 200,000 frames"


@pytest.mark.parametrize("zygote", [True, False], ids=["forked", "spawned"])
def test_app_exceptions_reraise_and_a_crashed_worker_fails_only_its_task(logs: Path, zygote: bool) -> None:
    with LocalCluster(1, workers=1, log_dir=logs, zygote=zygote) as cluster, cluster.client() as client:
        with pytest.raises(ValueError, match="boom"):
            client.submit(apps.fail, "boom").result(timeout=30)
        crashed = client.submit(apps.crash_worker, 3)
        after = [client.submit(apps.square, i) for i in range(5)]
        with pytest.raises(WorkerLost, match="exit code 3"):
            crashed.result(timeout=30)
        assert [f.result(timeout=30) for f in after] == [0, 1, 4, 9, 16]
        deadline = time.monotonic() + 30  # the agent reports the respawn within a heartbeat or two
        while (respawns := client.status().nodes[0].worker_respawns) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert respawns == 1


def test_a_task_waiting_in_a_dead_workers_pipe_runs_on_its_replacement(logs: Path) -> None:
    with LocalCluster(1, workers=1, pipeline=1, log_dir=logs) as cluster, cluster.client() as client:
        crashed_pid = client.submit(apps.pid).result(timeout=30)
        crashed = client.submit(apps.crash_worker_after, 0.5, 7)
        waiting = client.submit(apps.pid)  # written into the busy worker's pipe behind the crash
        with pytest.raises(WorkerLost, match="exit code 7"):
            crashed.result(timeout=30)
        assert waiting.result(timeout=30) != crashed_pid  # it ran, once, on the fresh worker
        assert client.resolutions_ignored == 0


def test_a_task_that_cannot_be_unpacked_fails_alone_even_while_waiting_in_a_busy_worker_s_pipe(
    logs: Path,
) -> None:
    """The worker unpacks a task waiting in its pipe before the running one's result goes out:
    a payload that is not an apply message must fail as that task's error, nothing else."""
    with LocalCluster(1, workers=1, pipeline=1, log_dir=logs) as cluster, cluster.client() as client:
        worker = client.submit(apps.pid).result(timeout=30)
        slow = client.submit(apps.slow_where, 1, 0.5)
        bad = client.submit_payload(b"not an apply message")  # written behind the slow task
        after = client.submit(apps.pid)
        with pytest.raises(ValueError, match="not enough values to unpack"):
            bad.result(timeout=30)
        assert slow.result(timeout=30)[1] == 1
        assert after.result(timeout=30) == worker  # same worker process: nothing crashed
        assert client.resolutions_ignored == 0


def test_a_large_task_waits_for_an_idle_worker_rather_than_block_the_agent_writing_it_ahead(logs: Path) -> None:
    """A task written ahead into a busy worker's pipe is read when the running task ends: one
    larger than the pipe holds would block the agent in that write, sending no heartbeats (its
    node declared dead, a new incarnation). It waits in the agent's queue instead."""
    with LocalCluster(1, workers=1, pipeline=1, log_dir=logs) as cluster, cluster.client() as client:
        slow = client.submit(apps.slow_where, 1, 4.0)  # > heartbeat x liveness (1.5 s)
        big = client.submit(len, b"x" * 4_000_000)  # pipelined behind it, if it were small
        assert slow.result(timeout=60)[1] == 1
        assert big.result(timeout=60) == 4_000_000
        [node] = client.status().nodes
        assert (node.state, node.incarnation) == ("alive", 1)
        assert client.resolutions_ignored == 0


def test_invalid_node_name_is_rejected_with_a_clear_error(logs: Path) -> None:
    with LocalCluster(1, workers=1, log_dir=logs) as cluster, cluster.client() as client:
        future = client.submit(apps.square, 2, node="Not A Node")
        with pytest.raises(TaskRejected, match="not a valid Kubernetes node name"):
            future.result(timeout=30)


@pytest.mark.parametrize(("pipeline", "expected"), [(0, "aabbb"), (1, "aaabb")])
def test_sigterm_drains_an_agent_running_tasks_finish_queued_go_elsewhere(
    logs: Path, pipeline: int, expected: str
) -> None:
    """Running tasks finish on the draining node; queued ones go elsewhere. A task already written
    into a busy worker's pipe (``pipeline``) counts as running."""
    with LocalCluster(2, workers=1, prefetch=4, pipeline=pipeline, log_dir=logs) as cluster, cluster.client() as client:
        a, b = cluster.node_names
        futures = [client.submit(apps.slow_where, i, 0.5, node=a, rank=i) for i in range(5)]
        futures[0].result(timeout=30)  # task 1 started before task 0's result left the agent
        cluster.kill_agent(a, signal.SIGTERM)
        assert cluster.agents[a].wait(timeout=20) == 0
        results = [f.result(timeout=30) for f in futures]
        assert client.resolutions_ignored == 0
    assert [x for _, x, _ in results] == list(range(5))
    assert [node for node, _, _ in results] == [{"a": a, "b": b}[c] for c in expected]


def test_dispatcher_restart_agents_reregister_and_client_resends(logs: Path) -> None:
    with LocalCluster(2, workers=1, log_dir=logs, heartbeat_interval_s=0.2) as cluster, cluster.client() as client:
        before = [client.submit(apps.slow_where, i, 0.05, node=cluster.node_names[i % 2], rank=i) for i in range(40)]
        time.sleep(0.3)
        client_port = int(cluster.client_url.rsplit(":", 1)[1])
        agent_port = int(cluster.agent_url.rsplit(":", 1)[1])
        cluster.kill_dispatcher(signal.SIGKILL)
        cluster.start_dispatcher(client_port, agent_port)
        after = [client.submit(apps.square, i, node=cluster.node_names[i % 2]) for i in range(20)]
        assert [f.result(timeout=60) for f in after] == [i * i for i in range(20)]
        assert [f.result(timeout=60)[1] for f in before] == list(range(40))
        assert client.resolutions_ignored == 0
        nodes = {n.node_name: n for n in client.nodes()}
    assert all(n.state == "alive" for n in nodes.values())


def test_status_command_prints_nodes_and_counters(logs: Path) -> None:
    with LocalCluster(2, workers=1, log_dir=logs) as cluster, cluster.client() as client:
        client.submit(apps.square, 3, node="local-1").result(timeout=30)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher",
                "status",
                "--dispatcher",
                cluster.client_url,
                "--keys",
                str(cluster.keys_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert "local-0" in out and "local-1" in out and "alive" in out
    assert "1 submitted, 1 resolved" in out


def test_status_json_is_one_object_and_watch_redraws_until_interrupted(logs: Path) -> None:
    import json

    with LocalCluster(2, workers=1, log_dir=logs) as cluster, cluster.client() as client:
        client.submit(apps.square, 3, node="local-1").result(timeout=30)
        base = [sys.executable, "-m", "dispatcher", "status", "--dispatcher", cluster.client_url,
                "--keys", str(cluster.keys_dir)]  # fmt: skip
        out = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
        status = json.loads(out)
        assert (status["tasks_submitted"], status["tasks_resolved"]) == (1, 1)
        assert {n["node_name"]: (n["state"], n["done"]) for n in status["nodes"]} == {
            "local-0": ("alive", 0),
            "local-1": ("alive", 1),
        }
        watch = subprocess.Popen([*base, "--watch", "--interval", "0.05"], stdout=subprocess.PIPE)
        try:
            assert watch.stdout is not None
            seen = b""
            while seen.count(b"\x1b[H\x1b[2J") < 3:  # three redraws of the table, each cleared first
                chunk = watch.stdout.read1(65536)
                assert chunk, "status --watch ended by itself"
                seen += chunk
            assert b"local-1" in seen and b"Ctrl-C to stop" in seen
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            watch.kill()
            watch.wait()


def test_status_command_fails_clearly_without_a_dispatcher() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dispatcher", "status", "--dispatcher", "tcp://127.0.0.1:9", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "no dispatcher answered at tcp://127.0.0.1:9" in proc.stderr


def test_local_cluster_leaves_nothing_running_even_after_a_child_was_killed(logs: Path) -> None:
    with LocalCluster(2, workers=2, log_dir=logs) as cluster:
        assert cluster.dispatcher is not None and cluster.zygote is not None
        pids = all_pids(cluster.dispatcher.pid) + all_pids(cluster.zygote.pid)  # the zygote's: workers
        for proc in cluster.agents.values():
            pids += all_pids(proc.pid)
        cluster.kill_agent("local-0", signal.SIGKILL)
    time.sleep(0.2)
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive


def test_local_command_serves_until_interrupted_and_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "--log-format", "json", "local", "--nodes", "2", "--speeds", "1,2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("dispatcher client URL: tcp://127.0.0.1:"), first
        url = first.split(": ", 1)[1].strip()
        proc.stdout.readline()  # the agent URL
        said = proc.stdout.readline()
        assert said.startswith("keys (removed at exit): "), said  # the embedded mode's ephemeral keys
        keys_dir = Path(said.split(": ", 1)[1].split()[0])
        assert keys_dir.stat().st_mode & 0o777 == 0o700
        descendants = all_pids(proc.pid)
        with Client(url, keys=keys_dir) as client:
            assert client.submit(apps.square, 7, node="local-1").result(timeout=30) == 49
            speeds = {n.node_name: n.speed for n in client.nodes()}
        assert speeds == {"local-0": 1.0, "local-1": 2.0}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not keys_dir.exists()
    time.sleep(0.2)
    alive = [p for p in descendants if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive


@pytest.mark.parametrize("soft", [True, False])
def test_soft_affinity_lets_an_idle_node_take_a_busy_node_s_work(soft: bool, logs: Path) -> None:
    from parsl.serialize import pack_apply_message

    with LocalCluster(2, workers=1, prefetch=3, log_dir=logs) as cluster, cluster.client() as client:
        busy, idle = cluster.node_names
        futures = [
            client.submit_payload(
                pack_apply_message(apps.slow_where, (i, 0.2), {}), node=busy, rank=float(i), soft_affinity=soft
            )
            for i in range(16)
        ]
        results = [f.result(timeout=60) for f in futures]
        assert client.resolutions_ignored == 0
        status = client.status()
    assert [x for _, x, _ in results] == list(range(16))
    ran = [node for node, _, _ in results]
    if soft:
        assert ran.count(idle) >= 4, ran  # 16 x 0.2 s on one node vs. sharing them
        assert ran[0] == busy  # the head of the line stays home
        assert status.tasks_stolen >= ran.count(idle)  # STATUS reports steals: each task idle ran was one
    else:
        assert set(ran) == {busy}
        assert status.tasks_stolen == 0
    assert status.duplicates_dropped == 0
