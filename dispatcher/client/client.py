"""The standalone client: submit Python functions to a dispatcher and get futures back.

One background thread, the I/O thread, owns the DEALER socket (ZeroMQ sockets are not
thread-safe) and the task table: which tasks are unresolved, with the spec to re-send and the
future to settle. Callers never touch either. ``submit()`` only serializes the call the way
Parsl's HTEX does and posts it to the :class:`~dispatcher.client.outbox.Outbox` (one lock, one
wake-up rule), so it never blocks on the network; ``repin()`` and ``cancel()`` are posts too, so
a re-plan can never put a task that just resolved back into the table.

If the I/O thread dies, every unresolved future fails with DispatcherUnavailable naming why,
and ``submit()`` raises from then on: nothing waits for a thread that is gone.

Nagle's rule for frames (:func:`send_now`): a task posted when no result has come back since
the last frame is held (up to ``coalesce_s``, or until ``COALESCE_TASKS`` are held, or a result
comes back), so a stream of single submissions leaves in a few frames instead of one frame per
task. A lone task (nothing in flight: every earlier one came back) leaves at once.

Re-send on reconnect: every unresolved task is kept until it resolves. Whenever the dispatcher
welcomes us (after the first HELLO, after it restarted, or after it forgot our routing id), all
of them are sent again; the dispatcher ignores ids it already holds, and the first result wins
here too, so no task is lost and no future resolves twice.

Keys (``keys=DIR`` or ``SAGA_KEYS``): the socket is a CURVE client with the client pair of
``DIR`` (``client-NAME`` with ``key_name``), pinning the dispatcher's public key. A dispatcher
that refuses the key fails every future with :class:`AccessRefused`; without keys, a
non-loopback address is refused unless ``insecure=True`` (``runtime.exposure``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final, NamedTuple, Self

import zmq

from dispatcher import protocol as p
from dispatcher.client.errors import AccessRefused, DispatcherUnavailable, TaskCancelled, failure
from dispatcher.client.outbox import Outbox
from dispatcher.runtime import exposure
from dispatcher.runtime import keys as k
from dispatcher.runtime.curve import KEY_REFUSED, KEYS_REQUIRED, HandshakeWatch, use_curve
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.sockets import drain, send_parts
from dispatcher.runtime.versions import runtime_versions

log = get_logger("client")

_BATCH_TASKS: Final = 2048
_BATCH_BYTES: Final = 8 * 1024 * 1024
COALESCE_TASKS: Final = 256
"""Held tasks that make a frame worth sending at once."""
MAX_PAYLOAD: Final = p.MAX_FRAME_BYTES - 64 * 1024
"""The largest payload that fits a SUBMIT frame (a larger one resolves REJECTED here: the
dispatcher's ZeroMQ would drop the frame, and the connection with it)."""
RECONNECT_IVL_MAX_MS: Final = 5000
"""libzmq's reconnects back off up to this, so a refused key is not retried ten times a second."""


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
    """Resolve ``future`` from a dispatcher resolution: the value, the app's exception, or a
    failure. A future its owner cancelled meanwhile stays cancelled."""
    with contextlib.suppress(InvalidStateError):
        _settle(future, resolution)


def _settle(future: Future[Any], resolution: p.Resolution) -> None:
    if future.done():
        return
    from parsl.app.errors import RemoteExceptionWrapper  # Parsl only where results are unpacked
    from parsl.serialize import deserialize

    outcome, payload = resolution.outcome, bytes(resolution.payload)  # bytes already: frames are read as bytes here
    try:
        if outcome is p.Outcome.OK:
            future.set_result(deserialize(payload))
            return
        if outcome is p.Outcome.APP_ERROR:
            wrapped = deserialize(payload)
            if isinstance(wrapped, RemoteExceptionWrapper):
                try:
                    wrapped.reraise()
                except BaseException as exc:  # reraise() always raises: that is how Parsl unwraps
                    future.set_exception(exc)
                return
            future.set_exception(wrapped if isinstance(wrapped, BaseException) else RuntimeError(repr(wrapped)))
            return
        future.set_exception(failure(outcome, resolution.task_id, payload, resolution.node_name))
    except Exception as exc:  # a payload we cannot deserialize must still end the future
        future.set_exception(exc)


def _tell(listeners: Sequence[Callable[..., None]], *args: Any, failed: str, **fields: object) -> None:
    """Call each listener (on the I/O thread); one that raises is logged as ``failed``, not fatal."""
    for listener in listeners:
        try:
            listener(*args)
        except Exception:
            log.exception(failed, **fields)


class _Entry:
    """One unresolved task in the I/O thread's table: what to settle, what to re-send."""

    __slots__ = ("ahead", "cancelled", "future", "spec")

    def __init__(self, future: TaskFuture, spec: p.TaskSpec) -> None:
        self.future = future
        self.spec = spec
        """As submitted: its payload stays here until the task resolves (to re-send, or to answer a FETCH)."""
        self.ahead = 0
        """Its payload bytes sent with it, counted against the dispatcher's ``payload_window``."""
        self.cancelled = False
        """A cancel was asked for: after a dispatcher restart it is not re-sent but cancelled here."""


class _Task(NamedTuple):
    spec: p.TaskSpec
    future: TaskFuture


class _Query(NamedTuple):
    message: p.NodesQuery | p.StatusQuery
    reply: Future[p.Message]


_Posted = _Task | p.Cancel | p.Repin | _Query
"""What callers post to the I/O thread."""


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
        keys: str | os.PathLike[str] | None = None,
        key_name: str | None = None,
        insecure: bool = False,
    ) -> None:
        """``coalesce_s``: how long a task posted when no result has come back since the last
        frame may wait to share a frame with the next ones (:func:`send_now`; 0: never).
        ``keys``: the key folder (default ``SAGA_KEYS``); ``key_name``: use its ``client-NAME``
        pair instead of ``client``; ``insecure``: allow a keyless non-loopback address."""
        if not coalesce_s >= 0:
            raise ValueError(f"coalesce_s must be >= 0, got {coalesce_s!r}")
        folder = k.resolve_folder(keys)
        self.keys = k.for_client(folder, key_name) if folder is not None else None
        """The pair this client authenticates with, and the dispatcher key it pins (None: no CURVE)."""
        if exposure.check_connect(address, keyed=self.keys is not None, insecure=insecure):
            log.warning("insecure", address=address, warning=exposure.INSECURE_WARNING)
        self.address = address
        self.coalesce_s = coalesce_s
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self._versions = runtime_versions()
        """What packs its tasks (HELLO's ``versions``): tasks pinned to a node that differs are refused."""
        self.heartbeat_interval_s = heartbeat_interval_s
        self._ids = itertools.count(1)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already means "wake up"
        self._wake_lock = threading.Lock()
        self._outbox: Outbox[_Posted] = Outbox(self._wake, COALESCE_TASKS)
        self._node_listeners: tuple[Callable[[p.NodeChanged], None], ...] = ()
        self._restart_listeners: tuple[Callable[[str], None], ...] = ()
        self._monitoring_listeners: tuple[Callable[[int, bytes], None], ...] = ()
        self._finished = 0
        """Tasks resolved (by the I/O thread): ``outstanding`` is the difference."""
        # The I/O thread's own state: nothing else reads or writes these.
        self._tasks: dict[int, _Entry] = {}
        self._replies: dict[int, Future[p.Message]] = {}
        self._acked = True
        """A result came back since the last SUBMIT frame (or none was sent yet)."""
        self._held_since: float | None = None
        """When Nagle's rule first held the tasks now waiting in the outbox."""
        self._forgotten = False
        """The dispatcher said it does not know us (UNKNOWN_CLIENT) since its last WELCOME: the
        next WELCOME re-sends what is unresolved, and only that one. A dispatcher that restarted
        answers every frame we sent before our HELLO with UNKNOWN_CLIENT, so we say HELLO several
        times and are welcomed as often; re-sending at each of them would hand it again a task it
        had resolved in between, to run and resolve a second time."""
        self.resends = 0
        """Times the unresolved tasks were sent again (after a restart, or being forgotten)."""
        self._window = 0
        """The dispatcher's ``payload_window`` (its last WELCOME; 0: no limit)."""
        self._ahead = 0
        """Payload bytes sent with their tasks, of the tasks unresolved: past the window, tasks go HELD."""
        self.held_sent = 0
        """Tasks sent HELD (their payload kept here until the dispatcher FETCHes it)."""
        self.payloads_fetched = 0
        """Payloads sent because a FETCH asked for them."""
        self._settling: list[tuple[TaskFuture, p.Resolution]] = []
        """Results taken from the table this turn, settled just before the next poll (``_settle``)."""
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
        if not self._welcomed.wait(connect_timeout_s) or self._outbox.closed:
            why = self._outbox.closed or f"no dispatcher answered at {address} within {connect_timeout_s:g} s"
            if self.keys is not None and not self._outbox.closed:
                why += " (with keys: does the dispatcher there hold the dispatcher.key this client pins?)"
            refused = self._outbox.closed is not None and self._outbox.closed.startswith(AccessRefused.PREFIX)
            self.close()
            raise (AccessRefused if refused else DispatcherUnavailable)(why)

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
        from its busy node when that finishes it sooner. Raises DispatcherUnavailable once the
        client is closed or its I/O thread has failed."""
        task_id = next(self._ids)
        future = TaskFuture(task_id)
        flags = (0 if retry_on_node_loss else p.NO_RETRY_ON_NODE_LOSS) | (p.SOFT_AFFINITY if soft_affinity else 0)
        self._outbox.put(_Task(p.TaskSpec(task_id, node, float(rank), payload, flags), future))
        return future

    def cancel(self, future: TaskFuture) -> None:
        """Ask the dispatcher to drop the task if it has not started (it then fails TaskCancelled)."""
        self._outbox.put(p.Cancel((future.task_id,)), urgent=True)

    def repin(self, placements: Sequence[tuple[TaskFuture, str | None, float]]) -> None:
        """Move tasks that are still queued to a new node and rank (after a re-plan). The I/O
        thread also records the new placement for a re-send after a restart, for the tasks still
        unresolved when it gets there."""
        moves = tuple(p.Placement(f.task_id, node, float(rank)) for f, node, rank in placements)
        if moves:
            self._outbox.put(p.Repin(moves), urgent=True)

    def on_node_change(self, listener: Callable[[p.NodeChanged], None]) -> None:
        """Call ``listener`` (on the client's I/O thread; keep it short) whenever a node changes state."""
        self._node_listeners = (*self._node_listeners, listener)

    def on_dispatcher_restart(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(new_dispatcher_id)`` (on the I/O thread) when the dispatcher comes back empty."""
        self._restart_listeners = (*self._restart_listeners, listener)

    def on_monitoring(self, listener: Callable[[int, bytes], None]) -> None:
        """Call ``listener(task_id, payload)`` (on the I/O thread; keep it short) for each Parsl
        monitoring message a worker running one of our tasks sent (MONITORED: the message
        pickled, as Parsl's radios send it). A task's messages come before its result."""
        self._monitoring_listeners = (*self._monitoring_listeners, listener)

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
        return max(0, self._outbox.posted_tasks - self._finished)  # two counters, read unlocked

    def close(self) -> None:
        """Stop the I/O thread; futures still pending fail with DispatcherUnavailable (the I/O
        thread fails them: it owns them)."""
        with self._wake_lock:
            if self._closing.is_set():
                return
            self._closing.set()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # stuck in a listener: refuse new work; it fails the rest when it returns
                log.error("client_io_stuck", client_id=self.client_id)
                self._outbox.close(f"client {self.client_id} closed")
        with self._wake_lock:
            wake_w, self._wake_w = self._wake_w, -1
        with contextlib.suppress(OSError):
            os.close(wake_w)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ caller side

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):  # the lock: never a write to a closed, reused fd
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _ask(self, query: type[p.NodesQuery | p.StatusQuery], timeout_s: float) -> p.Message:
        reply: Future[p.Message] = Future()
        self._outbox.put(_Query(query(next(self._ids)), reply), urgent=True)
        try:
            return reply.result(timeout=timeout_s)
        except TimeoutError as exc:
            reply.cancel()  # the I/O thread drops it
            raise DispatcherUnavailable(f"dispatcher at {self.address} did not answer in {timeout_s:g} s") from exc

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        reason = f"client {self.client_id} closed before the task resolved"
        try:
            self._serve()
        except AccessRefused as exc:  # expected, and said once: no traceback
            log.error("client_refused", client_id=self.client_id, reason=str(exc))  # noqa: TRY400
            self._fail_all(exc)
        except BaseException as exc:
            log.exception("client_io_failed", client_id=self.client_id)
            reason = f"client {self.client_id}'s I/O thread failed: {exc!r}"
            self._fail_all(DispatcherUnavailable(reason), cause=exc)
        else:
            self._fail_all(DispatcherUnavailable(reason))
        finally:
            self._welcomed.set()  # a constructor still waiting sees the closed outbox
            with contextlib.suppress(OSError):
                os.close(self._wake_r)

    def _fail_all(self, error: DispatcherUnavailable, cause: BaseException | None = None) -> None:
        """Refuse every later post; fail every unresolved future, posted or in the table."""
        error.__cause__ = cause
        self._settle()  # results that came in before the failure are results
        left = self._outbox.close(str(error))
        tasks = [item.future for item in left if isinstance(item, _Task)]
        tasks += [entry.future for entry in list(self._tasks.values())]
        self._finished += len(tasks)  # they are no longer outstanding: they failed
        futures: list[Future[Any]] = [*tasks, *(item.reply for item in left if isinstance(item, _Query))]
        futures += list(self._replies.values())
        self._tasks.clear()
        self._replies.clear()
        for future in futures:
            if not future.done():
                with contextlib.suppress(InvalidStateError):  # resolved or cancelled meanwhile
                    future.set_exception(error)

    def _serve(self) -> None:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME_BYTES)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            if self.keys is not None:
                use_curve(sock, self.keys.public, self.keys.secret, self.keys.server)
            watch = HandshakeWatch(sock, keyed=self.keys is not None)
            try:
                sock.connect(self.address)
                self._loop(sock, watch)
            finally:
                watch.close()
        finally:
            sock.close(linger=0)

    def _loop(self, sock: zmq.Socket[bytes], watch: HandshakeWatch) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(watch.monitor, zmq.POLLIN)
        said = None
        hello = p.encode(p.Hello(self.client_id, versions=self._versions))
        sock.send(hello)
        last_sent = time.monotonic()
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
            if watch.monitor in ready:
                failure = watch.failure()
                if failure in (KEY_REFUSED, KEYS_REQUIRED):
                    raise AccessRefused(f"{AccessRefused.PREFIX}{self.address}: {failure}")
                if failure is not None and failure != said:
                    log.error("dispatcher_handshake_failed", client_id=self.client_id, reason=failure)
                said = failure
            if self._welcomed.is_set() and self._flush(sock):
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= self.heartbeat_interval_s:
                # Before the welcome, repeat HELLO (the dispatcher may not be up yet).
                sock.send(p.encode(p.Heartbeat()) if self._welcomed.is_set() else hello)
                last_sent = time.monotonic()
                self._replies = {i: r for i, r in self._replies.items() if not r.done()}  # timed-out queries
            self._settle()

    def _settle(self) -> None:
        """Resolve this turn's futures, last before the poll: a done-callback wakes another thread
        (the executor's conductor, a caller in ``result()``), which needs the GIL that this thread
        would otherwise hold for the rest of its turn."""
        settling, self._settling = self._settling, []
        for future, resolution in settling:
            self._finished += 1
            future.node_name = resolution.node_name
            future.runtime_s = resolution.runtime_s
            settle(future, resolution)

    def _hold(self, held: int) -> bool:
        """Nagle's rule (:func:`send_now`) for ``held`` posted tasks; called by ``Outbox.take``."""
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        return not send_now(held=held, acked=self._acked, waited_s=now - self._held_since, coalesce_s=self.coalesce_s)

    def _flush(self, sock: zmq.Socket[bytes]) -> bool:
        """Send what callers posted — tasks in Submit batches, the rest as they are, in order —
        unless only tasks are posted and Nagle's rule says to hold them a little longer."""
        items = self._outbox.take(self._hold)
        if items is None:
            return False  # held: the poll timeout wakes us when they are due
        self._held_since = None
        if not items:
            return False
        tasks = self._tasks
        batch: list[_Entry] = []
        for item in items:
            if isinstance(item, _Task):
                if len(item.spec.payload) > MAX_PAYLOAD:
                    why = f"task of {len(item.spec.payload)} bytes exceeds the largest frame ({MAX_PAYLOAD} bytes)"
                    resolution = p.Resolution(item.spec.task_id, p.Outcome.REJECTED, why.encode(), "")
                    self._settling.append((item.future, resolution))
                    continue
                new = tasks[item.spec.task_id] = _Entry(item.future, item.spec)
                batch.append(new)
                continue
            self._send_tasks(sock, batch)  # keep the order: a Cancel or Repin may name these tasks
            batch = []
            if isinstance(item, _Query):
                self._replies[item.message.request_id] = item.reply
                sock.send(p.encode(item.message))
                continue
            if isinstance(item, p.Repin):
                for move in item.tasks:  # a re-send after a restart must carry the new placement
                    entry = tasks.get(move.task_id)
                    if entry is not None:
                        entry.spec = entry.spec._replace(node_name=move.node_name, rank=move.rank)
            elif isinstance(item, p.Cancel):
                for task_id in item.task_ids:
                    entry = tasks.get(task_id)
                    if entry is not None:
                        entry.cancelled = True
            sock.send(p.encode(item))
        self._send_tasks(sock, batch)
        return True

    def _send_tasks(self, sock: zmq.Socket[bytes], entries: Sequence[_Entry]) -> None:
        """SUBMIT frames for ``entries``, within the batch limits; past the dispatcher's payload
        window a task goes HELD, without its payload (saying its size), which waits here for a FETCH."""
        specs: list[p.TaskSpec] = []
        window = self._window
        for entry in entries:
            spec = entry.spec
            if window and spec.payload and self._ahead + len(spec.payload) > window:
                spec = spec._replace(payload=b"", flags=spec.flags | p.HELD, size=len(spec.payload))
                self.held_sent += 1
            else:
                entry.ahead = len(spec.payload)
                self._ahead += entry.ahead
            specs.append(spec)
        for batch in p.runs(specs, _BATCH_TASKS, _BATCH_BYTES):
            self._send_submit(sock, batch)

    def _send_submit(self, sock: zmq.Socket[bytes], batch: list[p.TaskSpec]) -> None:
        send_parts(sock, p.encode_parts(p.Submit(tuple(batch))))  # large payloads as they are
        self._acked = False
        self.submit_frames += 1

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        for frames in drain(sock, sock.recv_multipart):
            try:
                message = p.decode(frames)
            except p.ProtocolError as exc:
                log.warning("bad_frame", client_id=self.client_id, reason=str(exc))
                continue
            self._handle(sock, message)

    def _handle(self, sock: zmq.Socket[bytes], message: p.Message) -> None:
        if type(message) is p.Resolved:
            tasks = self._tasks
            for resolution in message.results:
                entry = tasks.pop(resolution.task_id, None)
                if entry is None:
                    self.resolutions_ignored += 1
                    continue
                self._ahead -= entry.ahead
                self._acked = True
                self._settling.append((entry.future, resolution))
        elif type(message) is p.Monitored:
            for item in message.items:
                _tell(self._monitoring_listeners, item.task_id, item.payload, failed="monitoring_listener_failed",
                      task_id=item.task_id)  # fmt: skip
        elif type(message) is p.Fetch:
            self._send_payloads(sock, message.task_ids)
        elif type(message) is p.Welcome:
            self._welcome(sock, message)
        elif type(message) is p.Error:
            self._error(sock, message)
        elif type(message) is p.NodeChanged:
            _tell(self._node_listeners, message, failed="node_listener_failed", node=message.node_name)
        elif isinstance(message, p.Nodes | p.Status):
            reply = self._replies.pop(message.request_id, None)
            if reply is not None and not reply.done():
                with contextlib.suppress(InvalidStateError):  # the caller gave up meanwhile
                    reply.set_result(message)
        elif type(message) is not p.Heartbeat:
            log.warning("unexpected_message", client_id=self.client_id, op=p.op_of(message).name)

    def _send_payloads(self, sock: zmq.Socket[bytes], task_ids: Sequence[int]) -> None:
        """What a FETCH asked for, in PAYLOADS frames within the batch limits; the tasks no
        longer here (resolved or cancelled meanwhile) are named ``missing``, in the last."""
        tasks = self._tasks
        items: list[p.PayloadItem] = []
        missing: list[int] = []
        for task_id in task_ids:
            entry = tasks.get(task_id)
            if entry is None:
                missing.append(task_id)
            else:
                items.append(p.PayloadItem(task_id, entry.spec.payload))
        batches = list(p.runs(items, _BATCH_TASKS, _BATCH_BYTES)) or [[]]
        for i, batch in enumerate(batches, 1):
            message = p.Payloads(tuple(batch), tuple(missing) if i == len(batches) else ())
            send_parts(sock, p.encode_parts(message))
            self.payloads_fetched += len(batch)

    def _welcome(self, sock: zmq.Socket[bytes], message: p.Welcome) -> None:
        restarted = self.dispatcher_id is not None and message.dispatcher_id != self.dispatcher_id
        forgotten, self._forgotten = self._forgotten, False
        self._window = message.payload_window
        if self.dispatcher_id is not None and (restarted or forgotten):
            # Re-send everything unresolved, ahead of anything posted since (still in the
            # outbox); the dispatcher ignores the ids it holds.
            self._resend(sock, restarted=restarted)
        self.dispatcher_id = message.dispatcher_id
        self._welcomed.set()
        if restarted:
            _tell(self._restart_listeners, message.dispatcher_id, failed="restart_listener_failed")

    def _resend(self, sock: zmq.Socket[bytes], *, restarted: bool) -> None:
        """After a welcome: the unresolved tasks again, and what to do with the cancelled ones.
        A restarted dispatcher never heard of them (an agent drops what it had not started), so
        they end here as cancelled; one that only forgot our routing id may have dropped the
        Cancel with the rest of what we sent it, so that goes again."""
        self.resends += 1
        entries = list(self._tasks.values())
        self._ahead = 0  # counted afresh: what it held of ours it holds no more, or holds already
        for entry in entries:
            entry.ahead = 0
        cancelled = [e for e in entries if e.cancelled]
        if restarted:  # it never heard of them, and an agent drops what it had not started
            self._send_tasks(sock, [e for e in entries if not e.cancelled])
            for entry in cancelled:
                del self._tasks[entry.spec.task_id]
                self._finished += 1
                with contextlib.suppress(InvalidStateError):
                    entry.future.set_exception(
                        TaskCancelled(entry.spec.task_id, "cancelled; the dispatcher restarted before it said so")
                    )
        else:  # it may hold them, or may have dropped them with the Cancel: both again, in order
            self._send_tasks(sock, entries)
            if cancelled:
                sock.send(p.encode(p.Cancel(tuple(e.spec.task_id for e in cancelled))))
        log.info(
            "client_resending",
            client_id=self.client_id,
            tasks=len(entries),
            cancelled=len(cancelled),
            restarted=restarted,
        )

    def _error(self, sock: zmq.Socket[bytes], message: p.Error) -> None:
        if message.code is p.ErrorCode.UNKNOWN_CLIENT:
            self._forgotten = True
            sock.send(p.encode(p.Hello(self.client_id, versions=self._versions)))
        elif message.code is p.ErrorCode.REFUSED:
            raise AccessRefused(f"{AccessRefused.PREFIX}{self.address}: {message.message}")
        else:
            log.error("dispatcher_error", client_id=self.client_id, code=message.code.name, message=message.message)
