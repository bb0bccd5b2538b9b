"""The standalone client: submit Python functions to a dispatcher and get futures back.

One background thread owns the DEALER socket (ZeroMQ sockets are not thread-safe); ``submit()``
only serializes the call the way Parsl's HTEX does and hands it to that thread through a deque
and a wake-up pipe, so it never blocks on the network.

Nagle's rule for frames (:func:`send_now`): a task posted when no result has come back since
the last frame is held (up to ``coalesce_s``, or until ``COALESCE_TASKS`` are held, or a result
comes back), so a stream of single submissions leaves in a few frames instead of one frame per
task. A lone task (nothing in flight: every earlier one came back) leaves at once.

Re-send on reconnect: every unresolved task is kept until it resolves. Whenever the dispatcher
welcomes us (after the first HELLO, after it restarted, or after it forgot our routing id), all
of them are sent again; the dispatcher ignores ids it already holds, and the first result wins
here too, so no task is lost and no future resolves twice.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Final, Self

import zmq

from dispatcher import protocol as p
from dispatcher.client.errors import DispatcherUnavailable, failure
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.sockets import drain

log = get_logger("client")

_BATCH_TASKS: Final = 2048
_BATCH_BYTES: Final = 8 * 1024 * 1024
COALESCE_TASKS: Final = 256
"""Held tasks that make a frame worth sending at once."""


def send_now(*, held: int, acked: bool, waited_s: float, coalesce_s: float) -> bool:
    """Nagle's rule for the ``held`` tasks posted and not yet sent: send them now, or hold on.

    Send when a result came back since the last frame (``acked``; also true before the first
    frame: with nothing in flight there is no stream to batch with, and latency matters), when
    enough are held for a frame, or when the oldest has waited ``coalesce_s``. Results coming
    back set the pace of a stream; a task submitted as a result arrives leaves with no delay."""
    return held == 0 or acked or held >= COALESCE_TASKS or waited_s >= coalesce_s


class TaskFuture(Future[Any]):
    """A future for one submitted task; ``node_name`` says where it ran once resolved."""

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id
        self.node_name: str | None = None
        self.runtime_s: float | None = None
        """Wall time of the function in its worker, once resolved."""


def settle(future: Future[Any], resolution: p.Resolution) -> None:
    """Resolve ``future`` from a dispatcher resolution: the value, the app's exception, or a failure."""
    if future.done():
        return
    from parsl.app.errors import RemoteExceptionWrapper  # Parsl only where results are unpacked
    from parsl.serialize import deserialize

    outcome = resolution.outcome
    try:
        if outcome is p.Outcome.OK:
            future.set_result(deserialize(resolution.payload))
            return
        if outcome is p.Outcome.APP_ERROR:
            wrapped = deserialize(resolution.payload)
            if isinstance(wrapped, RemoteExceptionWrapper):
                try:
                    wrapped.reraise()
                except BaseException as exc:  # reraise() always raises: that is how Parsl unwraps
                    future.set_exception(exc)
                return
            future.set_exception(wrapped if isinstance(wrapped, BaseException) else RuntimeError(repr(wrapped)))
            return
        future.set_exception(failure(outcome, resolution.task_id, resolution.payload, resolution.node_name))
    except Exception as exc:  # a payload we cannot deserialize must still end the future
        future.set_exception(exc)


