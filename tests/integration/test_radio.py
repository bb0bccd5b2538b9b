"""The workers' monitoring radio (``worker_agent.radio``): what a task and the processes it
forks send reaches the worker's pipe, tagged with the task, ahead of the task's result, and no
forked sender can hang the worker."""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

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


def _forked_monitor(n: int, size: int = 0) -> None:
    """What Parsl's resource monitor does: a sender of its own, then messages, then exit."""
    sender = radio.DispatchRadio().create_sender()
    for i in range(n):
        sender.send(("resource", {"i": i, "hostname": "the-pod", "pad": "x" * size}))


def _fork(target: Callable[..., Any], *args: Any) -> int | None:
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(30)
    if child.exitcode is None:
        child.kill()
    return child.exitcode


def _read_all(conn: Connection) -> list[tuple[Any, ...]]:
    out = []
    while conn.poll(0):
        out.append(conn.recv())
    return out


def test_the_forked_monitor_s_messages_then_the_worker_s_last_then_the_result(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    """Parsl's order: first message, fork the monitor, join it, last message, result. Forced:
    the relay is held off (its read lock taken) while the monitor sends and the worker sends its
    last message; the last message must not overtake what the monitor sent."""
    worker_end, agent_end, lock = pipe
    channel = radio._channel
    assert channel is not None
    radio.begin(KEY)
    sender = radio.DispatchRadio().create_sender()
    sender.send(("first", {"hostname": "the-pod"}))
    assert pickle.loads(agent_end.recv()[3])[0] == "first"
    with channel._reading:
        assert _fork(_forked_monitor, 50) == 0
        last = threading.Thread(target=sender.send, args=(("last", {"hostname": "the-pod"}),))
        last.start()
        assert not agent_end.poll(0.3), "the worker's last message overtook its monitor's"
    last.join(30)
    radio.end()
    with lock:
        worker_end.send((KEY, "the result"))
    got = _read_all(agent_end)
    assert got[-1] == (KEY, "the result")
    assert all(m[:3] == (MONITORING, *KEY) for m in got[:-1])
    messages = [pickle.loads(m[3]) for m in got[:-1]]
    assert [m[1]["i"] for m in messages[:-1]] == list(range(50))
    assert messages[-1] == ("last", {"hostname": "node-a"})  # the node's name, not the pod's


def test_a_task_s_end_passes_on_what_its_monitor_sent_before_the_result(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    """Forced: the pipe's lock is held (nothing can be written to the agent), so ``end()``
    cannot return until it is released; then everything the monitor sent is on the pipe."""
    _, agent_end, lock = pipe
    radio.begin(KEY)
    radio.DispatchRadio().create_sender()  # made in the worker before the fork, as Parsl's wrapper does
    ended = threading.Event()
    with lock:
        assert _fork(_forked_monitor, 20) == 0  # it needs no lock of ours to send and exit
        ender = threading.Thread(target=lambda: (radio.end(), ended.set()))
        ender.start()
        assert not ended.wait(0.3), "end() returned while the monitor's messages could not be written"
    ender.join(30)
    assert ended.is_set()
    assert len(_read_all(agent_end)) == 20


def test_a_monitor_whose_worker_cannot_pass_messages_on_still_exits_dropping_them(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    """Forced: nothing reaches the agent while the lock is held, and the monitor sends more than
    the OS pipe holds. Its writes never block, so it exits; what did not fit is dropped."""
    _, agent_end, lock = pipe
    radio.begin(KEY)
    radio.DispatchRadio().create_sender()
    with lock:
        assert _fork(_forked_monitor, 2000, 1000) == 0  # ~2 MB into a 64 KiB pipe
    ender = threading.Thread(target=radio.end)  # it passes on what got through, as the agent reads
    ender.start()
    passed = 0
    while ender.is_alive() or agent_end.poll(0):
        if agent_end.poll(0.05):
            agent_end.recv()
            passed += 1
    assert 0 < passed < 2000


def _report_sigterm(to: Connection) -> None:
    radio.DispatchRadio().create_sender()
    to.send(signal.getsignal(signal.SIGTERM))


def test_a_forked_sender_gets_the_default_sigterm_back_so_parsl_can_terminate_a_stuck_monitor(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    radio.DispatchRadio().create_sender()
    ours, theirs = multiprocessing.Pipe()
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the worker has it
    try:
        assert _fork(_report_sigterm, theirs) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    assert ours.recv() == signal.SIG_DFL


def test_a_forked_message_too_large_for_one_atomic_write_is_dropped(
    pipe: tuple[Connection, Connection, threading.Lock],
) -> None:
    _, agent_end, _ = pipe
    radio.begin(KEY)
    radio.DispatchRadio().create_sender()
    assert _fork(_forked_monitor, 1, 8000) == 0  # one message over PIPE_BUF
    assert _fork(_forked_monitor, 1) == 0
    radio.end()
    [(tag, _, _, payload)] = _read_all(agent_end)
    assert tag == MONITORING and pickle.loads(payload)[1]["pad"] == ""


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
    assert tag == MONITORING and pickle.loads(payload) == ("small", {})


def test_only_parsl_s_message_shape_has_its_hostname_rewritten() -> None:
    assert radio.on_node(("t", {"hostname": "pod", "x": 1}), "node-a") == ("t", {"hostname": "node-a", "x": 1})
    assert radio.on_node(("t", {"x": 1}), "node-a") == ("t", {"x": 1})
    assert radio.on_node("text", "node-a") == "text"
