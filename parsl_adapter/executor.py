"""SagaDispatchExecutor: a Parsl executor that places the whole task DAG with a SAGA scheduler.

How a task flows (the DFK calls ``submit()`` on its launch thread once the task's dependencies
are done, holding its global submit lock, so ``submit()`` never blocks):

1. ``submit()`` checks the cost hints, recovers the Parsl task id (``taskid.py``), packs the call
   as HTEX does, and returns a future at once.
2. A task not planned yet is *held*; the conductor thread plans when ``window.should_plan``
   says so: at once when the executor is idle (Nagle's rule: a lone task has nothing to wait
   for), otherwise in windows of at most ``max_delay_s`` while a stream of tasks keeps coming
   (or, inside ``with executor.plan():``, when the block exits). A plan SAGA has already made
   for the same shape (``plancache.py``) is taken on the spot, inside ``submit()``.
3. A plan covers every task of this executor registered in ``dfk.tasks`` and not yet planned —
   including those whose dependencies are still running — so deep tasks are placed by the first
   plan, not one at a time. It runs in the planning process (``planner.py``) on the nodes alive
   at that moment, with the speeds their agents report.
4. Each planned task leaves, when Parsl launches it, pinned to its node with rank = planned
   start, in rank order per node (``window.ReleaseOrder``).
5. Tasks registered after a plan (dynamic workflows) are planned incrementally: the earlier
   placements are kept as a partial schedule, new tasks start no earlier than now. Retries keep
   their placement.
6. When a node dies (the dispatcher says NODE_CHANGED), the unfinished tasks planned there are
   re-planned on the survivors (``replan=True``): queued ones are re-pinned at the dispatcher,
   later ones leave for their new node. Until then the dispatcher's shared pool bridges the gap.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from parsl.dataflow.states import FINAL_STATES
from parsl.executors.base import ParslExecutor
from parsl.serialize import pack_apply_message

from dispatcher import protocol as p
from dispatcher.client.client import Client, TaskFuture
from dispatcher.client.errors import DispatcherUnavailable
from dispatcher.local import LocalCluster
from dispatcher.runtime.errors import DispatchError
from dispatcher.runtime.logs import get_logger
from parsl_adapter.costs import RuntimeModel, hints_or_default, parse_hints
from parsl_adapter.dag import Captured, capture, holds_back
from parsl_adapter.placement import Edge, Graph, Network, Placed, Plan, PlanningError, Task, make_scheduler
from parsl_adapter.plancache import PlanCache, canonical, restore
from parsl_adapter.planner import PlannerProcess
from parsl_adapter.taskid import ParslCompatibilityError, TaskIdResolver, find_dfk, new_records
from parsl_adapter.window import ReleaseOrder, WindowConfig, should_plan

log = get_logger("saga_executor")

RESOURCE_SPEC_KWARG = "parsl_resource_specification"


class NoLiveNodes(DispatchError):
    """No node was alive to plan on within ``node_wait_timeout_s``."""


@dataclass(slots=True)
class _Launch:
    """A task Parsl launched that has not left for the dispatcher yet."""

    tid: int
    function: str
    payload: bytes
    future: Future[Any]
    retry_on_node_loss: bool = True


@dataclass(frozen=True, slots=True)
class PlannedTask:
    node: str
    rank: float
    end: float
    cost_s: float
    epoch: int


class SagaDispatchExecutor(ParslExecutor):
    """Place each task on the node a SAGA scheduler chose for it, via a saga-dispatch dispatcher."""

    def __init__(
        self,
        label: str = "saga_dispatch",
        address: str | None = None,
        *,
        scheduler: str | Any = "HEFT",
        replan: bool = True,
        affinity: Literal["strict", "soft"] = "strict",
        local_nodes: int = 4,
        local_speeds: Sequence[float] | None = None,
        workers_per_node: int = 1,
        flush_idle_s: float = 0.02,
        plan_idle_s: float = 1.0,
        max_held: int = 10_000,
        max_delay_s: float = 0.005,
        max_plan_tasks: int = 128,
        plan_cache_size: int = 256,
        history_size: int = 100_000,
        default_cost_s: float = 1.0,
        default_output_bytes: float = 0.0,
        bandwidth: float = 1e9,
        node_wait_timeout_s: float = 30.0,
        plan_timeout_s: float = 600.0,
        rejoin_grace_s: float = 3.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.label = label
        self.address = address
        make_scheduler(scheduler)  # an unknown name fails here, in the user's config
        self.scheduler = scheduler
        self.replan = replan
        if affinity not in ("strict", "soft"):
            raise ValueError(f"affinity must be 'strict' or 'soft', got {affinity!r}")
        self.affinity = affinity
        if local_nodes < 1:
            raise ValueError(f"local_nodes must be >= 1, got {local_nodes}")
        if local_speeds is not None and len(local_speeds) != local_nodes:
            raise ValueError(f"local_speeds has {len(local_speeds)} entries for {local_nodes} local_nodes")
        for name, value in (("default_cost_s", default_cost_s), ("default_output_bytes", default_output_bytes)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth}")
        self.local_nodes = local_nodes
        self.local_speeds = list(local_speeds) if local_speeds is not None else None
        self.workers_per_node = workers_per_node
        for name, value in (("flush_idle_s", flush_idle_s), ("plan_idle_s", plan_idle_s), ("max_delay_s", max_delay_s)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held}")
        if max_plan_tasks < 1:
            raise ValueError(f"max_plan_tasks must be >= 1, got {max_plan_tasks}")
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self.history_size = history_size
        """How many finished tasks keep their placement for :meth:`planned_node`, :meth:`ran_on`
        and a retry (the oldest are forgotten, so a long run's memory stays flat)."""
        self.max_plan_tasks = max_plan_tasks
        """Outside ``plan()``, a window plans at most this many tasks (the oldest first): SAGA's
        list schedulers grow faster than linearly, so big windows would starve the stream."""
        self.window = WindowConfig(flush_idle_s, plan_idle_s, max_held, max_delay_s)
        self.default_cost_s = default_cost_s
        self.default_output_bytes = default_output_bytes
        self.bandwidth = bandwidth
        self.node_wait_timeout_s = node_wait_timeout_s
        self.plan_timeout_s = plan_timeout_s
        self.rejoin_grace_s = rejoin_grace_s
        self.connect_timeout_s = connect_timeout_s

        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.runtimes = RuntimeModel()
        self.plans: deque[dict[str, Any]] = deque(maxlen=10_000)
        """One summary per plan (the latest 10,000): epoch, tasks, nodes, scheduler, planning
        seconds, planned makespan, whether it came from the plan cache."""
        self.plan_cache = PlanCache(plan_cache_size)
        self._planner = PlannerProcess(plan_timeout_s)
        self._resolver: TaskIdResolver | None = None
        self._dfk: Any = None
        self._lock = threading.Condition()
        self._held: list[_Launch] = []
        self._waiting: dict[int, _Launch] = {}
        self._plan: dict[int, PlannedTask] = {}
        self._ran_on: dict[int, str] = {}
        self._first_node: dict[int, str] = {}
        self._sent: dict[int, TaskFuture] = {}
        """Released to the dispatcher and not resolved yet (what a re-plan may re-pin)."""
        self._done: set[int] = set()
        self._finished: OrderedDict[int, None] = OrderedDict()
        """Resolved task ids, oldest last run first (a retry moves to the end): the history that
        ``history_size`` bounds."""
        self._node_events: deque[p.NodeChanged] = deque()
        self._rejoin_check_at: float | None = None
        """After a dispatcher restart: when to treat nodes that have not re-registered as lost."""
        self.duplicate_resolutions = 0
        """Results for tasks whose future was already resolved (should stay 0)."""
        self._order = ReleaseOrder()
        self._epoch = 0
        self._holding = 0
        self._flush_now = False
        self._planning = False
        """The conductor is planning (outside the lock): submit() must not plan inline meanwhile."""
        self._oldest_held = 0.0
        self._last_activity = 0.0
        self._seen_task_count = 0
        self._plan_cursor = 0
        self._speeds: dict[str, float] = {}
        """Alive nodes and their speeds, kept by NODE_CHANGED notices after one query."""
        self._network: Network | None = None
        """``_speeds`` as a Network; None when it must be asked of the dispatcher first."""
        self._synthetic = itertools.count(-1, -1)
        self._t0 = 0.0
        self._stop = threading.Event()
        self._conductor: threading.Thread | None = None

    # ------------------------------------------------------------------ ParslExecutor API

    def start(self) -> None:
        self._dfk = find_dfk(self)
        if self._dfk is not None:
            self._resolver = TaskIdResolver(self._dfk, self.label)
        if self.address is None:
            self.cluster = LocalCluster(
                self.local_nodes,
                speeds=self.local_speeds,
                workers=self.workers_per_node,
                log_dir=Path(self.run_dir) / self.label,
            )
            self.cluster.start()
            address = self.cluster.client_url
        else:
            address = self.address
        try:
            self.client = Client(address, connect_timeout_s=self.connect_timeout_s)
            self.client.on_node_change(self._node_changed)
            self.client.on_dispatcher_restart(self._dispatcher_restarted)
            self._planner.start()
        except BaseException:
            self._teardown()
            raise
        self._t0 = time.monotonic()
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
        launch = _Launch(tid, getattr(func, "__name__", "?"), payload, Future(), hints.retry_on_node_loss)
        launch.future.parsl_executor_task_id = tid  # type: ignore[attr-defined]
        with self._lock:
            now = self._last_activity = time.monotonic()
            if tid in self._plan:
                self._release_batch([launch])
            elif self._held or self._busy() or self._holding or not self._plan_from_cache(launch):
                if not self._held:
                    self._oldest_held = now
                self._held.append(launch)
                if len(self._held) == 1 or len(self._held) >= self.window.max_held:
                    self._lock.notify()  # the conductor sets its timer from the oldest held task
        return launch.future

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._conductor is not None:
            self._conductor.join(timeout=30)
        with self._lock:
            stranded = self._held + list(self._waiting.values())
            self._held, self._waiting = [], {}
        for launch in stranded:
            if not launch.future.done():
                launch.future.set_exception(DispatcherUnavailable(f"executor {self.label} shut down first"))
        self._teardown()
        super().shutdown()

    def _teardown(self) -> None:
        if self.client is not None:
            self.client.close()
        self._planner.close()
        if self.cluster is not None:
            self.cluster.stop()

    # ------------------------------------------------------------------ user API

    @contextlib.contextmanager
    def plan(self) -> Iterator[None]:
        """Hold launches while the block registers the DAG; plan it whole when the block exits."""
        with self._lock:
            self._holding += 1
        try:
            yield
        finally:
            with self._lock:
                self._holding -= 1
                self._flush_now = self._holding == 0
                self._lock.notify()

    def planned_node(self, task_id: int) -> str | None:
        """Where Parsl task ``task_id`` was planned (also after it finished, for the latest
        ``history_size`` finished tasks), or None."""
        planned = self._plan.get(task_id)
        return planned.node if planned is not None else None

    def ran_on(self, task_id: int) -> str | None:
        """The node that ran Parsl task ``task_id``, once it resolved."""
        return self._ran_on.get(task_id)

    def first_planned_node(self, task_id: int) -> str | None:
        """Where the first plan put Parsl task ``task_id`` (before any re-plan)."""
        return self._first_node.get(task_id)

    def planned(self, task_id: int) -> PlannedTask | None:
        return self._plan.get(task_id)

    # ------------------------------------------------------------------ conductor thread

    def _node_changed(self, notice: p.NodeChanged) -> None:
        """From the client's I/O thread: hand the notice to the conductor."""
        with self._lock:
            self._node_events.append(notice)
            self._lock.notify()

    def _dispatcher_restarted(self, dispatcher_id: str) -> None:
        """From the client's I/O thread: the dispatcher restarted and knows no nodes yet."""
        log.warning("dispatcher_restarted", dispatcher_id=dispatcher_id, rejoin_grace_s=self.rejoin_grace_s)
        with self._lock:
            self._rejoin_check_at = time.monotonic() + self.rejoin_grace_s
            self._network = None  # ask the restarted dispatcher which nodes are back
            self._lock.notify()

    def _missing_after_restart(self) -> list[str]:
        """Nodes with unfinished planned work that did not re-register with a restarted dispatcher.

        A fresh dispatcher knows only the agents that come back; tasks re-sent for a node that died
        meanwhile would wait ``pending_grace_s`` there. Treating it as lost after ``rejoin_grace_s``
        re-plans them now."""
        assert self.client is not None
        alive = {n.node_name for n in self.client.nodes() if n.state == "alive"}
        with self._lock:
            planned = {p.node for tid, p in self._plan.items() if tid not in self._done}
        return sorted(planned - alive)

    def _conduct(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._lock.wait(timeout=self._next_check())
                events = list(self._node_events)
                self._node_events.clear()
                rejoin_due = self._rejoin_check_at is not None and time.monotonic() >= self._rejoin_check_at
                if rejoin_due:
                    self._rejoin_check_at = None
            if rejoin_due:
                try:
                    events += [p.NodeChanged(name, "dead", 0, 1.0) for name in self._missing_after_restart()]
                except DispatchError:
                    log.exception("rejoin_check_failed")
            for notice in events:
                self._handle_node_change(notice)
            with self._lock:
                self._note_registrations()
                now = time.monotonic()
                due = bool(self._held) and (
                    self._flush_now
                    or should_plan(
                        now, held=len(self._held), oldest_held_at=self._oldest_held,
                        last_activity=self._last_activity, holding=self._holding > 0, busy=self._busy(),
                        config=self.window,
                    )
                )  # fmt: skip
                if due:
                    cap = None if self._flush_now or self._holding else self.max_plan_tasks
                    self._flush_now = False
                    self._planning = True
                    batch, self._held = self._held[:cap], self._held[cap:] if cap is not None else []
                    if self._held:  # what the cap left is due at once, in the next window
                        self._oldest_held = now - self.window.max_delay_s
                self._check_blockers()
            if due:
                try:
                    self._plan_and_release(batch, cap)
                except Exception as exc:  # never lose the batch: fail it explicitly
                    log.exception("plan_failed", tasks=len(batch))
                    _fail(batch, exc if isinstance(exc, DispatchError | PlanningError) else PlanningError(str(exc)))
                finally:
                    with self._lock:
                        self._planning = False

    def _busy(self) -> bool:
        """Tasks of ours in flight or being planned (Nagle's rule: then batch). Holds the lock."""
        return self._planning or bool(self._sent)

    def _next_check(self) -> float:
        """How long the conductor may sleep: until the held tasks' window could close. Holds the lock."""
        if not self._held:
            return 0.05
        if self._holding:
            return min(0.05, self.window.plan_idle_s)
        now = time.monotonic()
        due = min(self._oldest_held + self.window.max_delay_s, self._last_activity + self.window.flush_idle_s)
        return min(0.05, max(due - now, 0.0005))

    def _handle_node_change(self, notice: p.NodeChanged) -> None:
        with self._lock:
            if notice.state == "alive":
                self._speeds[notice.node_name] = notice.speed
            else:
                self._speeds.pop(notice.node_name, None)
            if self._network is not None:  # else nobody asked the dispatcher yet: the next plan will
                nodes = tuple(sorted(self._speeds.items()))
                self._network = Network(nodes, self.bandwidth) if nodes else None
        if notice.state == "alive":
            return
        log.warning("node_lost", node=notice.node_name, state=notice.state, replan=self.replan)
        if not self.replan:
            return
        try:
            self._replan(notice.node_name)
        except Exception:  # the dispatcher's pool still runs them: log, do not lose anything
            log.exception("replan_failed", node=notice.node_name)
            with self._lock:
                self._release(self._order.drop_node(notice.node_name), {})

    def _replan(self, lost: str) -> None:
        """Re-plan the unfinished tasks planned on ``lost`` over the surviving nodes."""
        records = self._dfk.tasks if self._dfk is not None else {}
        with self._lock:
            tids = [
                tid for tid, planned in self._plan.items()
                if planned.node == lost and tid not in self._done
                and (tid < 0 or ((r := records.get(tid)) is not None and r["status"] not in FINAL_STATES))
            ]  # fmt: skip
            held_back = self._order.drop_node(lost)
        if not tids:
            with self._lock:
                self._release(held_back, {})
            return
        network = self._live_network()
        captured = capture(records, self.label, tids)
        tasks = [Task(str(tid), self._plan[tid].cost_s) for tid in tids]
        edges, fixed, fixed_costs = self._dependencies(tids, captured, records)
        graph = Graph(tuple(tasks), tuple(edges), fixed, fixed_costs, time.monotonic() - self._t0)
        started = time.monotonic()
        result, saga_s = self._planner.plan(graph, network, self.scheduler)
        with self._lock:
            self._epoch += 1
            for name, placed in result.placed.items():
                tid = int(name)
                self._plan[tid] = PlannedTask(
                    placed.node, placed.start_s, placed.end_s, self._plan[tid].cost_s, self._epoch
                )
            repins = [(self._sent[t], self._plan[t].node, self._plan[t].rank) for t in tids if t in self._sent]
            assert self.client is not None
            self.client.repin(repins)
            summary = {
                "epoch": self._epoch, "replan_of": lost, "tasks": len(tasks), "repinned": len(repins),
                "nodes": len(network.nodes), "scheduler": result.scheduler, "saga_s": round(saga_s, 4),
                "plan_s": round(time.monotonic() - started, 4), "planned_makespan_s": round(result.makespan_s, 4),
            }  # fmt: skip
            self.plans.append(summary)
            log.info("replan_made", **summary)
            self._release(held_back, {})

    def _dependencies(
        self, tids: list[int], captured: dict[int, Captured], records: Any
    ) -> tuple[list[Edge], dict[str, Placed], dict[str, float]]:
        """Edges into the tasks being planned, and the earlier placements they hang from.

        A parent being planned now gives a plain edge; a parent placed by an earlier plan on a live
        node is fixed in the partial schedule; any other parent (finished and forgotten, on a node
        that is gone, not ours) gives no edge."""
        planning = set(tids)
        edges: list[Edge] = []
        fixed: dict[str, Placed] = {}
        fixed_costs: dict[str, float] = {}
        for tid in tids:
            c = captured.get(tid)
            for parent in c.parents if c is not None else ():
                if parent not in planning:
                    earlier = self._plan.get(parent)
                    if earlier is None or earlier.node not in self._speeds:
                        continue
                    fixed[str(parent)] = Placed(earlier.node, earlier.rank, earlier.end)
                    fixed_costs[str(parent)] = earlier.cost_s
                edges.append(Edge(str(parent), str(tid), _output_bytes(records.get(parent), self.default_output_bytes)))
        return edges, fixed, fixed_costs

    def _note_registrations(self) -> None:
        if self._dfk is not None and self._dfk.task_count != self._seen_task_count:
            self._seen_task_count = self._dfk.task_count
            self._last_activity = time.monotonic()

    def _check_blockers(self) -> None:
        """Tasks that hold others back but finished without launching (dependency failed, memo)."""
        if self._dfk is None:
            return
        tasks = self._dfk.tasks
        for tid in self._order.blocking():
            record = tasks.get(tid)
            if record is None or record["status"] in FINAL_STATES:
                self._release(self._order.gone(tid), {})

    # ------------------------------------------------------------------ planning

    def _live_network(self) -> Network:
        assert self.client is not None
        deadline = time.monotonic() + self.node_wait_timeout_s
        while True:
            alive = [(n.node_name, n.speed) for n in self.client.nodes() if n.state == "alive"]
            if alive:
                network = Network(tuple(sorted(alive)), self.bandwidth)
                with self._lock:
                    self._speeds, self._network = dict(alive), network
                return network
            if time.monotonic() > deadline or self._stop.is_set():
                raise NoLiveNodes(f"no node registered with the dispatcher within {self.node_wait_timeout_s:g} s")
            time.sleep(0.1)

    def _unplanned(self, batch: list[_Launch], cap: int | None = None) -> tuple[list[int], int]:
        """Task ids to plan now — the batch, and every registered, unfinished, unplanned task of
        ours (the oldest, up to ``cap`` in all) — and the scan cursor to keep once they are
        planned. Holds the lock."""
        launched = {launch.tid for launch in batch}
        others: list[int] = []
        end = self._plan_cursor
        if self._dfk is not None:
            records, end = new_records(self._dfk, self._plan_cursor)
            others = [
                tid for tid, record in records
                if tid not in launched and tid not in self._plan
                and record["executor"] == self.label and record["status"] not in FINAL_STATES
            ]  # fmt: skip
        if cap is not None and len(launched) + len(others) > cap:
            keep = max(0, cap - len(launched))
            end = min(end, others[keep])  # scan again from the first one left for a later window
            others = others[:keep]
        return sorted([t for t in launched if t not in self._plan] + others), end

    def _graph(self, tids: list[int], batch: list[_Launch], min_start_s: float) -> tuple[Graph, set[int]]:
        """The graph to plan ``tids`` as, and which of them gate others' release."""
        records = self._dfk.tasks if self._dfk is not None else {}
        captured = capture(records, self.label, tids)
        functions = {launch.tid: launch.function for launch in batch}
        planning = set(tids)
        tasks, gating = [], set()
        for tid in tids:
            c = captured.get(tid)
            function = c.function if c is not None else functions.get(tid, "?")
            hints = c.hints if c is not None else parse_hints(None)
            tasks.append(Task(str(tid), self.runtimes.cost(function, hints, self.default_cost_s)))
            if c is not None and holds_back(c, planning, self._plan):
                gating.add(tid)
        edges, fixed, fixed_costs = self._dependencies(tids, captured, records)
        return Graph(tuple(tasks), tuple(edges), fixed, fixed_costs, min_start_s), gating

    def _plan_from_cache(self, launch: _Launch) -> bool:
        """Plan ``launch`` (and whatever is registered unplanned) inside ``submit()`` if the plan
        cache already holds the plan; release it. Holds the lock; never waits."""
        network = self._network
        if network is None or self.plan_cache.size == 0:
            return False
        tids, cursor = self._unplanned([launch])
        graph, gating = self._graph(tids, [launch], time.monotonic() - self._t0)
        plan = self.plan_cache.get(canonical(graph, network, self.scheduler))
        if plan is None:
            return False
        self._plan_cursor = cursor
        self._apply(graph, network, plan, gating, saga_s=0.0, plan_s=0.0, cached=True)
        self._release_batch([launch])
        return True

    def _plan_and_release(self, batch: list[_Launch], cap: int | None = None) -> None:
        with self._lock:
            tids, self._plan_cursor = self._unplanned(batch, cap)
            if not tids:  # planned while they waited (a plan was under way): just let them go
                self._release_batch(batch)
                return
            network = self._network
        if network is None:
            network = self._live_network()
        started = time.monotonic()
        graph, gating = self._graph(tids, batch, started - self._t0)
        canon = canonical(graph, network, self.scheduler)
        with self._lock:
            plan = self.plan_cache.get(canon)
        saga_s, cached = 0.0, plan is not None
        if plan is None and canon is not None:
            raw, saga_s = self._planner.plan(canon.graph, network, self.scheduler)
            with self._lock:
                self.plan_cache.put(canon, raw)
            plan = restore(raw, canon)
        elif plan is None:
            plan, saga_s = self._planner.plan(graph, network, self.scheduler)
        with self._lock:
            self._apply(graph, network, plan, gating, saga_s=saga_s, plan_s=time.monotonic() - started, cached=cached)
            self._release_batch(batch)

    def _apply(
        self,
        graph: Graph,
        network: Network,
        plan: Plan,
        gating: set[int],
        *,
        saga_s: float,
        plan_s: float,
        cached: bool,
    ) -> None:
        """Record a new plan. Holds the lock."""
        self._epoch += 1
        costs = {t.name: t.cost_s for t in graph.tasks}
        for name, placed in plan.placed.items():
            tid = int(name)
            self._plan[tid] = PlannedTask(placed.node, placed.start_s, placed.end_s, costs[name], self._epoch)
            self._first_node.setdefault(tid, placed.node)
        self._order.add_plan(self._epoch, ((int(n), p.node, p.start_s) for n, p in plan.placed.items()), gating)
        summary = {
            "epoch": self._epoch, "tasks": len(graph.tasks), "edges": len(graph.edges), "fixed": len(graph.fixed),
            "nodes": len(network.nodes), "scheduler": plan.scheduler, "saga_s": round(saga_s, 4),
            "plan_s": round(plan_s, 4), "min_start_s": round(graph.min_start_s, 4),
            "planned_makespan_s": round(plan.makespan_s, 4), "cached": cached,
        }  # fmt: skip
        self.plans.append(summary)
        if not cached:
            log.info("plan_made", **summary)

    # ------------------------------------------------------------------ release and results

    def _release_batch(self, batch: list[_Launch]) -> None:
        """Release what ``batch`` (just launched, or just planned) lets go of, lowest rank first;
        park the rest. Holds the lock."""
        tids = [t for launch in batch for t in self._order.ready(launch.tid)]
        self._release(tids, {launch.tid: launch for launch in batch})

    def _release(self, tids: list[int], fresh: dict[int, _Launch]) -> None:
        """Send ``tids`` (launched and allowed to leave) to the dispatcher, lowest rank first (the
        client may flush them in more than one frame, and the dispatcher starts what it has);
        park the rest of ``fresh``. Holds the lock."""
        assert self.client is not None
        leaving = set(tids)  # a whole plan's batch can be thousands: no list scans per task
        for launch in fresh.values():
            if launch.tid not in leaving:
                self._waiting[launch.tid] = launch
        for tid in sorted(tids, key=lambda t: self._plan[t].rank) if len(tids) > 1 else tids:
            launch = fresh.get(tid) or self._waiting.pop(tid)
            planned = self._plan[tid]
            sent = self.client.submit_payload(
                launch.payload,
                node=planned.node,
                rank=planned.rank,
                retry_on_node_loss=launch.retry_on_node_loss,
                soft_affinity=self.affinity == "soft",
            )
            self._sent[tid] = sent
            self._done.discard(tid)  # a retry is unfinished again
            sent.add_done_callback(functools.partial(self._resolved, launch))

    def _resolved(self, launch: _Launch, sent: Future[Any]) -> None:
        assert isinstance(sent, TaskFuture)
        with self._lock:
            if self._sent.get(launch.tid) is sent:
                del self._sent[launch.tid]
            self._done.add(launch.tid)
            if sent.node_name:
                self._ran_on[launch.tid] = sent.node_name
            self._finished[launch.tid] = None
            self._finished.move_to_end(launch.tid)
            while len(self._finished) > self.history_size:
                self._forget(self._finished.popitem(last=False)[0])
        if sent.node_name and sent.runtime_s is not None and sent.node_name in self._speeds:
            self.runtimes.observe(launch.function, sent.runtime_s, self._speeds[sent.node_name])
        if launch.future.done():
            self.duplicate_resolutions += 1
            return
        exc = sent.exception()
        if exc is not None:
            launch.future.set_exception(exc)
        else:
            launch.future.set_result(sent.result())

    def _forget(self, tid: int) -> None:
        """Drop a finished task's placement (unless a retry is under way). Holds the lock."""
        if tid in self._done:
            self._done.discard(tid)
            self._plan.pop(tid, None)
            self._ran_on.pop(tid, None)
            self._first_node.pop(tid, None)


@functools.lru_cache(maxsize=4096)
def _accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes keyword ``name`` (or **kwargs); unknown signatures are assumed to."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _output_bytes(record: Any, default: float) -> float:
    if record is None:
        return default
    hinted = hints_or_default(record.get("resource_specification")).output_bytes
    return default if hinted is None else hinted


def _fail(batch: list[_Launch], exc: BaseException) -> None:
    for launch in batch:
        if not launch.future.done():
            launch.future.set_exception(exc)


__all__ = ["NoLiveNodes", "ParslCompatibilityError", "SagaDispatchExecutor"]
