"""SagaDispatchExecutor: a Parsl executor that places the task DAG with a SAGA scheduler.

This module is the shell around ``state.ExecutorState`` (the rules live there, with their
transcript tests). Three threads meet here, and only one of them owns the state:

* Parsl's launch thread calls ``submit()``, which recovers the task id (``taskid.py``), packs the
  call as HTEX does, posts ``TaskLaunched`` to the conductor and returns its future at once.
* The client's I/O thread only posts: a result (``TaskResolved``), a node change, a restart. It
  never runs Parsl's callbacks: Parsl futures are resolved on the conductor.
* The conductor thread owns the state: it takes the posted events in order, hands each to the
  state, and carries out the commands that come back: it reads the DFK to build a plan's graph,
  submits and re-pins through the client, resolves and fails Parsl futures.
* A planning thread runs the jobs that wait (SAGA in the planning process, asking the dispatcher
  for its live nodes) and posts their outcome, so results keep flowing while SAGA plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from parsl.dataflow.states import FINAL_STATES
from parsl.executors.base import ParslExecutor
from parsl.monitoring.radios.base import RadioConfig
from parsl.serialize import pack_apply_message

from dispatcher import protocol as p
from dispatcher.client.client import Client, TaskFuture
from dispatcher.client.errors import DispatcherUnavailable
from dispatcher.local import LOCAL_WORKERS, LocalCluster
from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.logs import get_logger
from parsl_adapter import events as e
from parsl_adapter.config import ExecutorConfig
from parsl_adapter.costs import RuntimeModel, parse_hints
from parsl_adapter.graph import replan_graph, window_graph
from parsl_adapter.placement import Graph, Network, check_scheduler, zoned
from parsl_adapter.plancache import PlanCache, canonical, restore
from parsl_adapter.planner import PlannerProcess
from parsl_adapter.state import ExecutorState
from parsl_adapter.taskid import ParslCompatibilityError, TaskIdResolver, find_dfk, new_records
from parsl_adapter.timeline import TimelineEntry
from parsl_adapter.window import WindowConfig
from worker_agent.radio import DispatchRadio

log = get_logger("saga_executor")

RESOURCE_SPEC_KWARG = "parsl_resource_specification"
_DEFAULTS = ExecutorConfig()
_WINDOW = WindowConfig()
_STOP = object()
"""Posted to the conductor by ``shutdown()``."""
_LIST_NODES = object()
"""A planning-thread job: ask the dispatcher which nodes are alive."""

PlannedTask = e.PlannedTask


class NoLiveNodes(DispatchError):
    """No node was alive to plan on within ``node_wait_timeout_s``."""


class SagaDispatchExecutor(ParslExecutor):
    """Place each task on the node a SAGA scheduler chose for it, via a saga-dispatch dispatcher."""

    def __init__(
        self,
        label: str = "saga_dispatch",
        address: str | None = None,
        *,
        scheduler: str | Any = _DEFAULTS.scheduler,
        replan: bool = _DEFAULTS.replan,
        affinity: Literal["strict", "soft"] = _DEFAULTS.affinity,
        local_nodes: int = 4,
        local_speeds: Sequence[float] | None = None,
        workers_per_node: int = LOCAL_WORKERS,
        flush_idle_s: float = _WINDOW.flush_idle_s,
        plan_idle_s: float = _WINDOW.plan_idle_s,
        max_held: int = _WINDOW.max_held,
        max_delay_s: float = _WINDOW.max_delay_s,
        max_plan_tasks: int = _DEFAULTS.max_plan_tasks,
        plan_cache_size: int = _DEFAULTS.plan_cache_size,
        history_size: int = _DEFAULTS.history_size,
        default_cost_s: float = _DEFAULTS.default_cost_s,
        default_output_bytes: float = _DEFAULTS.default_output_bytes,
        bandwidth: float = _DEFAULTS.bandwidth,
        cross_zone_bandwidth: float | None = _DEFAULTS.cross_zone_bandwidth,
        node_wait_timeout_s: float = _DEFAULTS.node_wait_timeout_s,
        plan_timeout_s: float = _DEFAULTS.plan_timeout_s,
        rejoin_grace_s: float = _DEFAULTS.rejoin_grace_s,
        connect_timeout_s: float = _DEFAULTS.connect_timeout_s,
        keys: str | None = None,
        insecure: bool = False,
        remote_monitoring_radio: RadioConfig | None = None,
    ) -> None:
        """``keys``: the key folder for a dispatcher at ``address`` (default ``SAGA_KEYS``); the
        embedded mode (no ``address``) makes its own. ``insecure``: no keys where they would be
        required or generated. ``remote_monitoring_radio``: how workers send Parsl's monitoring
        messages (default :class:`~worker_agent.radio.DispatchRadio`: over the dispatcher, as
        HTEX's radio rides HTEX)."""
        super().__init__()
        self.remote_monitoring_radio = remote_monitoring_radio or DispatchRadio()
        self.label = label
        self.address = address
        self.keys = keys
        self.insecure = insecure
        check_scheduler(scheduler)  # an unknown name fails here, in the user's config
        if local_nodes < 1:
            raise ValueError(f"local_nodes must be >= 1, got {local_nodes}")
        if local_speeds is not None and len(local_speeds) != local_nodes:
            raise ValueError(f"local_speeds has {len(local_speeds)} entries for {local_nodes} local_nodes")
        self.config = ExecutorConfig(
            scheduler=scheduler, replan=replan, affinity=affinity,
            window=WindowConfig(flush_idle_s, plan_idle_s, max_held, max_delay_s),
            max_plan_tasks=max_plan_tasks, plan_cache_size=plan_cache_size, history_size=history_size,
            default_cost_s=default_cost_s, default_output_bytes=default_output_bytes, bandwidth=bandwidth,
            cross_zone_bandwidth=cross_zone_bandwidth, node_wait_timeout_s=node_wait_timeout_s,
            plan_timeout_s=plan_timeout_s, rejoin_grace_s=rejoin_grace_s,
            connect_timeout_s=connect_timeout_s,
        )  # fmt: skip
        # Parsl's RepresentationMixin prints a config from the attributes named like its arguments.
        self.scheduler, self.replan, self.affinity = scheduler, replan, affinity
        self.local_nodes = local_nodes
        self.local_speeds = list(local_speeds) if local_speeds is not None else None
        self.workers_per_node = workers_per_node
        self.state = ExecutorState(self.config)
        """Owned by the conductor thread: other threads may only read single entries of it."""
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.duplicate_resolutions = 0
        """Results for tasks whose Parsl future was already resolved (should stay 0)."""
        self._planner = PlannerProcess(plan_timeout_s)
        self._resolver: TaskIdResolver | None = None
        self._dfk: Any = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sent: dict[int, TaskFuture] = {}
        """The conductor's: each in-flight task's dispatcher future (what a re-pin names)."""
        self._waiting = False
        """The conductor waits on an empty inbox (a hint, read unlocked by ``submit()``)."""
        self._outgoing: deque[e.Send | e.Resolve | e.Fail] = deque()
        """The conductor's: commands of this turn that wake another thread (``_deliver``)."""
        self._cursor = 0
        """The conductor's: where the next scan of ``dfk.tasks`` for unplanned tasks starts."""
        self._synthetic = itertools.count(-1, -1)
        self._t0 = 0.0
        self._stop = threading.Event()
        self._post_lock = threading.Lock()
        self._closed = False
        """Shut-down has drained the inbox for the last time: posts are refused (``_post``)."""
        self._conductor: threading.Thread | None = None
        self._planning: threading.Thread | None = None

    # ------------------------------------------------------------------ the state's read-only views

    @property
    def plans(self) -> deque[dict[str, Any]]:
        """One summary per plan (the latest 10,000): epoch, tasks, nodes, scheduler, planning
        seconds, planned makespan, whether it came from the plan cache."""
        return self.state.plans

    @property
    def plan_cache(self) -> PlanCache:
        return self.state.plan_cache

    @property
    def runtimes(self) -> RuntimeModel:
        return self.state.runtimes

    def planned_node(self, task_id: int) -> str | None:
        """Where Parsl task ``task_id`` was planned (also after it finished, for the latest
        ``history_size`` finished tasks), or None."""
        planned = self.state.plan.get(task_id)
        return planned.node if planned is not None else None

    def ran_on(self, task_id: int) -> str | None:
        """The node that ran Parsl task ``task_id``, once it resolved."""
        return self.state.ran_on.get(task_id)

    def first_planned_node(self, task_id: int) -> str | None:
        """Where the first plan put Parsl task ``task_id`` (before any re-plan)."""
        return self.state.first_node.get(task_id)

    def planned(self, task_id: int) -> PlannedTask | None:
        return self.state.plan.get(task_id)

    def timeline(self) -> list[TimelineEntry]:
        """Planned against actual for every finished planned task the history keeps (its latest
        try), in planned order; seconds since the executor started (``timeline.py``). Draw it
        with ``parsl_adapter.gantt.draw`` or ``saga-dispatch gantt``."""
        t0 = self._t0
        entries = list(self.state.timeline.values())  # one C call: safe against the conductor's writes
        shifted = (dataclasses.replace(x, start_s=x.start_s - t0, end_s=x.end_s - t0) for x in entries)
        return sorted(shifted, key=lambda x: (x.planned_start_s, x.task_id))

    # ------------------------------------------------------------------ ParslExecutor API

    def start(self) -> None:
        self._dfk = find_dfk(self)
        if self._dfk is not None:
            self._resolver = TaskIdResolver(self._dfk, self.label)
        self._planner.start(wait=False)  # it imports SAGA while the cluster starts (ready() below)
        try:
            if self.address is None:
                self.cluster = LocalCluster(
                    self.local_nodes,
                    speeds=self.local_speeds,
                    workers=self.workers_per_node,
                    log_dir=Path(self.run_dir) / self.label,
                    insecure=self.insecure,
                )
                self.cluster.start()
                address = self.cluster.client_url
                keys: str | None = str(self.cluster.keys_dir) if self.cluster.keys_dir is not None else ""
            else:
                address, keys = self.address, self.keys
            self.client = Client(
                address, connect_timeout_s=self.config.connect_timeout_s, keys=keys, insecure=self.insecure
            )
            self.client.on_node_change(self._node_changed)
            if self.monitoring_messages is not None and isinstance(self.remote_monitoring_radio, DispatchRadio):
                self.client.on_monitoring(self._monitored)
            self.client.on_dispatcher_restart(lambda _: self._inbox.put(e.DispatcherRestarted(time.monotonic())))
            self._planner.ready()
        except BaseException:
            self._teardown()
            raise
        self._t0 = time.monotonic()
        self._planning = threading.Thread(target=self._plan_jobs, name=f"{self.label}-planning", daemon=True)
        self._planning.start()
        self._conductor = threading.Thread(target=self._conduct, name=f"{self.label}-conductor", daemon=True)
        self._conductor.start()

    def submit(
        self, func: Callable[..., Any], resource_specification: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Future[Any]:
        if self.client is None or self._stop.is_set():
            raise DispatcherUnavailable(f"executor {self.label} is not running")
        hints = parse_hints(resource_specification)  # a bad hint fails this task, with the key named
        if self._resolver is not None:
            tid = self._resolver.resolve(resource_specification)
        else:
            tid = next(self._synthetic)  # used outside a DataFlowKernel: plan it on its own
        if RESOURCE_SPEC_KWARG in kwargs and not _accepts(func, RESOURCE_SPEC_KWARG):
            kwargs = {k: v for k, v in kwargs.items() if k != RESOURCE_SPEC_KWARG}
        payload = pack_apply_message(func, args, kwargs)
        launch = e.Launch(tid, getattr(func, "__name__", "?"), payload, Future(), hints.retry_on_node_loss)
        launch.future.parsl_executor_task_id = tid  # type: ignore[attr-defined]
        self._post(e.TaskLaunched(launch, time.monotonic()))
        if self._waiting:
            # Hand the GIL to the woken conductor now: else it waits through Parsl's own code after
            # this returns (a launch's hop: 80-90 -> ~48 us here; docs/benchmarks.md, issue 13).
            time.sleep(0)
        return launch.future

    def _post(self, event: e.Event) -> None:
        """Hand ``event`` to the conductor; after shut-down's last look at the inbox, refuse it
        (a launch that raced ``shutdown()`` fails instead of waiting in an inbox nobody reads)."""
        with self._post_lock:
            if not self._closed:
                self._inbox.put(event)
                return
        if isinstance(event, e.TaskLaunched):
            _fail_one(event.launch, DispatcherUnavailable(f"executor {self.label} was shut down"))

    @contextlib.contextmanager
    def plan(self) -> Iterator[None]:
        """Hold launches while the block registers the DAG; plan it whole when the block exits."""
        self._post(e.HoldingChanged(+1, time.monotonic()))
        try:
            yield
        finally:
            self._post(e.HoldingChanged(-1, time.monotonic()))

    def shutdown(self) -> None:
        """Fail what is not in flight, close the client (which fails what is), resolve every
        Parsl future, stop the threads and the local cluster."""
        self._stop.set()
        self._inbox.put(_STOP)
        owner = True
        if self._conductor is not None:
            self._conductor.join(timeout=30)
            if self._conductor.is_alive():
                log.error("conductor_stuck", label=self.label)
                owner = False
        self._jobs.put(None)  # the planning thread takes no new job (it checks _stop) and ends
        self._planner.terminate()  # a plan under way fails now instead of running to its timeout
        if self._planning is not None:
            self._planning.join(timeout=30)
        self._teardown()  # the client fails in-flight tasks: their TaskResolved events are posted
        if owner:  # the conductor is gone: this thread owns the state now
            with self._post_lock:
                self._closed = True
            self._drain_inbox()
        super().shutdown()

    def _teardown(self) -> None:
        if self.client is not None:
            self.client.close()
        self._planner.close()
        if self.cluster is not None:
            self.cluster.stop()

    # ------------------------------------------------------------------ posted from other threads

    def _node_changed(self, notice: p.NodeChanged) -> None:
        self._inbox.put(e.NodeChanged(notice.node_name, notice.state, notice.speed, time.monotonic()))

    def _monitored(self, _task_id: int, payload: bytes) -> None:
        """A worker's monitoring message (the client's I/O thread), for Parsl's monitoring hub;
        it comes before the result of its task, so the database has the try's end first."""
        assert self.monitoring_messages is not None
        self.monitoring_messages.put(pickle.loads(payload))  # noqa: S301 - as trusted as a result

    def _resolved(self, launch: e.Launch, sent: Future[Any]) -> None:
        """The dispatcher future's done-callback (the client's I/O thread): post, nothing more."""
        assert isinstance(sent, TaskFuture)
        self._inbox.put(e.TaskResolved(launch, sent, sent.node_name, sent.runtime_s, time.monotonic()))

    # ------------------------------------------------------------------ the conductor thread

    def _conduct(self) -> None:
        try:
            while True:
                timeout_s = self.state.next_check_s(time.monotonic())
                self._waiting = True
                try:
                    events = [self._inbox.get(timeout=timeout_s)]
                except queue.Empty:
                    events = []
                self._waiting = False
                with contextlib.suppress(queue.Empty):
                    while True:
                        events.append(self._inbox.get_nowait())
                if _STOP in events:  # shut down, then what came with it (results, late launches)
                    self._step(e.ShutDown(time.monotonic()))
                    for event in events:
                        if event is not _STOP:
                            self._step(event)
                    self._deliver()
                    return
                for event in events:
                    self._step(event)
                now = time.monotonic()
                self._step(e.Ticked(now, self._dfk.task_count if self._dfk is not None else 0))
                ended = self._ended_unlaunched()
                if ended:
                    self._step(e.LaunchesEnded(ended, now))
                self._deliver()
        except BaseException as exc:  # a bug in the loop itself: fail everything, refuse new work
            log.exception("conductor_failed", label=self.label)
            self._stop.set()
            self._step(e.ShutDown(time.monotonic()))
            self._deliver()
            for launch in list(self.state.in_flight.values()):
                _fail_one(launch, DispatcherUnavailable(f"executor {self.label}'s conductor failed: {exc!r}"))

    def _drain_inbox(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                event = self._inbox.get_nowait()
                if event is not _STOP:
                    self._step(event)
                    self._deliver()

    def _step(self, first: e.Event) -> None:
        """Hand ``first`` to the state and carry out its commands; the graphs the commands build
        are the next events, handled in the same turn."""
        pending: deque[e.Event] = deque([first])
        while pending:
            event = pending.popleft()
            try:
                commands = self.state.handle(event)
            except Exception as exc:  # a bug: say so, and end what the event was about
                log.exception("executor_event_failed", event_type=type(event).__name__)
                error = DispatchError(f"the executor failed to handle this task: {exc!r}")
                if isinstance(event, e.TaskLaunched | e.TaskResolved):
                    _fail_one(event.launch, error)
                batch = _window_of(event)
                if batch is not None and not isinstance(event, e.WindowAbandoned):
                    pending.append(e.WindowAbandoned(batch, error, time.monotonic()))
                continue
            for command in commands:
                try:
                    follow = self._carry_out(command)
                except Exception as exc:
                    log.exception("executor_command_failed", command=type(command).__name__)
                    follow = self._after_failed(command, exc)
                if follow is not None:
                    pending.append(follow)

    def _carry_out(self, command: e.Command) -> e.Event | None:
        match command:
            case e.Send() | e.Resolve() | e.Fail():
                self._outgoing.append(command)  # at the end of the turn: see _deliver
            case e.BuildWindowGraph():
                return self._build_window(command)
            case e.BuildReplanGraph():
                return self._build_replan(command)
            case e.RunPlanner():
                self._jobs.put(command.job)
            case e.ListNodes():
                self._jobs.put(_LIST_NODES)
            case e.Repin():
                assert self.client is not None
                self._deliver()  # the tasks it names must have been sent first
                self.client.repin([(self._sent[t], node, rank) for t, node, rank in command.moves if t in self._sent])
            case e.Log():
                getattr(log, command.level)(command.event, **command.fields)
        return None

    def _deliver(self) -> None:
        """Carry out the commands that wake another thread — a send wakes the client's I/O
        thread, a resolved Parsl future the thread waiting on it — last in the conductor's turn,
        just before it waits again: a woken thread needs the GIL, which the conductor would hold
        for the rest of its turn (the sequential round trip: ~0.1 ms a hop)."""
        while self._outgoing:
            command = self._outgoing.popleft()
            try:
                match command:
                    case e.Send():
                        self._send(command)
                    case e.Resolve():
                        self._resolve(command.launch, command.outcome)
                    case e.Fail():
                        for launch in command.launches:
                            _fail_one(launch, command.error)
            except Exception as exc:
                log.exception("executor_command_failed", command=type(command).__name__)
                follow = self._after_failed(command, exc)
                if follow is not None:
                    self._step(follow)

    def _after_failed(self, command: e.Command, exc: Exception) -> e.Event | None:
        """What a failed command means for the state, so that it does not wait forever."""
        now = time.monotonic()
        if isinstance(command, e.Send):  # the client is gone: the task ends with that error
            failed: Future[Any] = Future()
            failed.set_exception(exc if isinstance(exc, DispatchError) else DispatcherUnavailable(repr(exc)))
            return e.TaskResolved(command.launch, failed, None, None, now)
        if isinstance(command, e.BuildWindowGraph):  # the batch fails as a failed plan would
            return e.WindowGraphFailed(command.batch, exc, now)
        if isinstance(command, e.BuildReplanGraph):  # nothing to re-plan: the pool runs them
            return e.ReplanGraphBuilt(command.lost, (), Graph(()), now)
        if isinstance(command, e.Resolve | e.Fail):
            launches = (command.launch,) if isinstance(command, e.Resolve) else command.launches
            for launch in launches:
                _fail_one(launch, DispatchError(f"the executor could not resolve this task: {exc!r}"))
        return None

    def _send(self, command: e.Send) -> None:
        assert self.client is not None
        launch = command.launch
        sent = self.client.submit_payload(
            launch.payload,
            node=command.node,
            rank=command.rank,
            retry_on_node_loss=launch.retry_on_node_loss,
            soft_affinity=self.config.affinity == "soft",
        )
        self._sent[launch.tid] = sent
        sent.add_done_callback(functools.partial(self._resolved, launch))

    def _resolve(self, launch: e.Launch, outcome: Future[Any]) -> None:
        if self._sent.get(launch.tid) is outcome:
            del self._sent[launch.tid]
        if launch.future.done():
            self.duplicate_resolutions += 1
            earlier = launch.future.exception() if not launch.future.cancelled() else None
            log.warning("duplicate_resolution", tid=launch.tid, first=repr(earlier)[:200] if earlier else "a value",
                        total=self.duplicate_resolutions)  # fmt: skip
            return
        exc = outcome.exception()
        if exc is not None:
            launch.future.set_exception(exc)
        else:
            launch.future.set_result(outcome.result())

    def _ended_unlaunched(self) -> tuple[int, ...]:
        """Tasks that hold others back but finished without launching (dependency failed, memo)."""
        if self._dfk is None:
            return ()
        tasks = self._dfk.tasks
        return tuple(
            tid
            for tid in self.state.blocking()
            if (record := tasks.get(tid)) is None or record["status"] in FINAL_STATES
        )

    # ------------------------------------------------------------------ graphs, from the DFK

    def _build_window(self, command: e.BuildWindowGraph) -> e.WindowGraphBuilt:
        """The window's tasks: its batch, and every registered, unfinished, unplanned task of
        ours (the oldest, up to ``cap`` in all), so deep tasks are placed by the first plan."""
        planned = self.state.plan
        launched = {launch.tid for launch in command.batch}
        others: list[int] = []
        end = self._cursor
        if self._dfk is not None:
            records, end = new_records(self._dfk, self._cursor)
            others = [
                tid for tid, record in records
                if tid not in launched and tid not in planned
                and record["executor"] == self.label and record["status"] not in FINAL_STATES
            ]  # fmt: skip
        cap = command.cap
        if cap is not None and len(launched) + len(others) > cap:
            keep = max(0, cap - len(launched))
            end = min(end, others[keep])  # scan again from the first one left for a later window
            others = others[:keep]
        self._cursor = end
        tids = sorted([t for t in launched if t not in planned] + others)
        now = time.monotonic()
        graph, gating = window_graph(
            tids,
            {launch.tid: launch.function for launch in command.batch},
            self._dfk.tasks if self._dfk is not None else {},
            label=self.label,
            planned=planned,
            alive=self.state.speeds,
            runtimes=self.state.runtimes,
            default_cost_s=self.config.default_cost_s,
            default_output_bytes=self.config.default_output_bytes,
            min_start_s=now - self._t0,
        )
        return e.WindowGraphBuilt(command.batch, tuple(tids), graph, gating, now)

    def _build_replan(self, command: e.BuildReplanGraph) -> e.ReplanGraphBuilt:
        records = self._dfk.tasks if self._dfk is not None else {}
        tids = tuple(
            tid
            for tid in command.tids
            if tid < 0 or ((r := records.get(tid)) is not None and r["status"] not in FINAL_STATES)
        )
        now = time.monotonic()
        graph = replan_graph(
            tids,
            records,
            label=self.label,
            planned=self.state.plan,
            alive=self.state.speeds,
            default_output_bytes=self.config.default_output_bytes,
            min_start_s=now - self._t0,
        )
        return e.ReplanGraphBuilt(command.lost, tids, graph, now)

    # ------------------------------------------------------------------ the planning thread

    def _plan_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._stop.is_set():  # shut down: nothing more is planned (and no planner started)
                if job is not _LIST_NODES:
                    self._inbox.put(e.PlannerFailed(job, DispatcherUnavailable("shut down"), time.monotonic()))
                continue
            if job is _LIST_NODES:
                try:
                    assert self.client is not None
                    nodes = [n for n in self.client.nodes() if n.state == "alive"]
                except DispatchError:
                    log.exception("rejoin_check_failed")
                    continue
                alive = tuple(sorted((n.node_name, n.speed) for n in nodes))
                zones = tuple((n.node_name, n.zone) for n in nodes if n.zone)
                self._inbox.put(e.NodesListed(alive, time.monotonic(), zones))
                continue
            started = time.monotonic()
            try:
                network = job.network or self._live_network()
                canon = job.canon if job.network is not None else canonical(job.graph, network, self.config.scheduler)
                raw, saga_s = self._planner.plan(canon.graph if canon else job.graph, network, self.config.scheduler)
                plan = restore(raw, canon) if canon else raw
            except Exception as exc:
                self._inbox.put(e.PlannerFailed(job, exc, time.monotonic()))
                continue
            now = time.monotonic()
            self._inbox.put(e.PlannerReturned(job, plan, raw, canon, network, saga_s, now - started, now))

    def _live_network(self) -> Network:
        assert self.client is not None
        deadline = time.monotonic() + self.config.node_wait_timeout_s
        while True:
            nodes = [n for n in self.client.nodes() if n.state == "alive"]
            if nodes:
                alive = tuple(sorted((n.node_name, n.speed) for n in nodes))
                cfg = self.config
                return zoned(alive, cfg.bandwidth, {n.node_name: n.zone for n in nodes}, cfg.cross_zone_bandwidth)
            if time.monotonic() > deadline or self._stop.is_set():
                raise NoLiveNodes(
                    f"no node registered with the dispatcher within {self.config.node_wait_timeout_s:g} s"
                )
            time.sleep(0.1)


def _window_of(event: e.Event) -> tuple[e.Launch, ...] | None:
    """The launches of the window an event is about, if it is about one."""
    if isinstance(event, e.WindowGraphBuilt | e.WindowGraphFailed | e.WindowAbandoned):
        return event.batch
    if isinstance(event, e.PlannerReturned | e.PlannerFailed) and event.job.kind == "window":
        return event.job.batch
    return None


def _fail_one(launch: e.Launch, error: BaseException) -> None:
    if not launch.future.done():
        with contextlib.suppress(Exception):  # resolved meanwhile
            launch.future.set_exception(error)


@functools.lru_cache(maxsize=4096)
def _accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes keyword ``name`` (or **kwargs); unknown signatures are assumed to."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


__all__ = ["NoLiveNodes", "ParslCompatibilityError", "PlannedTask", "SagaDispatchExecutor"]
