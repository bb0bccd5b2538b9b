"""The worker zygote: one Parsl import for every node of a local cluster, workers tied to their agents."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dispatcher import LocalCluster
from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from worker_agent.pipe import READY
from worker_agent.zygote import READY_LINE, ForkedWorker, ZygoteError

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


@pytest.fixture
def zygote() -> Iterator[str]:
    """A zygote of our own (as LocalCluster starts one): its socket path."""
    with tempfile.TemporaryDirectory(prefix="saga-zygote-") as folder:
        path = str(Path(folder) / "zygote.sock")
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker_agent.zygote", path], stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().decode().strip() == READY_LINE
            yield path
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]


def test_every_node_s_worker_is_forked_from_the_one_zygote(logs: Path) -> None:
    with LocalCluster(3, log_dir=logs) as cluster, cluster.client() as client:
        assert cluster.zygote is not None
        pids = {node: client.submit(apps.pid, node=node).result(timeout=30) for node in cluster.node_names}
        parents = {node: psutil.Process(pid).ppid() for node, pid in pids.items()}
        assert parents == dict.fromkeys(cluster.node_names, cluster.zygote.pid)
        ran_on = {node: client.submit(apps.where, 1, node=node).result(timeout=30)[0] for node in cluster.node_names}
        assert ran_on == {node: node for node in cluster.node_names}  # each worker knows its own node


def test_a_forked_worker_dies_with_its_agent(logs: Path) -> None:
    with LocalCluster(2, log_dir=logs) as cluster, cluster.client() as client:
        worker = psutil.Process(client.submit(apps.pid, node="local-0").result(timeout=30))
        other = psutil.Process(client.submit(apps.pid, node="local-1").result(timeout=30))
        os.kill(cluster.agents["local-0"].pid, signal.SIGKILL)  # the agent alone, not its group
        cluster.agents["local-0"].wait()
        gone, _ = psutil.wait_procs([worker], timeout=30)
        assert gone == [worker]
        assert other.is_running()  # the other agent's worker is untouched
        assert client.submit(apps.where, 2, node="local-1").result(timeout=30)[:2] == ("local-1", 2)


def test_a_forked_worker_reports_how_it_ended(zygote: str) -> None:
    worker = ForkedWorker(zygote, "node-a", 1.0)
    try:
        assert worker.conn.recv() == (READY, worker.pid)
        assert worker.is_alive() and worker.exitcode is None
        worker.kill()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert worker.exitcode == -signal.SIGKILL
    finally:
        worker.conn.close()
        worker.close()


def test_a_bad_request_leaves_the_zygote_serving(zygote: str) -> None:
    for garbage in (b"not json", b'{"node_name": "x"}', b""):  # no descriptors, or no request at all
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(zygote)
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            assert sock.recv(8) == b""  # refused: closed without a pid
    worker = ForkedWorker(zygote, "node-a", 1.0)
    try:
        assert worker.conn.recv() == (READY, worker.pid)
    finally:
        worker.kill()
        worker.join(timeout=30)
        worker.conn.close()
        worker.close()


def test_the_pool_spawns_its_workers_when_the_zygote_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(ZygoteError, match="did not fork a worker"):
        ForkedWorker(str(tmp_path / "nobody.sock"), "node-a", 1.0)
    script = f"""
from worker_agent.pool import WorkerPool
with WorkerPool(1, "node-a", 1.0, zygote={str(tmp_path / "nobody.sock")!r}) as pool:
    assert pool.wait_ready(60)
    print(pool.idle, type(pool._workers[0].process).__name__)
"""  # in a child: a spawning pool leaves multiprocessing's resource tracker behind in its process
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1", "SpawnProcess"]
    assert "zygote_unavailable" in out.stderr


def test_the_zygote_exits_with_its_parent(tmp_path: Path) -> None:
    path = str(tmp_path / "zygote.sock")
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {**os.environ, PARENT_ENV: str(parent.pid)}
    proc = subprocess.Popen([sys.executable, "-m", "worker_agent.zygote", path], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().decode().strip() == READY_LINE
        assert proc.poll() is None
        parent.kill()
        parent.wait()
        assert proc.wait(timeout=30) == 0
    finally:
        for p in (parent, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
        proc.stdout.close()  # type: ignore[union-attr]
