"""The worker process: run one Parsl apply message at a time, as HTEX's workers do.

Tasks arrive over a pipe as ``(key, payload)``; the reply is ``(key, outcome, bytes, runtime_s)``
with the result serialized by ``parsl.serialize`` or the exception wrapped in
``RemoteExceptionWrapper``, so any Parsl app runs unchanged and its exceptions re-raise on the
submit side. The message is unpacked with ``parsl.serialize.unpack_apply_message`` and the
function called directly: ``parsl.executors.execute_task`` does the same through an ``exec`` of
a generated line, which compiles that line for every task.

When the agent has written the next task into the pipe while this one ran (pipelining), it is
read and unpacked before this one's result goes out: sending wakes the agent, which on a busy
machine may take the core before the next task starts (benchmark 3's gap between tasks: 189 ->
150 us median, 410 -> 280 us p90).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import serialize, unpack_apply_message

from dispatcher.protocol import Outcome
from dispatcher.runtime.lifeline import die_with_parent_thread
from worker_agent import radio
from worker_agent.config import NODE_NAME_ENV, NODE_SPEED_ENV
from worker_agent.pipe import READY

PREPARE_MAX_BYTES = 64 * 1024
"""A waiting task is unpacked before the previous result is sent only up to this size: a large
argument would take longer to deserialize than the wake-up it saves."""

Call = tuple[Any, Any, Any] | BaseException
"""An unpacked apply message ``(fn, args, kwargs)``, or why it could not be unpacked."""


def unpack(payload: bytes) -> Call:
    """Unpack an apply message (as ``parsl.executors.execute_task`` does); never raises."""
    try:
        fn, args, kwargs = unpack_apply_message(payload)
    except Exception as exc:
        return exc
    return fn, args, kwargs


def _call(call: Call) -> Any:
    if isinstance(call, BaseException):
        raise call  # unpacking failed: the task fails with that error
    fn, args, kwargs = call
    return fn(*args, **kwargs)


def run(call: Call) -> tuple[Outcome, bytes]:
    """Call an unpacked apply message; never raises for the app's sake."""
    try:
        return Outcome.OK, serialize(_call(call), buffer_threshold=1_000_000)
    except Exception:
        return Outcome.APP_ERROR, serialize(RemoteExceptionWrapper(*sys.exc_info()))


def worker_main(conn: Connection, node_name: str, speed: float, *, tied: bool = False) -> None:
    """Entry point of a worker process, spawned by the pool or forked by a zygote (``tied``: its
    life is already tied to the agent's, see :mod:`worker_agent.zygote`)."""
    if not tied:
        os.environ["SAGA_DISPATCH_PARENT_PID"] = str(os.getppid())
        die_with_parent_thread(signal.SIGKILL)
    # The agent decides when workers stop (it drains first); a group-wide SIGTERM or Ctrl-C must
    # not kill a running task. If the agent dies, PR_SET_PDEATHSIG (or, forked, the zygote's
    # pidfd lifeline) kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ[NODE_NAME_ENV] = node_name
    os.environ[NODE_SPEED_ENV] = repr(speed)
    sending = threading.Lock()  # results and the monitoring radio's messages share the pipe
    radio.attach(conn, sending, node_name)
    conn.send((READY, os.getpid()))
    waiting = select.poll()  # cheaper than Connection.poll(0), which builds a selector per call
    waiting.register(conn.fileno(), select.POLLIN)
    try:
        message = conn.recv()
        prepared: Call | None = None
        while message is not None:
            key, payload = message
            call = prepared if prepared is not None else unpack(payload)
            radio.begin(key)
            started = time.perf_counter()  # the call and its result's serialization, not the unpacking
            outcome, data = run(call)
            runtime_s = time.perf_counter() - started
            radio.end()  # what the task's monitor sent goes out ahead of its result
            prepared = None
            if waiting.poll(0):  # the next task waits in the pipe: make it ready first (see above)
                message = conn.recv()
                if message is not None and len(message[1]) <= PREPARE_MAX_BYTES:
                    prepared = unpack(message[1])
                with sending:
                    conn.send((key, outcome, data, runtime_s))
            else:
                with sending:
                    conn.send((key, outcome, data, runtime_s))
                message = conn.recv()
    except (EOFError, OSError):
        return
