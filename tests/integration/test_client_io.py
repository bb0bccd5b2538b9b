"""The Client's I/O thread owns its task table, and its death fails every future.

Findings of the structure review, each forced rather than hoped for: a re-pin racing a result
could put a resolved task back into the table (written from the caller's thread), so that it
never drained and ran again after a dispatcher restart; a dead I/O thread left every future
pending and ``submit()`` accepting work.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher import DispatcherUnavailable, LocalCluster, TaskCancelled
from dispatcher.client import Client

from . import apps

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


class Watched(dict[Any, Any]):
    """A dict that records the name of every thread that reads or writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def _seen(self) -> None:
        self.threads.add(threading.current_thread().name)


for _name in ("__getitem__", "__setitem__", "__delitem__", "__contains__", "__len__", "__iter__",
              "get", "pop", "values", "items", "keys", "clear", "setdefault"):  # fmt: skip

    def _watch(name: str) -> None:
        original = getattr(dict, name)

        def method(self: Watched, *args: Any) -> Any:
            self._seen()
            return original(self, *args)

        setattr(Watched, name, method)

    _watch(_name)


def _restart_dispatcher(cluster: LocalCluster, client: Client) -> None:
    """SIGKILL the dispatcher, start it on the same ports, and wait until the client is welcomed."""
    before = client.dispatcher_id
    client_port = int(cluster.client_url.rsplit(":", 1)[1])
    agent_port = int(cluster.agent_url.rsplit(":", 1)[1])
    cluster.kill_dispatcher(signal.SIGKILL)
    cluster.start_dispatcher(client_port, agent_port)
    deadline = time.monotonic() + 30
    while client.dispatcher_id == before:
        assert time.monotonic() < deadline, "the client was never welcomed by the new dispatcher"
        time.sleep(0.01)


def test_only_the_io_thread_touches_the_task_table(logs: Path) -> None:
    """Submits, re-pins while results flow, a cancel and a dispatcher restart: every access to the
    table comes from the I/O thread. (Before, ``submit()`` and ``repin()`` wrote it from the
    caller's thread, which is how a re-pin could resurrect a task whose result had just been popped.)"""
    with LocalCluster(2, workers=1, log_dir=logs, heartbeat_interval_s=0.2) as cluster, cluster.client() as client:
        table = client._tasks = Watched()
        a, b = cluster.node_names
        futures = [client.submit(apps.slow_where, i, 0.02, node=a, rank=i) for i in range(30)]
        futures[0].result(timeout=30)
        client.repin([(f, b, i) for i, f in enumerate(futures)])  # some resolved, some running, some queued
        doomed = client.submit(apps.square, 99, node="never-registers")  # waits: a cancel drops it
        client.cancel(doomed)
        _restart_dispatcher(cluster, client)
        results = [f.result(timeout=60) for f in futures]
        with pytest.raises(TaskCancelled):
            doomed.result(timeout=60)
        assert [x for _, x, _ in results] == list(range(30))
        assert client.outstanding == 0
        assert client.resolutions_ignored == 0
    assert table.threads == {client._thread.name}
    assert not table


def test_a_task_repinned_after_it_resolved_is_not_sent_again_after_a_restart(logs: Path) -> None:
    with LocalCluster(2, workers=1, log_dir=logs, heartbeat_interval_s=0.2) as cluster, cluster.client() as client:
        a, b = cluster.node_names
        done = client.submit(apps.square, 3, node=a)
        assert done.result(timeout=30) == 9
        client.repin([(done, b, 0.0)])  # a re-plan that was computed before the result came back
        assert client.status().tasks_submitted == 1  # the repin went out before this query did
        assert client.outstanding == 0
        _restart_dispatcher(cluster, client)
        assert client.status().tasks_submitted == 0  # nothing was re-sent to the new dispatcher


def test_a_dead_io_thread_fails_every_future_and_refuses_new_work(logs: Path) -> None:
    with LocalCluster(1, workers=1, log_dir=logs) as cluster, cluster.client() as client:
        running = client.submit(apps.slow_where, 0, 0.5)

        def injected(*_: object) -> None:
            raise RuntimeError("injected fault")

        client._handle = injected  # type: ignore[method-assign]  # the next message kills the I/O thread
        with pytest.raises(DispatcherUnavailable, match="I/O thread failed") as failed:
            running.result(timeout=30)
        assert isinstance(failed.value.__cause__, RuntimeError)
        with pytest.raises(DispatcherUnavailable, match="injected fault"):
            client.submit(apps.square, 1)
        assert client.outstanding == 0
        client._thread.join(timeout=30)
        assert not client._thread.is_alive()


def test_a_client_whose_io_thread_cannot_start_says_why() -> None:
    with pytest.raises(DispatcherUnavailable, match="I/O thread failed"):
        Client("bogus://nowhere", connect_timeout_s=60)


def test_a_restarted_dispatcher_s_several_welcomes_resend_the_unresolved_tasks_once() -> None:
    """A restarted dispatcher answers each frame sent before our HELLO with UNKNOWN_CLIENT, so the
    client says HELLO as often and is welcomed as often. Re-sending at every WELCOME handed it
    again a task it had resolved in between: run twice, resolved twice (chaos seed 0, once in CI).
    Forced here with a fake dispatcher: two UNKNOWN_CLIENTs, two WELCOMEs back to back, then a
    third UNKNOWN_CLIENT whose HELLO marks the end of what the client sent for them."""
    import zmq

    from dispatcher import protocol as p

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def recv(timeout_s: float = 10.0) -> tuple[bytes, p.Message]:
        assert router.poll(int(timeout_s * 1000)), "the client sent nothing"
        peer, frame = router.recv_multipart()
        return peer, p.decode(frame)

    def send(peer: bytes, message: p.Message) -> None:
        router.send_multipart([peer, p.encode(message)])

    first: list[tuple[bytes, p.Message]] = []

    def welcome() -> None:  # the client's constructor waits for its first WELCOME
        first.append(recv())
        send(first[0][0], p.Welcome("d1", 30.0))

    greeter = threading.Thread(target=welcome)
    greeter.start()
    with Client(f"tcp://127.0.0.1:{port}", heartbeat_interval_s=30.0, coalesce_s=0.0) as client:
        greeter.join()
        [(peer, hello)] = first
        assert isinstance(hello, p.Hello)
        future = client.submit_payload(b"x", node="node-a")
        _, submit = recv()
        assert isinstance(submit, p.Submit) and [t.task_id for t in submit.tasks] == [future.task_id]
        # d1 is gone; d2 saw two of our frames before our HELLO.
        unknown = p.Error(p.ErrorCode.UNKNOWN_CLIENT, "say HELLO first")
        send(peer, unknown)
        send(peer, unknown)
        assert [type(recv()[1]) for _ in range(2)] == [p.Hello, p.Hello]
        send(peer, p.Welcome("d2", 30.0))
        send(peer, p.Welcome("d2", 30.0))
        send(peer, unknown)  # its HELLO comes after whatever the two WELCOMEs made the client send
        seen = []
        while not isinstance(message := recv()[1], p.Hello):
            seen.append(message)
        resent = [t.task_id for m in seen if isinstance(m, p.Submit) for t in m.tasks]
        assert resent == [future.task_id], seen  # once, not once per WELCOME
        assert client.resends == 1
        send(peer, p.Resolved((p.Resolution(future.task_id, p.Outcome.REJECTED, b"no", "node-a"),)))
        with pytest.raises(Exception, match="no"):
            future.result(timeout=10)
        assert client.resolutions_ignored == 0
    router.close(0)
