"""The executor's state machine: ``handle(event) -> list[command]``, time passed in as data.

One thread owns it (the executor's conductor); ``submit()``, the client's callbacks and the
planning thread only post events to that thread. The shell (``executor.py``) carries out the
commands: it reads Parsl's DFK to build graphs, runs the planner off the conductor, submits,
re-pins and resolves futures. Rules (``validate_state()`` checks them after every transcript step):

1. Every launch Parsl handed us is in exactly one place: *held* (launched, not planned yet),
   in the batch of the one window plan under way, *waiting* (planned; the release order holds
   it back behind an earlier-ranked task of its plan on its node), or *in flight* at the
   dispatcher. It leaves them only by a resolution, a failure or shut-down: nothing is dropped.
2. A held launch is not planned; a waiting or in-flight one is. A launch whose task is already
   planned (a deep task of an earlier plan, a retry) is never held.
3. One window plan at a time. Nagle's rule (``window.should_plan``): an idle executor plans a
   launch at once; under a stream, launches are batched in windows of at most ``max_delay_s``
   and ``max_plan_tasks``; inside ``plan()`` the block's exit (or ``plan_idle_s`` without
   activity) decides. A plan SAGA already made for the same shape comes from the plan cache.
4. Planned tasks leave in per-node plan order (``window.ReleaseOrder``), pinned to their node
   with rank = planned start.
5. A node that dies (or does not come back within ``rejoin_grace_s`` of a dispatcher restart)
   has its unfinished planned tasks re-planned on the survivors (``replan``): those still
   queued are re-pinned, later ones leave for their new node. Tasks a plan put on a node that
   died while it was being made are re-planned the same way.
6. The first resolution of a launch resolves Parsl's future; it teaches the per-function
   runtime model. Finished tasks are remembered for the newest ``history_size`` only.
7. Shut-down fails everything not yet in flight with DispatcherUnavailable; in-flight tasks
   fail when the client closes.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import Any, Final, Literal, assert_never

from dispatcher.client.errors import DispatcherUnavailable
from dispatcher.runtime.errors import DispatchError
from parsl_adapter import events as e
from parsl_adapter.config import ExecutorConfig
from parsl_adapter.costs import RuntimeModel
from parsl_adapter.history import History
from parsl_adapter.placement import Graph, Network, Plan, PlanningError, zoned
from parsl_adapter.plancache import PlanCache, canonical
from parsl_adapter.timeline import TimelineEntry
from parsl_adapter.window import ReleaseOrder, should_plan

BUILDING: Final = -1
"""``window_job`` while the shell builds a window's graph (it answers within the same turn)."""


