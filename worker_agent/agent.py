"""The node agent: registers its node with the dispatcher, pulls tasks by credit, runs them.

Phases of one loop turn: poll (socket + worker pipes), read dispatcher frames, collect finished
tasks, start queued tasks on idle workers, send results and credit, keep time (heartbeats, a
silent dispatcher, registration retries, drain).

Flow control: the agent holds at most ``workers + prefetch`` tasks (running + queued locally).
It grants the dispatcher the credit that brings ``granted + held`` back to capacity, in steps of
at least a quarter of the capacity unless fewer than ``workers`` tasks are held or on their way
(so a busy node asks for tasks in batches, one frame for several, and an idle one at once);
results are always sent before the credit they free, so the dispatcher's own cap never clips it.

Reconnect: a dispatcher silent for ``interval x liveness`` (or one that says REREGISTER) is
presumed gone: the agent drops its unstarted tasks (the dispatcher re-queued them, or its
successor will get them from the client), keeps running ones (their results may still win),
opens a fresh socket and registers again with exponential backoff and jitter.

Keys (``AgentConfig.keys``): the socket is a CURVE client pinning the dispatcher's public key,
so tasks come from the real dispatcher only. A failed handshake (our key not allowed, or a
dispatcher holding another key) is logged when the registration is retried, with the reason.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Sized
from enum import Enum
from operator import attrgetter, itemgetter
from typing import Final

import zmq

from dispatcher import protocol as p
from dispatcher.runtime.curve import HandshakeWatch, use_curve
from dispatcher.runtime.health import HealthServer, Heartbeat
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.sockets import drain, send_parts
from dispatcher.runtime.throttle import log_due
from dispatcher.runtime.versions import runtime_versions
from worker_agent.config import AgentConfig
from worker_agent.pool import WorkerPool

log = get_logger("agent")

_MAX_POLL_S: Final = 0.1
_RECONNECT_IVL_MAX_MS: Final = 5000
"""libzmq's own reconnects back off up to this, so a refused key is not retried ten times a second."""
_payload: Final = attrgetter("payload")
_third: Final = itemgetter(2)  # a monitoring item's payload


