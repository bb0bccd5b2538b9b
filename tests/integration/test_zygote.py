"""The worker zygote: one Parsl import for every node of a local cluster, workers tied to their agents."""

from __future__ import annotations

import contextlib
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

from dispatcher import LocalCluster, WorkerLost, local
from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from worker_agent.pipe import READY
from worker_agent.zygote import READY_LINE, ForkedWorker, ZygoteError

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def _start(path: str, parent: int) -> subprocess.Popen[bytes]:
    """A zygote as LocalCluster starts one, once it has said it is ready."""
    ready_r, ready_w = os.pipe()
    env = {**os.environ, PARENT_ENV: str(parent)}
    argv = [sys.executable, "-m", "worker_agent.zygote", path, str(ready_w)]
    proc = subprocess.Popen(argv, env=env, pass_fds=(ready_w,), start_new_session=True)
    os.close(ready_w)
    with os.fdopen(ready_r) as ready:
        assert ready.readline().strip() == READY_LINE
        assert ready.read() == ""  # EOF: the zygote has closed its end too (its descriptors are counted)
    return proc


@pytest.fixture
def zygote() -> Iterator[tuple[str, int]]:
    """A zygote of our own: its socket path and pid."""
    with tempfile.TemporaryDirectory(prefix="saga-zygote-") as folder:
        path = str(Path(folder) / "zygote.sock")
        proc = _start(path, os.getpid())
        try:
            yield path, proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_cluster_knows_the_zygote_s_ready_line() -> None:
    assert local.READY_LINE == READY_LINE  # two modules that must not import each other


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


def test_a_forked_worker_reports_how_it_ended(zygote: tuple[str, int]) -> None:
    worker = ForkedWorker(zygote[0], "node-a", 1.0)
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


def test_a_bad_request_leaves_the_zygote_serving_and_holding_nothing(zygote: tuple[str, int]) -> None:
    path, pid = zygote
    held = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    for garbage, with_fds in [
        (b"not json", False),
        (b"", False),  # no request at all
        (b"not json", True),
        (b'{"node_name": "x"}', True),  # no speed
        (b'{"node_name": "x", "speed": "fast"}', True),
    ]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            if with_fds:
                r, w = os.pipe()
                socket.send_fds(sock, [garbage], [r, w])
                os.close(r)
                os.close(w)
            else:
                sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            assert sock.recv(8) == b""  # refused: closed without a pid
    assert len(list(Path(f"/proc/{pid}/fd").iterdir())) == held  # the descriptors it was sent are closed
    worker = ForkedWorker(path, "node-a", 1.0)
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
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc = _start(str(tmp_path / "zygote.sock"), parent.pid)
    try:
        assert proc.poll() is None
        parent.kill()
        parent.wait()
        assert proc.wait(timeout=30) == 0
    finally:
        for p in (parent, proc):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_task_may_print_more_than_a_pipe_holds(logs: Path) -> None:
    """Forked workers write to the cluster's own stdout, as spawned ones did, not to a pipe nobody reads."""
    with LocalCluster(1, log_dir=logs) as cluster, cluster.client() as client:
        assert client.submit(apps.chatter, 1_000_000).result(timeout=60) == 1_000_000


def test_a_dead_worker_is_seen_even_while_a_grandchild_holds_its_pipes(logs: Path, tmp_path: Path) -> None:
    """The pool watches the worker's pidfd, not its pipes: a task's grandchild keeps those open."""
    pid_file = tmp_path / "grandchild"
    with LocalCluster(1, log_dir=logs) as cluster, cluster.client() as client:
        try:
            with pytest.raises(WorkerLost, match="exit code 5"):
                client.submit(apps.crash_leaving_grandchild, str(pid_file), 5).result(timeout=60)
            assert psutil.pid_exists(int(pid_file.read_text()))  # it still holds them
            assert client.submit(apps.square, 4).result(timeout=60) == 16  # on the replacement
        finally:
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