class Client:
    """A connection to a dispatcher's client port.

    ``submit(fn, *args, node=None, rank=0, **kwargs)`` returns a :class:`concurrent.futures.Future`
    whose result is ``fn(*args, **kwargs)`` as run by a worker on ``node`` (any node if None);
    tasks on one node start in ``rank`` order. Futures also carry ``node_name`` once resolved.
    """

    def __init__(
        self,
        address: str,
        *,
        client_id: str | None = None,
        connect_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 1.0,
        coalesce_s: float = 0.001,
    ) -> None:
        """``coalesce_s``: how long a task posted when no result has come back since the last
        frame may wait to share a frame with the next ones (:func:`send_now`; 0: never)."""
        if not coalesce_s >= 0:
            raise ValueError(f"coalesce_s must be >= 0, got {coalesce_s!r}")
        self.address = address
        self.coalesce_s = coalesce_s
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self.heartbeat_interval_s = heartbeat_interval_s
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[TaskFuture, p.TaskSpec]] = {}
        self._outbox: deque[p.TaskSpec | p.Cancel | p.Repin | p.NodesQuery | p.StatusQuery] = deque()
        self._node_listeners: list[Callable[[p.NodeChanged], None]] = []
        self._restart_listeners: list[Callable[[str], None]] = []
        self._replies: dict[int, Future[p.Message]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_armed = False
        self._urgent = False
        """Something other than a task was posted: flush without holding."""
        # I/O thread only: a result came back since the last frame (or none was sent yet), and
        # when the oldest held task was first held.
        self._acked = True
        self._held_since: float | None = None
        self._closing = threading.Event()
        self._welcomed = threading.Event()
        self.dispatcher_id: str | None = None
        self.resolutions_ignored = 0
        """Resolutions for tasks already resolved (or never submitted): should stay 0."""
        self.submit_frames = 0
        """SUBMIT frames sent: tasks sent per frame is how well submissions were batched."""
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._thread = threading.Thread(target=self._run, name=f"saga-client-{self.client_id}", daemon=True)
        self._thread.start()
        if not self._welcomed.wait(connect_timeout_s):
            self.close()
            raise DispatcherUnavailable(f"no dispatcher answered at {address} within {connect_timeout_s:g} s")

    # ------------------------------------------------------------------ public API

    def submit(
        self, fn: Callable[..., Any], *args: Any, node: str | None = None, rank: float = 0.0, **kwargs: Any
    ) -> TaskFuture:
        from parsl.serialize import pack_apply_message  # Parsl only where calls are packed

        return self.submit_payload(pack_apply_message(fn, args, kwargs), node=node, rank=rank)

    def submit_payload(
        self,
        payload: bytes,
        *,
        node: str | None = None,
        rank: float = 0.0,
        retry_on_node_loss: bool = True,
        soft_affinity: bool = False,
    ) -> TaskFuture:
        """Submit an already-packed Parsl apply message (what the Parsl executor does).

        ``retry_on_node_loss=False``: if the node dies while running it, fail with NodeLost
        instead of running it again elsewhere. ``soft_affinity=True``: an idle node may take it
        from its busy node when that finishes it sooner."""
        if self._closing.is_set():
            raise DispatcherUnavailable("client is closed")
        task_id = next(self._ids)
        future = TaskFuture(task_id)
        flags = (0 if retry_on_node_loss else p.NO_RETRY_ON_NODE_LOSS) | (p.SOFT_AFFINITY if soft_affinity else 0)
        spec = p.TaskSpec(task_id, node, float(rank), payload, flags)
        self._pending[task_id] = (future, spec)
        self._post(spec)
        return future

    def cancel(self, future: TaskFuture) -> None:
        """Ask the dispatcher to drop the task if it has not started (it then fails TaskCancelled)."""
        self._post(p.Cancel((future.task_id,)))

    def repin(self, placements: Sequence[tuple[TaskFuture, str | None, float]]) -> None:
        """Move tasks that are still queued to a new node and rank (after a re-plan)."""
        moves = tuple(p.Placement(f.task_id, node, float(rank)) for f, node, rank in placements)
        for future, node, rank in placements:
            entry = self._pending.get(future.task_id)
            if entry is not None:  # a re-send after a restart must carry the new placement
                self._pending[future.task_id] = (entry[0], entry[1]._replace(node_name=node, rank=float(rank)))
        if moves:
            self._post(p.Repin(moves))

    def on_node_change(self, listener: Callable[[p.NodeChanged], None]) -> None:
        """Call ``listener`` (on the client's I/O thread; keep it short) whenever a node changes state."""
        self._node_listeners.append(listener)

    def on_dispatcher_restart(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(new_dispatcher_id)`` (on the I/O thread) when the dispatcher comes back empty."""
        self._restart_listeners.append(listener)

    def nodes(self, timeout_s: float = 10.0) -> tuple[p.NodeInfo, ...]:
        reply = self._ask(p.NodesQuery, timeout_s)
        assert isinstance(reply, p.Nodes)
        return reply.nodes

    def status(self, timeout_s: float = 10.0) -> p.Status:
        reply = self._ask(p.StatusQuery, timeout_s)
        assert isinstance(reply, p.Status)
        return reply

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet resolved."""
        return len(self._pending)

    def close(self) -> None:
        """Stop the I/O thread; futures still pending fail with DispatcherUnavailable."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        for task_id, (future, _) in list(self._pending.items()):
            if not future.done():
                future.set_exception(DispatcherUnavailable(f"client closed before task {task_id} resolved"))
        self._pending.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ caller side

    def _post(self, item: p.TaskSpec | p.Cancel | p.Repin | p.NodesQuery | p.StatusQuery) -> None:
        if type(item) is not p.TaskSpec:
            self._urgent = True  # before the append: the I/O thread clears it before draining
        outbox = self._outbox
        outbox.append(item)
        if not self._wake_armed:
            self._wake_armed = True
            self._wake()
        elif self._urgent or len(outbox) == COALESCE_TASKS:
            self._wake()  # the I/O thread may be holding tasks: this cannot wait

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _ask(self, query: type[p.NodesQuery | p.StatusQuery], timeout_s: float) -> p.Message:
        request_id = next(self._ids)
        reply: Future[p.Message] = Future()
        self._replies[request_id] = reply
        self._post(query(request_id))
        try:
            return reply.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise DispatcherUnavailable(f"dispatcher at {self.address} did not answer in {timeout_s:g} s") from exc
        finally:
            self._replies.pop(request_id, None)

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME_BYTES)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        hello = p.encode(p.Hello(self.client_id))
        sock.send(hello)
        last_sent = time.monotonic()
        try:
            while not self._closing.is_set():
                timeout_s = self.heartbeat_interval_s
                if self._held_since is not None:  # holding tasks: wake when they are due
                    timeout_s = min(timeout_s, max(self._held_since + self.coalesce_s - time.monotonic(), 0.0))
                ready = dict(poller.poll(math.ceil(timeout_s * 1000)))
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if sock in ready:
                    self._receive(sock)
                if self._welcomed.is_set() and self._flush(sock):
                    last_sent = time.monotonic()
                if time.monotonic() - last_sent >= self.heartbeat_interval_s:
                    # Before the welcome, repeat HELLO (the dispatcher may not be up yet).
                    sock.send(p.encode(p.Heartbeat()) if self._welcomed.is_set() else hello)
                    last_sent = time.monotonic()
        except Exception:
            log.exception("client_io_failed", client_id=self.client_id)
        finally:
            sock.close(linger=0)

    def _flush(self, sock: zmq.Socket[bytes]) -> bool:
        """Send what callers posted — tasks in Submit batches, the rest as they are — unless only
        tasks are posted and Nagle's rule (:func:`send_now`) says to hold them a little longer."""
        outbox = self._outbox
        if not outbox:
            self._wake_armed = False
            return False
        urgent, self._urgent = self._urgent, False
        if not urgent:
            now = time.monotonic()
            if self._held_since is None:
                self._held_since = now
            if not send_now(
                held=len(outbox), acked=self._acked,
                waited_s=now - self._held_since, coalesce_s=self.coalesce_s,
            ):  # fmt: skip
                return False  # posts stay armed (no wake-ups) until then
        self._held_since = None
        self._wake_armed = False
        sent = False
        batch: list[p.TaskSpec] = []
        size = 0
        while outbox:
            item = outbox.popleft()
            if isinstance(item, p.TaskSpec):
                batch.append(item)
                size += len(item.payload)
                if len(batch) >= _BATCH_TASKS or size >= _BATCH_BYTES:
                    self._send_tasks(sock, batch)
                    batch, size = [], 0
            else:
                if batch:  # keep the order: a Cancel or Repin may name tasks of this batch
                    self._send_tasks(sock, batch)
                    batch, size = [], 0
                sock.send(p.encode(item))
            sent = True
        if batch:
            self._send_tasks(sock, batch)
        return sent

    def _send_tasks(self, sock: zmq.Socket[bytes], batch: list[p.TaskSpec]) -> None:
        sock.send(p.encode(p.Submit(tuple(batch))))
        self._acked = False
        self.submit_frames += 1

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        for frame in drain(sock, sock.recv):
            try:
                message = p.decode(frame)
            except p.ProtocolError as exc:
                log.warning("bad_frame", client_id=self.client_id, reason=str(exc))
                continue
            if type(message) is p.Resolved:
                pending = self._pending
                for resolution in message.results:
                    entry = pending.pop(resolution.task_id, None)
                    if entry is None:
                        self.resolutions_ignored += 1
                    else:
                        self._acked = True
                        entry[0].node_name = resolution.node_name
                        entry[0].runtime_s = resolution.runtime_s
                        settle(entry[0], resolution)
            elif type(message) is p.Welcome:
                self._welcome(message)
            elif type(message) is p.Error:
                self._error(sock, message)
            elif type(message) is p.NodeChanged:
                for listener in self._node_listeners:
                    try:
                        listener(message)
                    except Exception:
                        log.exception("node_listener_failed", node=message.node_name)
            elif isinstance(message, p.Nodes | p.Status):
                reply = self._replies.get(message.request_id)
                if reply is not None and not reply.done():
                    reply.set_result(message)

    def _welcome(self, message: p.Welcome) -> None:
        again = self._welcomed.is_set()
        if again or self.dispatcher_id is not None:
            # Re-send everything unresolved, ahead of anything newly posted; duplicates are ignored.
            resend = [spec for _, spec in list(self._pending.values())]
            self._outbox.extendleft(reversed(resend))
            self._urgent = True
            log.info(
                "client_resending",
                client_id=self.client_id,
                tasks=len(resend),
                restarted=message.dispatcher_id != self.dispatcher_id,
            )
        restarted = self.dispatcher_id is not None and message.dispatcher_id != self.dispatcher_id
        self.dispatcher_id = message.dispatcher_id
        self._welcomed.set()
        if restarted:
            for listener in self._restart_listeners:
                try:
                    listener(message.dispatcher_id)
                except Exception:
                    log.exception("restart_listener_failed")

    def _error(self, sock: zmq.Socket[bytes], message: p.Error) -> None:
        if message.code is p.ErrorCode.UNKNOWN_CLIENT:
            sock.send(p.encode(p.Hello(self.client_id)))
        else:
            log.error("dispatcher_error", client_id=self.client_id, code=message.code.name, message=message.message)