class Phase(Enum):
    REGISTERING = "registering"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent_id = f"{config.node_name}-{uuid.uuid4().hex[:8]}"
        self.heartbeat = Heartbeat()
        """Bumped every loop turn: ``/healthz``."""
        self._versions = runtime_versions()
        """What its workers run (REGISTER's ``versions``): the agent and its workers share one environment."""
        self.capacity = config.workers + config.prefetch_tasks
        self._credit_step = max(1, self.capacity // 4)
        self.phase = Phase.REGISTERING
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None
        self._handshake_said: str | None = None
        self._pool: WorkerPool | None = None
        self._poller: zmq.Poller | None = None
        self._polled: tuple[object, list[int]] | None = None
        self._queued: deque[p.TaskAssignment] = deque()
        self._results: list[p.TaskResult] = []
        self._granted = 0
        self._heartbeat_s = 0.5
        self._liveness = 3
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._backoff_s = config.reconnect_min_s
        self._retry_at = 0.0
        self._drain_deadline = 0.0
        self._stop_requested = False
        self.incarnation = 0
        self.tasks_done = 0
        self._reported = (0, 0)
        """(worker respawns, busy workers) as the dispatcher last heard them (AGENT_STATUS)."""
        self._status_sent = 0.0
        self._unsent = 0
        """Messages a non-blocking send refused (no connection to the dispatcher at that moment)."""

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Drain and stop (SIGTERM): finish running tasks, hand back queued ones, say bye."""
        self._stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())

    def run(self) -> None:
        cfg = self.config
        log.info(
            "agent_starting",
            node=cfg.node_name,
            agent_id=self.agent_id,
            workers=cfg.workers,
            speed=cfg.speed,
            dispatcher=cfg.dispatcher_url,
        )
        http = None
        if cfg.http_port is not None:  # before the workers start: alive ("starting"), not ready, meanwhile
            routes = {"/healthz": self.heartbeat.check, "/readyz": self._ready}
            http = HealthServer(cfg.http_host, cfg.http_port, routes).start()
        self._pool = WorkerPool(cfg.workers, cfg.node_name, cfg.speed or 1.0, cfg.pipeline, cfg.zygote)
        if not self._pool.wait_ready(cfg.worker_start_timeout_s):
            log.warning("workers_slow_to_start", ready=self._pool.idle, workers=cfg.workers)
        try:
            self._connect(time.monotonic())
            while self.phase is not Phase.STOPPED:
                self.heartbeat.beat()
                self._turn()
        finally:
            if http is not None:
                http.close()
            if self._watch is not None:
                self._watch.close()
            if self._sock is not None:
                self._sock.close(linger=1000)
            self._pool.close()
            log.info("agent_stopped", node=cfg.node_name, tasks_done=self.tasks_done)

    def _ready(self) -> tuple[bool, str]:
        if self.phase is Phase.SERVING:
            return True, f"registered as {self.config.node_name} (incarnation {self.incarnation})"
        return False, f"{self.phase.value}"

    def _turn(self) -> None:
        assert self._sock is not None
        assert self._pool is not None
        fds = self._pool.fds()
        if self._poller is None or self._polled != (self._sock, fds):
            self._poller = zmq.Poller()  # only when the socket or a worker changed
            self._poller.register(self._sock, zmq.POLLIN)
            for fd in fds:
                self._poller.register(fd, zmq.POLLIN)
            self._polled = (self._sock, fds)
        ready = dict(self._poller.poll(self._poll_timeout_ms()))
        now = time.monotonic()
        if self._sock in ready:
            self._read(now)
        if len(ready) - (self._sock in ready) > 0:
            self._collect(set(ready))
        self._start_tasks()
        self._send_results_and_credit(now)
        self._keep_time(now)

    def _poll_timeout_ms(self) -> int:
        return int(min(_MAX_POLL_S, self._heartbeat_s / 2) * 1000)

    # ------------------------------------------------------------------ connection

    def _connect(self, now: float) -> None:
        """A fresh socket (a fresh routing id) and a REGISTER."""
        self._say_handshake()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._sock is not None:
            self._sock.close(linger=0)
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME_BYTES)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        keys = self.config.keys
        if keys is not None:
            use_curve(sock, keys.public, keys.secret, keys.server)
        self._watch = HandshakeWatch(sock, keyed=keys is not None)
        sock.connect(self.config.dispatcher_url)
        self._sock = sock
        self.phase = Phase.REGISTERING
        self._granted = 0
        running = tuple(p.TaskRef(c, t) for c, t in self._pool.running) if self._pool is not None else ()
        cfg = self.config
        register = p.Register(
            cfg.node_name, self.agent_id, cfg.workers, cfg.prefetch_tasks, cfg.speed or 0.0, running=running,
            versions=self._versions,
        )  # fmt: skip
        self._send(register, now)
        self._retry_at = now + self._backoff_s * random.uniform(1.0, 1.5)
        self._backoff_s = min(self._backoff_s * 2, self.config.reconnect_max_s)

    def _say_handshake(self) -> None:
        """Log why the last socket's handshakes failed, once per reason (a retry is about to
        open the next socket, or the registration is still unanswered)."""
        failure = self._watch.failure() if self._watch is not None else None
        if failure is not None and failure != self._handshake_said:
            log.error("dispatcher_handshake_failed", node=self.config.node_name, reason=failure)
        self._handshake_said = failure

    def _lost_dispatcher(self, now: float, reason: str) -> None:
        dropped = len(self._queued)
        self._queued.clear()
        log.warning(
            "dispatcher_lost",
            node=self.config.node_name,
            reason=reason,
            dropped_unstarted=dropped,
            running=len(self._pool.running) if self._pool else 0,
        )
        self._connect(now)

    def _send(self, message: p.Message, now: float) -> bool:
        """Send now, or say it could not: a DEALER with no connection to the dispatcher right now
        (reconnecting, a refused handshake) refuses a non-blocking send. Whoever sent results
        keeps them for the next turn; a REGISTER is retried by its backoff; a heartbeat or a
        reply is not needed once the dispatcher has lost us."""
        assert self._sock is not None
        try:
            send_parts(self._sock, p.encode_parts(message), zmq.NOBLOCK)
        except zmq.Again:
            self._unsent += 1
            if log_due(self._unsent):
                log.warning("send_would_block", node=self.config.node_name, op=p.op_of(message).name,
                            unsent=self._unsent, reason="no connection to the dispatcher right now")  # fmt: skip
            return False
        self._last_sent = now
        return True

    # ------------------------------------------------------------------ reading

    def _read(self, now: float) -> None:
        assert self._sock is not None
        sock = self._sock
        for frames in drain(sock, sock.recv_multipart):
            self._handle(frames, now)
            if self._sock is not sock:  # handling may reconnect
                return

    def _handle(self, frames: list[bytes], now: float) -> None:
        """One message from the dispatcher (its header frame, and payloads in frames of their own)."""
        try:
            message = p.decode(frames)
        except p.ProtocolError as exc:
            log.warning("bad_frame", reason=str(exc))
            return
        self._last_heard = now
        if type(message) is p.Tasks:
            self._granted = max(0, self._granted - len(message.tasks))
            if self.phase is Phase.SERVING:
                self._queued.extend(message.tasks)
            else:  # raced with our drain: hand them straight back
                self._send(p.Drain(tuple(p.TaskRef(t.client_id, t.task_id) for t in message.tasks)), now)
        elif type(message) is p.Registered:
            self._registered(message)
        elif type(message) is p.CancelTasks:
            self._cancel(message)
        elif type(message) is p.StealRequest:
            self._give_back(message, now)
        elif type(message) is p.Reregister:
            if self.phase is not Phase.REGISTERING:
                self._lost_dispatcher(now, "dispatcher asked us to register again")
        elif type(message) is p.Refused:
            log.error(
                "registration_refused",
                node=self.config.node_name,
                reason=message.reason,
                retry_in_s=round(self._retry_at - now, 2),
            )

    def _registered(self, message: p.Registered) -> None:
        if self.phase is not Phase.REGISTERING:
            return
        self.phase = Phase.SERVING
        self.incarnation = message.incarnation
        self._reported = (0, 0)  # a new incarnation counts from zero at the dispatcher: tell it again
        self._heartbeat_s = message.heartbeat_interval_s
        self._liveness = message.liveness
        self._backoff_s = self.config.reconnect_min_s
        log.info(
            "agent_registered",
            node=message.node_name,
            incarnation=message.incarnation,
            dispatcher_id=message.dispatcher_id,
        )

    def _cancel(self, message: p.CancelTasks) -> None:
        wanted = {(r.client_id, r.task_id) for r in message.tasks}
        kept: deque[p.TaskAssignment] = deque()
        for task in self._queued:
            if (task.client_id, task.task_id) in wanted:
                self._results.append(
                    p.TaskResult(
                        task.client_id, task.task_id, p.Outcome.CANCELLED, b"cancelled on the node before it started"
                    )
                )
            else:
                kept.append(task)
        self._queued = kept

    def _give_back(self, message: p.StealRequest, now: float) -> None:
        """Two-phase steal, our half: drop the asked-for tasks that have not started; confirm those."""
        wanted = {(r.client_id, r.task_id) for r in message.tasks}
        kept: deque[p.TaskAssignment] = deque()
        confirmed = []
        for task in self._queued:
            if (task.client_id, task.task_id) in wanted:
                confirmed.append(p.TaskRef(task.client_id, task.task_id))
            else:
                kept.append(task)
        self._queued = kept
        self._send(p.StealReply(message.request_id, tuple(confirmed)), now)

    # ------------------------------------------------------------------ running

    def _collect(self, ready: set[int]) -> None:
        assert self._pool is not None
        finished, unstarted = self._pool.collect(ready)
        for key, outcome, data, runtime_s in finished:
            client_id, task_id = key
            self._results.append(p.TaskResult(client_id, task_id, outcome, data, runtime_s))
            self.tasks_done += 1
        # Waiting in a dead worker's pipe, never started: first in line again (the rank only
        # orders the dispatcher's queues; here the order is what counts).
        self._queued.extendleft(p.TaskAssignment(c, t, 0.0, payload) for (c, t), payload in reversed(unstarted))

    def _start_tasks(self) -> None:
        pool = self._pool
        assert pool is not None
        while self._queued and pool.takes(len(self._queued[0].payload)):  # in order: the head waits for a worker
            task = self._queued.popleft()
            pool.start((task.client_id, task.task_id), bytes(task.payload))  # bytes already: read as bytes

    def _held(self) -> int:
        assert self._pool is not None
        return len(self._queued) + len(self._pool.running)

    def _send_results_and_credit(self, now: float) -> None:
        if self.phase is Phase.REGISTERING:
            return  # results wait until we are registered again
        want = 0
        if self.phase is Phase.SERVING:
            held = self._held()
            free = self.capacity - held - self._granted
            if free > 0 and (free >= self._credit_step or held + self._granted < self.config.workers):
                want = free
                self._granted += want
        pool = self._pool
        sent = True
        if pool is not None and pool.monitoring:  # ahead of the results of the tasks that sent them
            pool.monitoring = self._send_runs(pool.monitoring, lambda run, _: _monitor(run), now, payload_of=_third)
            sent = not pool.monitoring  # what is not sent holds the results back behind it
        if sent and self._results:  # the credit rides with the results whose slots it frees
            self._results = self._send_runs(
                self._results,
                lambda run, last: p.Results(tuple(run), want if last else 0),  # the credit with the last
                now,
            )
            sent = not self._results
        elif sent and want:
            sent = self._send(p.Credit(want), now)
        if not sent:
            self._granted -= want  # asked for nothing after all: ask again next turn

    def _send_runs[T](
        self,
        items: list[T],
        message_of: Callable[[list[T], bool], p.Message],
        now: float,
        payload_of: Callable[[T], Sized] = _payload,
    ) -> list[T]:
        """``items`` in messages within the limits, ``message_of(run, last)`` each; returns what
        could not be sent (from the first message refused on)."""
        batches = list(p.runs(items, p.MAX_BATCH, p.COALESCE_BYTES, payload_of=payload_of))
        sent = 0
        for i, batch in enumerate(batches, 1):
            if not self._send(message_of(batch, i == len(batches)), now):
                return items[sent:]
            sent += len(batch)
        return []

    # ------------------------------------------------------------------ time

    def _keep_time(self, now: float) -> None:
        if self._stop_requested and self.phase in (Phase.REGISTERING, Phase.SERVING):
            self._begin_drain(now)
        if self.phase is Phase.STOPPED:
            return
        if self.phase is Phase.REGISTERING:
            if now >= self._retry_at:
                self._connect(now)
            return
        if now - self._last_heard > self._heartbeat_s * self._liveness:
            if self.phase is Phase.DRAINING:
                self.phase = Phase.STOPPED  # nobody to report to; stop
                return
            self._lost_dispatcher(now, f"silent for {now - self._last_heard:.2f} s")
            return
        if self.phase is Phase.DRAINING:
            assert self._pool is not None
            if not self._pool.running and not self._results:
                self._send(p.Bye(), now)
                self.phase = Phase.STOPPED
            elif now > self._drain_deadline:
                log.warning("drain_timeout", running=len(self._pool.running))
                self._send(p.Bye(), now)
                self.phase = Phase.STOPPED
            return
        assert self._pool is not None
        status = (self._pool.respawned, self._pool.busy)
        if status != self._reported and now - self._status_sent >= self._heartbeat_s:
            self._reported = status  # what only the agent sees (for /metrics), as a heartbeat: at most one a beat
            self._status_sent = now
            self._send(p.AgentStatus(*status), now)
        elif now - self._last_sent >= self._heartbeat_s:
            self._send(p.Heartbeat(), now)

    def _begin_drain(self, now: float) -> None:
        if self.phase is Phase.REGISTERING:
            self.phase = Phase.STOPPED
            return
        returned = tuple(p.TaskRef(t.client_id, t.task_id) for t in self._queued)
        self._queued.clear()
        self._send(p.Drain(returned), now)
        self.phase = Phase.DRAINING
        self._drain_deadline = now + self.config.drain_timeout_s
        log.info(
            "agent_draining",
            node=self.config.node_name,
            returned=len(returned),
            running=len(self._pool.running) if self._pool else 0,
        )


def _monitor(items: list[tuple[str, int, bytes]]) -> p.Monitor:
    return p.Monitor(tuple(p.MonitoringItem(c, t, payload) for c, t, payload in items))
