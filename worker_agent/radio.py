"""Parsl's monitoring radio over saga-dispatch's own channel, as HTEX's radio rides HTEX's.

With ``Config(monitoring=MonitoringHub(...))`` and resource monitoring on, Parsl wraps each app
so that the worker sends a message when the try starts and ends, and a process it forks from
the worker (the resource monitor) sends the task's CPU and memory every interval. Each of them
calls ``radio_config.create_sender()`` where it runs. :class:`DispatchRadio` is the config the
executor gives Parsl; its sender sends over the worker's pipe to the agent, which sends it to
the dispatcher (MONITOR), which passes it on unread to the task's client (MONITORED), which puts
it into the executor's ``monitoring_messages``: no UDP from the nodes, which a cluster's
NetworkPolicy would block, and the same CurveZMQ keys as the tasks.

Two senders, one pipe:

* In the worker process itself, a message is written to the pipe at once, under the lock the
  worker's results take too: a try's last message is on the pipe before its result.
* In the resource monitor (forked from the worker, so it inherits this module's state, the
  current task included), a message goes into a ``multiprocessing`` queue, and a relay thread of
  the worker writes it to the pipe. When a task ends, the worker flushes the queue before it
  sends the result (:meth:`_Channel.end`): the monitor has exited by then (Parsl joins it), so
  everything it sent is in the queue ahead of the flush marker. A monitor killed mid-write can
  break the queue, never the pipe: the relay then stops and the results go on.

A message's ``hostname`` is set to the node's name (the Kubernetes node, not the pod), so
Parsl's database says which node ran each try. Outside a saga-dispatch worker the sender has
nowhere to send and says so.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any, Final

from parsl.monitoring.radios.base import MonitoringRadioReceiver, MonitoringRadioSender, RadioConfig
from parsl.utils import RepresentationMixin

from dispatcher.protocol import MAX_MONITORING_BYTES, TaskKey
from dispatcher.runtime.logs import get_logger
from worker_agent.pipe import MONITORING

log = get_logger("radio")

FLUSH_TIMEOUT_S: Final = 5.0
"""How long a task's end waits for the relay to pass on what its resource monitor sent."""


class _Flush:
    """The marker a task's end puts into the queue; the relay answers when it reaches it."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class _Channel:
    """The worker process's end of the radio: its pipe to the agent, the task it runs now, and
    (once a sender was made here) the queue and relay for the processes it forks."""

    def __init__(self, conn: Connection, lock: threading.Lock, node_name: str) -> None:
        self.owner = os.getpid()
        self.conn = conn
        self.lock = lock
        self.node_name = node_name
        self.key: TaskKey | None = None
        self.queue: Queue[Any] | None = None
        self._relay: threading.Thread | None = None
        self._flushes = 0
        self._flushed = 0
        self._cond = threading.Condition()

    def write(self, key: TaskKey, payload: bytes) -> None:
        with self.lock:
            self.conn.send((MONITORING, key[0], key[1], payload))

    def open_queue(self) -> None:
        """The queue forked processes send through, and its relay (in the worker process only)."""
        if self.queue is None:
            self.queue = multiprocessing.get_context("fork").Queue()
            self._relay = threading.Thread(target=self._relay_loop, name="saga-radio-relay", daemon=True)
            self._relay.start()

    def _relay_loop(self) -> None:
        assert self.queue is not None
        try:
            while True:
                item = self.queue.get()
                if isinstance(item, _Flush):
                    with self._cond:
                        self._flushed = item.n
                        self._cond.notify_all()
                    continue
                key, payload = item
                self.write(key, payload)
        except (EOFError, OSError):
            pass  # the pipe to the agent is gone: the worker is ending
        except Exception:  # e.g. a monitor killed mid-write broke the queue: results go on
            log.exception("radio_relay_failed", node=self.node_name)
        finally:
            with self._cond:
                self._cond.notify_all()  # a flush waiting for a relay that is gone waits no more

    def begin(self, key: TaskKey) -> None:
        self.key = key

    def end(self) -> None:
        """The task ended: what its forked processes sent goes out before its result."""
        self.key = None
        if self.queue is None or self._relay is None or not self._relay.is_alive():
            return
        self._flushes += 1
        n = self._flushes
        self.queue.put(_Flush(n))
        with self._cond:
            if not self._cond.wait_for(lambda: self._flushed >= n or not self._relay_alive(), FLUSH_TIMEOUT_S):
                log.warning("radio_flush_slow", node=self.node_name, waited_s=FLUSH_TIMEOUT_S)

    def _relay_alive(self) -> bool:
        return self._relay is not None and self._relay.is_alive()


_channel: _Channel | None = None
"""Set in a saga-dispatch worker process (and inherited by what it forks)."""


def attach(conn: Connection, lock: threading.Lock, node_name: str) -> None:
    """Called once by the worker process: its pipe, and the lock its results take."""
    global _channel
    _channel = _Channel(conn, lock, node_name)


def begin(key: TaskKey) -> None:
    """The worker starts running ``key``: messages sent meanwhile belong to its client."""
    if _channel is not None:
        _channel.begin(key)


def end() -> None:
    """The worker finished its task (before it sends the result)."""
    if _channel is not None:
        _channel.end()


def on_node(message: object, node_name: str) -> object:
    """``message`` with its ``hostname`` set to the node's name (Parsl's messages are
    ``(MessageType, dict)``; anything else passes unchanged)."""
    if isinstance(message, tuple) and len(message) == 2 and isinstance(message[1], dict) and "hostname" in message[1]:
        return (message[0], {**message[1], "hostname": node_name})
    return message


class DispatchRadioSender(MonitoringRadioSender):
    def __init__(self) -> None:
        channel = _channel
        if channel is not None and os.getpid() == channel.owner:
            channel.open_queue()  # before Parsl forks the resource monitor from this process

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
            channel.write(channel.key, payload)
        elif channel.queue is not None:
            channel.queue.put((channel.key, payload))
        else:
            log.error("radio_unattached", reason="forked before the worker made a sender: message dropped")


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