class ExecutorState:
    """All the executor's scheduling state. Change it only through :meth:`handle`."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.held: list[e.Launch] = []
        self.oldest_held = 0.0
        self.last_activity = 0.0
        self.registered = 0
        self.holding = 0
        self.flush_now = False
        self.window_job: int | None = None
        """The window plan under way: BUILDING, a job id, or None."""
        self.jobs: dict[int, e.PlanJob] = {}
        self._job_ids = 0
        self.plan: dict[int, e.PlannedTask] = {}
        self.first_node: dict[int, str] = {}
        self.ran_on: dict[int, str] = {}
        self.timeline: dict[int, TimelineEntry] = {}
        """Finished planned tasks, planned against actual (their latest try), as long as the
        history keeps them. Actual times on the conductor's clock (the shell makes them
        relative to the executor's start, as the ranks are)."""
        self.waiting: dict[int, e.Launch] = {}
        self.in_flight: dict[int, e.Launch] = {}
        self.done: set[int] = set()
        """Planned tasks that resolved (and are not being retried)."""
        self.history = History(config.history_size)
        self.order = ReleaseOrder()
        self.epoch = 0
        self.speeds: dict[str, float] = {}
        """Alive nodes and their speeds."""
        self.zones: dict[str, str] = {}
        """Nodes' zones, as the dispatcher's node lists said them (a node only heard of in a
        NODE_CHANGED has none until the next list)."""
        self.network: Network | None = None
        """``speeds`` as a Network (no nodes: none is alive); None while the dispatcher's list is
        not known (before the first plan asks for it, after a restart)."""
        self.unknown_changes: dict[str, float | None] = {}
        """Node changes heard while ``network`` is None (speed, or None for gone): a node list
        the dispatcher gave before them is brought up to date with them when it arrives."""
        self.rejoin_at: float | None = None
        self.replanning: dict[str, list[int]] = {}
        """Lost node -> waiting tasks its release queues held back, released once its re-plan lands."""
        self.plans: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.plan_cache = PlanCache(config.plan_cache_size)
        self.runtimes = RuntimeModel()
        self.stopped = False
        self._out: list[e.Command] = []

    # ------------------------------------------------------------------ entry point

    def handle(self, event: e.Event) -> list[e.Command]:
        """Apply one event; return what the shell must do, in order."""
        self._out = out = list[e.Command]()
        match event:
            case e.TaskLaunched():
                self._handle_task_launched(event)
            case e.HoldingChanged():
                self._handle_holding_changed(event)
            case e.WindowGraphBuilt():
                self._handle_window_graph_built(event)
            case e.WindowGraphFailed():
                assert self.window_job == BUILDING, self.window_job
                self.window_job = None
                self._fail_window(event.batch, event.error)
                self._maybe_plan(event.now)
            case e.ReplanGraphBuilt():
                self._handle_replan_graph_built(event)
            case e.PlannerReturned():
                self._handle_planner_returned(event)
            case e.PlannerFailed():
                self._handle_planner_failed(event)
            case e.TaskResolved():
                self._handle_task_resolved(event)
            case e.NodeChanged():
                self._handle_node_changed(event)
            case e.DispatcherRestarted():
                self._handle_dispatcher_restarted(event)
            case e.NodesListed():
                self._handle_nodes_listed(event)
            case e.LaunchesEnded():
                for tid in event.tids:
                    self._release(self.order.gone(tid), {})
            case e.Ticked():
                self._handle_ticked(event)
            case e.ShutDown():
                self._handle_shut_down()
            case e.WindowAbandoned():
                self._handle_window_abandoned(event)
            case _:  # pragma: no cover - the Event union is closed
                assert_never(event)
        self._out = []
        return out

    @property
    def busy(self) -> bool:
        """Tasks of ours in flight or being planned (Nagle's rule: then batch)."""
        return bool(self.in_flight) or bool(self.jobs) or self.window_job is not None

    def next_check_s(self, now: float) -> float:
        """How long the conductor may wait for events: until the held tasks' window could
        close, or a rejoin check is due; at most 50 ms (registrations are watched by ticks)."""
        wait = 0.05
        if self.rejoin_at is not None:
            wait = min(wait, max(self.rejoin_at - now, 0.0005))
        if not self.held or self.window_job is not None:
            return wait
        cfg = self.config.window
        if self.holding:
            return min(wait, cfg.plan_idle_s)
        due = min(self.oldest_held + cfg.max_delay_s, self.last_activity + cfg.flush_idle_s)
        return min(wait, max(due - now, 0.0005))

    def blocking(self) -> list[int]:
        """Planned tasks that hold launched ones back: the shell reports those that ended unlaunched."""
        return self.order.blocking()

    # ------------------------------------------------------------------ launches and windows

    def _handle_task_launched(self, event: e.TaskLaunched) -> None:
        launch = event.launch
        if self.stopped:
            self._out.append(e.Fail((launch,), DispatcherUnavailable("the executor was shut down")))
            return
        self.last_activity = event.now
        if launch.tid in self.plan:
            self._release_batch([launch])
            return
        if not self.held:
            self.oldest_held = event.now
        self.held.append(launch)
        self._maybe_plan(event.now)

    def _handle_holding_changed(self, event: e.HoldingChanged) -> None:
        self.holding += event.delta
        if event.delta < 0 and self.holding == 0:
            self.flush_now = True
        self._maybe_plan(event.now)

    def _handle_ticked(self, event: e.Ticked) -> None:
        if event.registered != self.registered:
            self.registered = event.registered
            self.last_activity = event.now
        if self.rejoin_at is not None and event.now >= self.rejoin_at:
            self.rejoin_at = None
            self._out.append(e.ListNodes())
        self._maybe_plan(event.now)

    def _maybe_plan(self, now: float) -> None:
        """Start a window plan if rule 3 says one is due."""
        if self.window_job is not None or not self.held or self.stopped:
            return
        cfg = self.config.window
        busy = self.busy
        due = self.flush_now or should_plan(
            now, held=len(self.held), oldest_held_at=self.oldest_held, last_activity=self.last_activity,
            holding=self.holding > 0, busy=busy, config=cfg,
        )  # fmt: skip
        if not due:
            return
        cap = None if self.flush_now or self.holding else self.config.max_plan_tasks
        self.flush_now = False
        batch, self.held = (self.held[:cap], self.held[cap:]) if cap is not None else (self.held, [])
        if self.held:  # what the cap left is due at once, in the next window
            self.oldest_held = now - cfg.max_delay_s
        self.window_job = BUILDING
        self._out.append(e.BuildWindowGraph(tuple(batch), cap))

    def _handle_window_graph_built(self, event: e.WindowGraphBuilt) -> None:
        assert self.window_job == BUILDING, self.window_job
        if not event.graph.tasks:  # planned while they waited: let them go
            self.window_job = None
            self._release_batch(list(event.batch))
            self._maybe_plan(event.now)
            return
        network = self.network if self.network is not None and self.network.nodes else None  # else wait
        canon = canonical(event.graph, network, self.config.scheduler) if network is not None else None
        plan = self.plan_cache.get(canon)
        if plan is not None and network is not None:
            self.window_job = None
            self._apply_window(
                event.batch, event.graph, network, plan, gating=event.gating, saga_s=0.0, plan_s=0.0, cached=True
            )
            self._maybe_plan(event.now)
            return
        job = self._new_job("window", event.graph, network, canon, batch=event.batch, gating=event.gating)
        self.window_job = job.job_id
        self._out.append(e.RunPlanner(job))

    def _new_job(
        self, kind: Literal["window", "replan"], graph: Graph, network: Network | None, canon: Any = None, **kw: Any
    ) -> e.PlanJob:
        self._job_ids += 1
        job = e.PlanJob(self._job_ids, kind, graph, network, canon, **kw)
        self.jobs[job.job_id] = job
        return job

    def _handle_planner_returned(self, event: e.PlannerReturned) -> None:
        job = self.jobs.pop(event.job.job_id, None)
        if job is None:  # shut down meanwhile: its batch has failed already
            return
        if event.canon is not None:
            self.plan_cache.put(event.canon, event.raw)
        if self.network is None:  # the planner asked the dispatcher: that is what is alive
            self._adopt(event.network)
        if job.kind == "window":
            self.window_job = None
            if self.stopped:
                self._out.append(e.Fail(job.batch, DispatcherUnavailable("the executor was shut down")))
                return
            self._apply_window(
                job.batch, job.graph, event.network, event.plan,
                gating=job.gating, saga_s=event.saga_s, plan_s=event.plan_s, cached=False,
            )  # fmt: skip
        else:
            self._apply_replan(job, event)
        self._maybe_plan(event.now)

    def _handle_planner_failed(self, event: e.PlannerFailed) -> None:
        job = self.jobs.pop(event.job.job_id, None)
        if job is None:
            return
        if job.kind == "window":
            self.window_job = None
            self._fail_window(job.batch, event.error)
            self._maybe_plan(event.now)
        else:  # the dispatcher's pool still runs them: log, lose nothing
            self._log("replan_failed", "error", node=job.lost, error=repr(event.error))
            self._release(self.replanning.pop(job.lost, []), {})

    def _fail_window(self, batch: tuple[e.Launch, ...], error: BaseException) -> None:
        """Never lose a batch: fail it explicitly (Parsl's retries may act on it)."""
        self._log("plan_failed", "error", tasks=len(batch), error=repr(error))
        if not isinstance(error, DispatchError | PlanningError):
            error = PlanningError(str(error))
        self._out.append(e.Fail(batch, error))

    def _apply_window(
        self,
        batch: tuple[e.Launch, ...],
        graph: Graph,
        network: Network,
        plan: Plan,
        *,
        gating: frozenset[int],
        saga_s: float,
        plan_s: float,
        cached: bool,
    ) -> None:
        self.epoch += 1
        costs = {t.name: t.cost_s for t in graph.tasks}
        for name, placed in plan.placed.items():
            tid = int(name)
            self.plan[tid] = e.PlannedTask(placed.node, placed.start_s, placed.end_s, costs[name], self.epoch)
            self.first_node.setdefault(tid, placed.node)
        self.order.add_plan(self.epoch, ((int(n), p.node, p.start_s) for n, p in plan.placed.items()), set(gating))
        summary = {
            "epoch": self.epoch, "tasks": len(graph.tasks), "edges": len(graph.edges), "fixed": len(graph.fixed),
            "nodes": len(network.nodes), "scheduler": plan.scheduler, "saga_s": round(saga_s, 4),
            "plan_s": round(plan_s, 4), "min_start_s": round(graph.min_start_s, 4),
            "planned_makespan_s": round(plan.makespan_s, 4), "cached": cached,
        }  # fmt: skip
        self.plans.append(summary)
        if not cached:
            self._log("plan_made", **summary)
        planned_held = [launch for launch in self.held if launch.tid in self.plan]  # planned as registered ones
        if planned_held:
            self.held = [launch for launch in self.held if launch.tid not in self.plan]
        # One release, so one rank order: a root Parsl launched while SAGA planned is planned as a
        # registered task, and released after the batch it may rank before would start after it.
        self._release_batch([*batch, *planned_held])
        self._lost_while_planning(plan)

    def _lost_while_planning(self, plan: Plan) -> None:
        """Rule 5: a node a plan placed tasks on died while it was being made: re-plan them."""
        if self.network is not None and self.config.replan:
            for node in sorted({p.node for p in plan.placed.values()} - self.speeds.keys()):
                self._node_lost(node)

    # ------------------------------------------------------------------ release and results

    def _release_batch(self, batch: list[e.Launch]) -> None:
        """Release what ``batch`` (just launched, or just planned) lets go of; park the rest."""
        tids = [t for launch in batch for t in self.order.ready(launch.tid)]
        self._release(tids, {launch.tid: launch for launch in batch})

    def _release(self, tids: list[int], fresh: dict[int, e.Launch]) -> None:
        """Send ``tids`` (launched and allowed to leave), lowest rank first; park the rest of ``fresh``."""
        leaving = set(tids)  # a whole plan's batch can be thousands: no list scans per task
        for launch in fresh.values():
            if launch.tid not in leaving:
                self.waiting[launch.tid] = launch
        for tid in sorted(tids, key=lambda t: self.plan[t].rank) if len(tids) > 1 else tids:
            launch = fresh.get(tid) or self.waiting.pop(tid)
            planned = self.plan[tid]
            self.in_flight[tid] = launch
            self.done.discard(tid)  # a retry is unfinished again
            self._out.append(e.Send(launch, planned.node, planned.rank))

    def _handle_task_resolved(self, event: e.TaskResolved) -> None:
        launch = event.launch
        tid = launch.tid
        if self.in_flight.get(tid) is launch:
            del self.in_flight[tid]
        self.done.add(tid)
        if event.node_name:
            self.ran_on[tid] = event.node_name
        planned = self.plan.get(tid)
        if planned is not None:
            run_s = event.runtime_s or 0.0
            self.timeline[tid] = TimelineEntry(
                tid, launch.function, planned.node, planned.rank, planned.end, self.first_node.get(tid, planned.node),
                event.node_name or "", event.now - run_s, event.now, _succeeded(event.outcome), planned.epoch,
            )  # fmt: skip
        for old in self.history.finished(tid):
            self._forget(old)
        speed = self.speeds.get(event.node_name or "")
        if speed is not None and event.runtime_s is not None:
            self.runtimes.observe(launch.function, event.runtime_s, speed)
        self._out.append(e.Resolve(launch, event.outcome))
        self._maybe_plan(event.now)

    def _forget(self, tid: int) -> None:
        """Drop a finished task's placement (unless a retry is under way) and its timeline entry."""
        self.timeline.pop(tid, None)
        if tid in self.done:
            self.done.discard(tid)
            self.plan.pop(tid, None)
            self.ran_on.pop(tid, None)
            self.first_node.pop(tid, None)

    # ------------------------------------------------------------------ nodes

    def _adopt(self, network: Network) -> None:
        """The dispatcher's node list (as it was when asked), with the changes heard since."""
        speeds = dict(network.nodes)
        for node, speed in self.unknown_changes.items():
            if speed is None:
                speeds.pop(node, None)
            else:
                speeds[node] = speed
        self.unknown_changes = {}
        self.speeds = speeds
        self.zones.update(network.zones)
        self.network = self._network()

    def _network(self) -> Network:
        """The alive nodes as SAGA plans on them: their speeds, and links by zone (``zoned``)."""
        cfg = self.config
        return zoned(tuple(sorted(self.speeds.items())), cfg.bandwidth, self.zones, cfg.cross_zone_bandwidth)

    def _handle_node_changed(self, event: e.NodeChanged) -> None:
        alive = event.state == "alive"
        if alive:
            self.speeds[event.node_name] = event.speed
        else:
            self.speeds.pop(event.node_name, None)
        if self.network is not None:
            self.network = self._network()
        else:  # nobody has the dispatcher's list yet: keep the change for it
            self.unknown_changes[event.node_name] = event.speed if alive else None
        if event.state == "alive" or self.stopped:
            return
        self._log("node_lost", "warning", node=event.node_name, state=event.state, replan=self.config.replan)
        if self.config.replan:
            self._node_lost(event.node_name)

    def _node_lost(self, node: str) -> None:
        """Rule 5: re-plan ``node``'s unfinished planned tasks; until then its held-back ones wait."""
        held_back = self.order.drop_node(node)
        tids = tuple(tid for tid, p in self.plan.items() if p.node == node and tid not in self.done)
        if not tids:
            self._release(held_back, {})
            return
        self.replanning.setdefault(node, []).extend(held_back)
        self._out.append(e.BuildReplanGraph(node, tids))

    def _handle_replan_graph_built(self, event: e.ReplanGraphBuilt) -> None:
        if not event.graph.tasks:
            self._release(self.replanning.pop(event.lost, []), {})
            return
        self._out.append(e.RunPlanner(self._new_job("replan", event.graph, None, lost=event.lost)))

    def _apply_replan(self, job: e.PlanJob, event: e.PlannerReturned) -> None:
        self.epoch += 1
        moved = []
        for name, placed in event.plan.placed.items():
            tid = int(name)
            old = self.plan.get(tid)
            cost_s = old.cost_s if old is not None else self.config.default_cost_s
            self.plan[tid] = e.PlannedTask(placed.node, placed.start_s, placed.end_s, cost_s, self.epoch)
            moved.append(tid)
        moves = tuple((t, self.plan[t].node, self.plan[t].rank) for t in moved if t in self.in_flight)
        if moves:
            self._out.append(e.Repin(moves))
        summary = {
            "epoch": self.epoch, "replan_of": job.lost, "tasks": len(job.graph.tasks), "repinned": len(moves),
            "nodes": len(event.network.nodes), "scheduler": event.plan.scheduler, "saga_s": round(event.saga_s, 4),
            "plan_s": round(event.plan_s, 4), "planned_makespan_s": round(event.plan.makespan_s, 4),
        }  # fmt: skip
        self.plans.append(summary)
        self._log("replan_made", **summary)
        self._release(self.replanning.pop(job.lost, []), {})
        self._lost_while_planning(event.plan)

    def _handle_dispatcher_restarted(self, event: e.DispatcherRestarted) -> None:
        self._log("dispatcher_restarted", "warning", rejoin_grace_s=self.config.rejoin_grace_s)
        self.rejoin_at = event.now + self.config.rejoin_grace_s
        self.network = None  # ask the restarted dispatcher which nodes are back
        self.unknown_changes = {}

    def _handle_nodes_listed(self, event: e.NodesListed) -> None:
        """After a restart's grace: nodes with unfinished planned work that did not come back are lost."""
        self._adopt(Network(event.alive, self.config.bandwidth, zones=dict(event.zones)))
        alive = set(self.speeds)
        planned = {p.node for tid, p in self.plan.items() if tid not in self.done}
        for node in sorted(planned - alive):
            self._log("node_lost", "warning", node=node, state="did not re-register", replan=self.config.replan)
            if self.config.replan:
                self._node_lost(node)

    def _handle_window_abandoned(self, event: e.WindowAbandoned) -> None:
        """A step about this window failed (a bug): end its launches that did not leave, with
        the error, and let planning go on."""
        ours = {id(launch) for launch in event.batch}
        self.held = [launch for launch in self.held if id(launch) not in ours]
        for launch in event.batch:
            if self.waiting.get(launch.tid) is launch:
                del self.waiting[launch.tid]
                self.order.forget(launch.tid)
        self.jobs = {i: job for i, job in self.jobs.items() if job.kind != "window"}
        self.window_job = None
        stranded = tuple(launch for launch in event.batch if self.in_flight.get(launch.tid) is not launch)
        if stranded:
            self._out.append(e.Fail(stranded, event.error))
        self._maybe_plan(event.now)

    def _handle_shut_down(self) -> None:
        self.stopped = True
        stranded = [*self.held, *self.waiting.values()]
        stranded += [launch for job in self.jobs.values() if job.kind == "window" for launch in job.batch]
        self.held, self.waiting, self.replanning = [], {}, {}
        self.jobs, self.window_job = {}, None  # their answers, if they come, find nothing to do
        self.order = ReleaseOrder()  # nothing is held back any more: it all failed
        if stranded:
            self._out.append(e.Fail(tuple(stranded), DispatcherUnavailable("the executor was shut down first")))

    # ------------------------------------------------------------------ helpers

    def _log(self, event: str, level: Any = "info", **fields: Any) -> None:
        self._out.append(e.Log(event, level, fields))

    def validate_state(self) -> None:
        """Assert the rules at the top of this module. For tests; O(tasks)."""
        places: dict[int, str] = {}

        def put(tid: int, where: str) -> None:
            assert tid not in places, f"task {tid} is {places[tid]} and {where}"
            places[tid] = where

        window = self.jobs.get(self.window_job) if self.window_job not in (None, BUILDING) else None
        for launch in self.held:
            put(launch.tid, "held")
            assert launch.tid not in self.plan, f"held task {launch.tid} is planned"
        for launch in window.batch if window is not None else ():
            put(launch.tid, "being planned")
        for tid, launch in self.waiting.items():
            assert launch.tid == tid
            put(tid, "waiting")
            assert tid in self.plan, f"waiting task {tid} is not planned"
        for tid, launch in self.in_flight.items():
            assert launch.tid == tid
            put(tid, "in flight")
            assert tid in self.plan, tid
            assert tid not in self.done, tid
        parked = set(chain.from_iterable(self.replanning.values()))
        assert set(self.waiting) == self.order.held_back | parked, (set(self.waiting), self.order.held_back, parked)
        assert len(self.history) <= self.config.history_size
        assert all(tid in self.history for tid in self.timeline), "a timeline entry outlived its task's history"
        if self.network is not None:
            assert dict(self.network.nodes) == self.speeds, (self.network, self.speeds)
        assert all(job.job_id == i for i, job in self.jobs.items())
        assert sum(job.kind == "window" for job in self.jobs.values()) <= 1
        if self.window_job not in (None, BUILDING):  # BUILDING is answered within the step that set it
            assert window is not None, self.window_job
            assert window.kind == "window", window
        if self.stopped:
            assert not self.held, self.held
            assert not self.waiting, self.waiting
            assert not self.replanning, self.replanning
            assert not self.jobs, self.jobs
        assert len(parked) == sum(map(len, self.replanning.values())), self.replanning
        assert not parked & self.order.held_back, parked


def _succeeded(outcome: Any) -> bool:
    """The future resolved with a value (it is done: the client resolved it before posting)."""
    return outcome.done() and not outcome.cancelled() and outcome.exception() is None
