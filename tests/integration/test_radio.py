"""The workers' monitoring radio (``worker_agent.radio``): what a task and the processes it
forks send reaches the worker's pipe, tagged with the task, ahead of the task's result."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from worker_agent import radio
from worker_agent.pipe import MONITORING

pytestmark = [
    pytest.mark.integration,
    # Parsl forks its resource monitor from the worker, whose relay thread is running: so do we.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]

KEY = ("client-1", 7)


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection, threading.Lock]]:
    """The worker's end and the agent's end of a pipe, with the worker's channel on it."""
    agent_end, worker_end = multiprocessing.Pipe()
    lock = threading.Lock()
    radio.attach(worker_end, lock, "node-a")
    yield worker_end, agent_end, lock
    radio._channel = None
    agent_end.close()
    worker_end.close()


def _forked_monitor(n: int) -> None:
    """What Parsl's resource monitor does: a sender of its own, then messages, then exit."""
    sender = radio.DispatchRadio().create_sender()
    for i in range(n):
        sender.send(("resource", {"i": i, "hostname": "the-pod"}))


def _read_all(conn: Connection) -> list[tuple[object, ...]]:
    out = []
    while conn.poll(0):
        out.append(conn.recv())
    return out


def test_the_worker_s_and_its_forked_monitor_s_messages_precede_the_result(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    worker_end, agent_end, lock = pipe
    radio.begin(KEY)
    sender = radio.DispatchRadio().create_sender()  # the try's first message, as Parsl's wrapper sends it
    sender.send(("first", {"hostname": "the-pod"}))
    child = multiprocessing.get_context("fork").Process(target=_forked_monitor, args=(50,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    sender.send(("last", {"hostname": "the-pod"}))
    radio.end()
    with lock:
        worker_end.send((KEY, "the result"))
    got = _read_all(agent_end)
    assert got[-1] == (KEY, "the result")
    messages = [pickle.loads(m[3]) for m in got[:-1]]  # type: ignore[arg-type]
    assert all(m[:3] == (MONITORING, *KEY) for m in got[:-1])
    assert messages[0] == ("first", {"hostname": "node-a"})  # the node's name, not the pod's
    assert messages[-1] == ("last", {"hostname": "node-a"})
    assert sorted(m[1]["i"] for m in messages[1:-1]) == list(range(50))


def test_a_task_s_end_waits_for_the_relay_to_pass_on_what_its_monitor_sent(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    """Forced: the pipe's lock is held (the relay cannot write), so ``end()`` cannot return
    until it is released; then everything the monitor sent is on the pipe already."""
    _worker_end, agent_end, lock = pipe
    radio.begin(KEY)
    radio.DispatchRadio().create_sender()  # made in the worker before the fork, as Parsl's wrapper does
    ended = threading.Event()
    with lock:
        child = multiprocessing.get_context("fork").Process(target=_forked_monitor, args=(20,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        ender = threading.Thread(target=lambda: (radio.end(), ended.set()))
        ender.start()
        assert not ended.wait(0.3), "end() returned while the monitor's messages could not be written"
    ender.join(30)
    assert ended.is_set()
    assert len(_read_all(agent_end)) == 20


def test_a_sender_outside_a_running_task_drops_the_message_and_says_so(
    pipe: tuple[Connection, Connection, threading.Lock], caplog: pytest.LogCaptureFixture
) -> None:
    _, agent_end, _ = pipe
    radio.DispatchRadio().create_sender().send(("between tasks", {}))
    radio._channel = None
    radio.DispatchRadio().create_sender().send(("not a worker", {}))
    assert not agent_end.poll(0)
    assert caplog.text.count("radio_unattached") == 2


def test_a_message_too_large_for_the_wire_is_dropped_not_sent(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    _, agent_end, _ = pipe
    radio.begin(KEY)
    radio.DispatchRadio().create_sender().send(("huge", {"blob": b"x" * (2 * 1024 * 1024)}))
    radio.DispatchRadio().create_sender().send(("small", {}))
    [(tag, _, _, payload)] = _read_all(agent_end)
    assert tag == MONITORING and pickle.loads(payload) == ("small", {})  # type: ignore[arg-type]


def test_only_parsl_s_message_shape_has_its_hostname_rewritten() -> None:
    assert radio.on_node(("t", {"hostname": "pod", "x": 1}), "node-a") == ("t", {"hostname": "node-a", "x": 1})
    assert radio.on_node(("t", {"x": 1}), "node-a") == ("t", {"x": 1})
    assert radio.on_node("text", "node-a") == "text"
