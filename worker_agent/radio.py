"""Parsl's monitoring radio over saga-dispatch's own channel, as HTEX's radio rides HTEX's.

With ``Config(monitoring=MonitoringHub(...))`` and resource monitoring on, Parsl wraps each app
so that the worker sends a message when the try starts and ends, and a process it forks from
the worker (the resource monitor) sends the task's CPU and memory every interval. Each of them
calls ``radio_config.create_sender()`` where it runs. :class:`DispatchRadio` is the config the
executor gives Parsl; its sender sends over the worker's pipe to the agent, which sends it to
the dispatcher (MONITOR), which passes it on unread to the task's client (MONITORED), which puts
it into the executor's ``monitoring_messages``: no UDP from the nodes, which a cluster's
NetworkPolicy would block.

Two senders, one pipe to the agent:

* In the worker process itself, a message is written to that pipe at once, under the lock the
  worker's results take too: a try's last message is on it before its result.
* A process forked from the worker (the resource monitor inherits this module's state, the
  current task included) writes each message as one record into an OS pipe of the worker's,
  non-blocking and at most ``PIPE_BUF`` bytes, so a write is atomic and takes no lock: a
  monitor killed at any moment leaves no lock held and no half record. A relay thread of the
  worker passes the records on. A full pipe (the agent not reading) drops the message instead of
  blocking the monitor, so the monitor can always exit. The monitor also gets the default
  SIGTERM back (the worker ignores it), so Parsl's ``terminate()`` of a stuck monitor works.
* Order: before the worker sends a message of its own, and when a task ends (before its
  result), it passes on whatever the forked processes wrote so far, under the lock the relay
  reads with. Parsl joins the monitor before the try's last message, so everything the monitor
  sent goes out before the last message, and that before the result.

A message's ``hostname`` is set to the node's name (the Kubernetes node, not the pod), so
Parsl's database says which node ran each try. Outside a saga-dispatch worker the sender has
nowhere to send and says so.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import threading
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any, Final

from parsl.monitoring.radios.base import MonitoringRadioReceiver, MonitoringRadioSender, RadioConfig
from parsl.utils import RepresentationMixin

from dispatcher.protocol import MAX_ID, MAX_MONITORING_BYTES, TaskKey
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.throttle import log_due
from worker_agent.pipe import MONITORING

log = get_logger("radio")

_HEADER: Final = struct.Struct("!IHQ")
"""A forked sender's record: body length, client id length, task id; then the client id and
the payload."""
RECORD_MAX_BYTES: Final = select.PIPE_BUF
"""The largest record a forked process writes: a pipe write this small is atomic."""


class _Channel:
    """The worker process's end of the radio: its pipe to the agent, the task it runs now, and
    (once a sender was made here) the OS pipe forked processes write into, with its relay."""

    def __init__(self, conn: Connection, lock: threading.Lock, node_name: str) -> None:
        self.owner = os.getpid()
        self.conn = conn
        self.lock = lock
        self.node_name = node_name
        self.key: TaskKey | None = None
        self.read_fd = -1
        self.write_fd = -1
        self._reading = threading.Lock()
        """Held while records are read from the OS pipe and passed on (relay, end, own sends)."""
        self._buffer = bytearray()
        self.dropped = 0

    def write(self, key: TaskKey, payload: bytes) -> None:
        with self.lock:
            self.conn.send((MONITORING, key[0], key[1], payload))

    def open_pipe(self) -> None:
        """The OS pipe forked processes write into, and its relay (in the worker process only)."""
        if self.read_fd >= 0:
            return
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        threading.Thread(target=self._relay, name="saga-radio-relay", daemon=True).start()

    def _relay(self) -> None:
        readable = select.poll()
        readable.register(self.read_fd, select.POLLIN)
        try:
            while True:
                readable.poll()
                with self._reading:
                    self._pass_on()
        except (EOFError, OSError):
            pass  # the pipe to the agent is gone: the worker is ending

    def _pass_on(self) -> None:
        """Read what forked processes wrote and send each whole record on (``_reading`` held)."""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        buffer = self._buffer
        while len(buffer) >= _HEADER.size:
            size, id_size, task_id = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break  # a writer is mid-way (it cannot be: records are atomic); the rest comes next
            body = bytes(buffer[_HEADER.size : end])
            del buffer[:end]
            self.write((body[:id_size].decode(), task_id), body[id_size:])

    def flush(self) -> None:
        """Pass on now what forked processes wrote so far (the next message or result follows it)."""
        if self.read_fd >= 0:
            with self._reading:
                self._pass_on()

    def send_own(self, key: TaskKey, payload: bytes) -> None:
        """A message from the worker process, after what its forked processes sent before it."""
        if self.read_fd < 0:
            self.write(key, payload)
            return
        with self._reading:
            self._pass_on()
            self.write(key, payload)

    def send_forked(self, key: TaskKey, payload: bytes) -> None:
        """A message from a process forked from the worker: one atomic, non-blocking record."""
        client_id = key[0].encode()
        body = client_id + payload
        record = _HEADER.pack(len(body), len(client_id), key[1]) + body
        if self.write_fd < 0 or len(client_id) > MAX_ID or len(record) > RECORD_MAX_BYTES:
            self._drop("too large for an atomic pipe write" if self.write_fd >= 0 else "no pipe")
            return
        try:
            os.write(self.write_fd, record)
        except BlockingIOError:
            self._drop("the worker's pipe is full (its agent is not reading)")

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if log_due(self.dropped):
            log.warning("radio_message_dropped", node=self.node_name, reason=why, dropped=self.dropped)


_channel: _Channel | None = None
"""Set in a saga-dispatch worker process (and inherited by what it forks)."""


def attach(conn: Connection, lock: threading.Lock, node_name: str) -> None:
    """Called once by the worker process: its pipe, and the lock its results take."""
    global _channel
    _channel = _Channel(conn, lock, node_name)


def begin(key: TaskKey) -> None:
    """The worker starts running ``key``: messages sent meanwhile belong to its client."""
    if _channel is not None:
        _channel.key = key


def end() -> None:
    """The worker finished its task: what its forked processes sent goes out before the result."""
    channel = _channel
    if channel is not None:
        channel.key = None
        channel.flush()


def on_node(message: object, node_name: str) -> object:
    """``message`` with its ``hostname`` set to the node's name (Parsl's messages are
    ``(MessageType, dict)``; anything else passes unchanged)."""
    if isinstance(message, tuple) and len(message) == 2 and isinstance(message[1], dict) and "hostname" in message[1]:
        return (message[0], {**message[1], "hostname": node_name})
    return message


class DispatchRadioSender(MonitoringRadioSender):
    def __init__(self) -> None:
        channel = _channel
        if channel is None:
            return
        if os.getpid() == channel.owner:
            channel.open_pipe()  # before Parsl forks the resource monitor from this process
        else:  # the monitor: Parsl's terminate() must be able to stop it (the worker ignores SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def send(self, message: object) -> None:
        channel = _channel
        if channel is None or channel.key is None:
            log.error("radio_unattached", reason="not in a saga-dispatch worker running a task: message dropped")
            return
        payload = pickle.dumps(on_node(message, channel.node_name))
        if len(payload) > MAX_MONITORING_BYTES:
            log.warning("radio_message_too_large", size=len(payload), limit=MAX_MONITORING_BYTES)
            return
        if os.getpid() == channel.owner:
            channel.send_own(channel.key, payload)
        else:
            channel.send_forked(channel.key, payload)


class DispatchRadioReceiver(MonitoringRadioReceiver):
    """Nothing to run: the executor's client receives the messages (``on_monitoring``)."""

    def shutdown(self) -> None:
        pass


class DispatchRadio(RadioConfig, RepresentationMixin):
    """The executor's default ``remote_monitoring_radio``: workers send over saga-dispatch."""

    def create_sender(self) -> MonitoringRadioSender:
        return DispatchRadioSender()

    def create_receiver(self, *, run_dir: str, resource_msgs: Queue[Any]) -> MonitoringRadioReceiver:  # noqa: ARG002
        return DispatchRadioReceiver()  # Parsl's signature; the executor's client receives
