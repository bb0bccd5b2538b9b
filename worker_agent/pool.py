"""A fixed pool of worker processes, one task each at a time, refilled when a worker dies.

Each worker has its own pipe, so the pool always knows which task a dead worker was running:
that task alone fails with WORKER_LOST and a fresh worker takes the dead one's place. The agent
polls :meth:`fds` (result pipes and process sentinels) alongside its socket.

Pipelining: when every worker is busy, up to ``pipeline`` more tasks are written into a busy
worker's pipe (the one whose task started first), so it starts the next one the moment it
finishes, without waiting for the agent to notice and hand it over (a round trip through the
agent's loop per task: 5 % of a 10 ms task here). A task waiting in a worker's pipe counts as
running (it can no longer be cancelled or stolen); if that worker dies, it did not start and goes
back to the agent's queue (:meth:`collect`'s second list).

Workers are spawned (a fresh interpreter that imports Parsl), or, given a zygote's socket,
forked from it (:mod:`worker_agent.zygote`: Parsl imported once for all the agents that share
it); a zygote that cannot be reached is logged and the worker spawned instead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Self

from dispatcher.protocol import Outcome, TaskKey
from dispatcher.runtime.logs import get_logger
from dispatcher.runtime.throttle import log_due
from worker_agent.pipe import MONITORING, READY, start_worker
from worker_agent.zygote import ForkedWorker, ZygoteError

log = get_logger("worker_pool")


WRITE_AHEAD_MAX_BYTES = 64 * 1024
"""The largest task written ahead into a busy worker's pipe. The worker reads it only when its
task ends, so a larger one would block the agent in the write (a socket pair holds a few hundred
KiB): no heartbeats meanwhile, and no reading of what the workers send. It waits in the agent's
queue for an idle worker instead."""

MAX_HELD_MONITORING = 10_000
"""Monitoring messages held for the agent at most (it takes them every turn it is registered);
past that the oldest are dropped, with a warning."""

Finished = tuple[TaskKey, Outcome, bytes, float]
"""(key, outcome, payload, runtime_s)"""


class WorkerProcess(Protocol):
    """What the pool needs of a worker's process: ``multiprocessing.Process`` or :class:`ForkedWorker`."""

    @property
    def pid(self) -> int | None: ...
    @property
    def sentinel(self) -> int: ...
    @property
    def exitcode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


@dataclass(slots=True)
class _Worker:
    index: int
    process: WorkerProcess
    conn: multiprocessing.connection.Connection
    tasks: deque[tuple[TaskKey, bytes]] = field(default_factory=deque)
    """Handed over and not finished: the first is running, the rest wait in its pipe."""
    started_at: float = 0.0
    ready: bool = False


class WorkerPool:
    def __init__(self, size: int, node_name: str, speed: float, pipeline: int = 1, zygote: str | None = None) -> None:
        if pipeline < 0:
            raise ValueError(f"pipeline must be >= 0, got {pipeline}")
        self.pipeline = pipeline
        self._zygote = zygote
        self._ctx = multiprocessing.get_context("spawn")
        self._node_name = node_name
        self._speed = speed
        self._workers: list[_Worker] = [self._spawn(i) for i in range(size)]
        self._idle: list[_Worker] = []
        """Ready workers without a task; a (re)spawned worker joins when it reports READY."""
        self._slots = 0
        """Room left in busy workers' pipes (at most ``pipeline`` each)."""
        self.respawned = 0
        self.monitoring: list[tuple[str, int, bytes]] = []
        """Parsl monitoring messages the workers sent, (client_id, task_id, payload), in order;
        the agent takes them (they go out ahead of the results collected with them)."""
        self.monitoring_dropped = 0

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every worker has imported its libraries; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self._idle) + sum(1 for w in self._workers if w.tasks) < self.size:
            if time.monotonic() > deadline:
                return False
            multiprocessing.connection.wait(self.fds(), timeout=0.1)
            if self.collect() != ([], []):
                raise AssertionError("a task finished before the pool was ready")
        return True

    def _spawn(self, index: int) -> _Worker:
        if self._zygote is not None:
            try:
                forked = ForkedWorker(self._zygote, self._node_name, self._speed)
            except ZygoteError as exc:
                log.warning("zygote_unavailable", error=str(exc), fallback="spawn")
            else:
                return _Worker(index, forked, forked.conn)
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=start_worker,
            args=(child_end, self._node_name, self._speed),
            name=f"saga-worker-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Worker(index, process, parent_end)

    # ------------------------------------------------------------------ queries

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def idle(self) -> int:
        """How many more tasks the pool takes now (idle workers, then room in busy workers' pipes)."""
        return len(self._idle) + self._slots

    def takes(self, size: int) -> bool:
        """Whether :meth:`start` may take a task of ``size`` bytes now without blocking the agent:
        an idle worker, or room in a busy one's pipe for a task no larger than ``WRITE_AHEAD_MAX_BYTES``."""
        return bool(self._idle) or (self._slots > 0 and size <= WRITE_AHEAD_MAX_BYTES)

    @property
    def busy(self) -> int:
        """Workers running a task."""
        return sum(1 for w in self._workers if w.tasks)

    @property
    def running(self) -> list[TaskKey]:
        """Tasks handed to workers and not finished (running, or next in a worker's pipe)."""
        return [key for w in self._workers for key, _ in w.tasks]

    def fds(self) -> list[int]:
        """File descriptors to poll: readable means a result or a death to collect."""
        out: list[int] = []
        for w in self._workers:
            out.append(w.conn.fileno())
            out.append(w.process.sentinel)
        return out

    # ------------------------------------------------------------------ work

    def start(self, key: TaskKey, payload: bytes) -> None:
        """Hand a task to an idle worker, else queue it in a busy one's pipe; :meth:`takes` must be true."""
        if self._idle:
            worker = self._idle.pop()
            worker.started_at = time.monotonic()
            self._slots += self.pipeline
        else:
            worker = min(
                (w for w in self._workers if w.ready and 0 < len(w.tasks) <= self.pipeline),
                key=lambda w: (len(w.tasks), w.started_at),
            )
            self._slots -= 1
        worker.tasks.append((key, payload))
        with contextlib.suppress(BrokenPipeError, OSError):  # if it died, collect() reports the task lost
            worker.conn.send((key, payload))

    def collect(self, ready: set[int] | None = None) -> tuple[list[Finished], list[tuple[TaskKey, bytes]]]:
        """Since the last call: finished tasks (results, and WORKER_LOST for the task a dead worker
        was running), and tasks that were waiting in a dead worker's pipe (never started: run them
        elsewhere). ``ready``: the :meth:`fds` a poll found readable (None: look at every worker);
        one message is read per readable pipe, the next poll reports the rest."""
        done: list[Finished] = []
        unstarted: list[tuple[TaskKey, bytes]] = []
        for i, worker in enumerate(self._workers):
            if ready is None:
                readable, dead = worker.conn.poll(), False
            else:  # no poll() per pipe here: each builds a selector
                readable, dead = worker.conn.fileno() in ready, worker.process.sentinel in ready
            try:
                if readable:
                    self._take(worker, worker.conn.recv(), done)
                while (dead or ready is None) and worker.conn.poll():  # a dead worker's last words count
                    self._take(worker, worker.conn.recv(), done)
            except (EOFError, OSError):
                dead = True
            if dead or (ready is None and not worker.process.is_alive()):
                done.extend(self._replace(i, worker, unstarted))
        return done, unstarted

    def _take(self, worker: _Worker, message: tuple[object, ...], done: list[Finished]) -> None:
        """One message from a worker: its READY, a monitoring message, or a result."""
        if not worker.ready:
            assert message[0] == READY, message
            worker.ready = True
            self._idle.append(worker)
            return
        if message[0] == MONITORING:
            _, client_id, task_id, payload = message
            self.monitoring.append((client_id, task_id, payload))  # type: ignore[arg-type]
            if len(self.monitoring) > MAX_HELD_MONITORING:
                del self.monitoring[: len(self.monitoring) - MAX_HELD_MONITORING]
                self.monitoring_dropped += 1
                if log_due(self.monitoring_dropped):
                    log.warning("monitoring_dropped", held=MAX_HELD_MONITORING, dropped=self.monitoring_dropped)
            return
        key, outcome, data, runtime_s = message
        done.append((key, Outcome(outcome), data, runtime_s))  # type: ignore[arg-type]
        worker.tasks.popleft()
        worker.started_at = time.monotonic()
        if worker.tasks:
            self._slots += 1
        else:
            self._slots -= self.pipeline
            self._idle.append(worker)

    def _replace(self, i: int, worker: _Worker, unstarted: list[tuple[TaskKey, bytes]]) -> list[Finished]:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        lost: list[Finished] = []
        running = worker.tasks[0][0] if worker.tasks else None
        if running is not None:
            reason = f"worker process {worker.process.pid} died with exit code {code} while running the task"
            lost.append((running, Outcome.WORKER_LOST, reason.encode(), 0.0))
            unstarted.extend(list(worker.tasks)[1:])
            self._slots -= self.pipeline - (len(worker.tasks) - 1)
        elif worker in self._idle:
            self._idle.remove(worker)
        log.warning("worker_died", pid=worker.process.pid, exitcode=code, task=repr(running))
        _release(worker)
        self._workers[i] = self._spawn(worker.index)
        self.respawned += 1
        return lost

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop every worker: ask politely, then terminate, then kill."""
        for w in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                w.conn.send(None)
        for w in self._workers:
            w.process.join(timeout=timeout_s / max(1, len(self._workers)))
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=0.5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            _release(w)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(worker: _Worker) -> None:
    worker.conn.close()
    if isinstance(worker.process, ForkedWorker):
        worker.process.close()
