"""Placement: a task graph and a network, through a SAGA scheduler, into a plan. Pure; no I/O.

``plan(graph, network, scheduler)`` validates everything SAGA would choke on *before* calling it,
and checks what comes back, because anrg-saga is unforgiving:

* every node pair needs an explicit positive link speed (a missing pair becomes 0, and HEFT,
  CPOP, MinMin and MaxMin divide by it); speeds and costs must be positive and finite;
* a cycle makes MinMin, MaxMin and ETF loop forever, so acyclicity is checked here;
* ``TaskGraph.create`` adds zero-cost ``__super_source__``/``__super_sink__`` tasks to
  multi-root graphs (and is O(V·E)), and zero-cost tasks make HEFT and CPOP fail with
  "overlaps with next task": the raw constructor is used and costs are floored at
  :data:`MIN_COST_S`;
* a partial schedule passed as ``schedule=`` is mutated, so a fresh one is built per call; the
  rank functions keep unbounded ``lru_cache``\\s, cleared after every call;
* some schedulers drop tasks (HbmctScheduler placed 136 of 200 in our probe) or ignore the
  partial schedule: the result is checked, and a scheduler that loses tasks is an error.

Incremental placement: ``fixed`` tasks (already placed, still relevant as parents or as load on a
node) go in as a partial schedule; new tasks start no earlier than ``min_start_s``. Schedulers
that ignore the partial schedule still get the new tasks' edges from fixed parents dropped, and
their plan shifted to start at ``min_start_s``, so ranks stay comparable across plans.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any, Final

MIN_COST_S: Final = 1e-6
"""Floor for task costs: zero-cost tasks break HEFT and CPOP."""
_SUPER = frozenset({"__super_source__", "__super_sink__"})


class PlanningError(ValueError):
    """The graph, the network or the scheduler's result is not usable."""


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    cost_s: float
    """Seconds on a speed-1 node."""


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    size_bytes: float


@dataclass(frozen=True, slots=True)
class Placed:
    """A task's place in a plan: its node and planned start/end (seconds on the plan's clock)."""

    node: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Network:
    nodes: tuple[tuple[str, float], ...]
    """(node name, speed)."""
    bandwidth: float
    """Bytes per second between two different nodes (same node: infinite)."""
    links: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """Per-pair overrides of ``bandwidth`` (either order)."""
    zones: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each node is (its Kubernetes Node's ``topology.kubernetes.io/zone``), where known:
    what ``links`` were derived from (``zoned``), kept so a changed node list can derive them again."""

    def link(self, a: str, b: str) -> float:
        if a == b:
            return math.inf
        return self.links.get((a, b), self.links.get((b, a), self.bandwidth))


def zoned(
    nodes: tuple[tuple[str, float], ...], bandwidth: float, zones: Mapping[str, str], cross_zone: float | None
) -> Network:
    """The network of ``nodes``: ``bandwidth`` between two nodes of one zone (or of unknown zones),
    ``cross_zone`` between nodes of two different known zones (None: ``bandwidth`` everywhere)."""
    known = {name: zones[name] for name, _ in nodes if zones.get(name)}
    links: dict[tuple[str, str], float] = {}
    if cross_zone is not None and cross_zone != bandwidth:
        names = sorted(known)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if known[a] != known[b]:
                    links[a, b] = cross_zone
    return Network(nodes, bandwidth, links, known)


@dataclass(frozen=True, slots=True)
class Graph:
    tasks: tuple[Task, ...]
    edges: tuple[Edge, ...] = ()
    fixed: Mapping[str, Placed] = field(default_factory=dict)
    """Already-placed tasks new ones may depend on; edges may come from them, never go to them."""
    fixed_costs: Mapping[str, float] = field(default_factory=dict)
    min_start_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    placed: dict[str, Placed]
    """New tasks only."""
    makespan_s: float
    scheduler: str


# --------------------------------------------------------------------------- schedulers


def _factories() -> dict[str, Callable[[], Any]]:
    import saga.schedulers as s

    out: dict[str, Callable[[], Any]] = {}
    for class_name in s.__all__:
        out[_norm(class_name)] = getattr(s, class_name)
    # Hybrid needs its members: take the better of HEFT and CPOP per graph.
    out["hybrid"] = lambda: s.HybridScheduler(schedulers=[s.HeftScheduler(), s.CpopScheduler()])
    return out


def _norm(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    return key.removesuffix("scheduler")


_ACRONYMS: Final = {"Heft": "HEFT", "Cpop": "CPOP", "Hbmct": "HBMCT", "Msbc": "MSBC"}


def scheduler_names() -> list[str]:
    """Every SAGA scheduler selectable by name (case-insensitive; a ``Scheduler`` suffix is optional)."""
    import saga.schedulers as s

    names = (n.removesuffix("Scheduler") for n in s.__all__)
    return sorted((_ACRONYMS.get(n, n) for n in names), key=str.lower)


KNOWN_SCHEDULERS: Final = frozenset(
    _norm(n)
    for n in (
        "BIL", "BruteForce", "CPOP", "DPS", "Duplex", "ETF", "FastestNode", "FCP", "FLB", "GDL", "HBMCT", "HEFT",
        "Hybrid", "MaxMin", "MCT", "MET", "MinMin", "MSBC", "MST", "OLB", "PEFT", "SMT", "Sufferage", "WBA",
    )
)  # fmt: skip
"""The names ``scheduler_names()`` gives for the pinned anrg-saga (a unit test keeps them equal),
so a user's config is checked without importing SAGA (seconds) into Parsl's process: only the
planning process needs it."""


def check_scheduler(spec: str | Any) -> None:
    """Raise PlanningError for a name that is no SAGA scheduler (an instance is checked as
    ``make_scheduler`` does: its caller has imported SAGA already)."""
    if not isinstance(spec, str):
        make_scheduler(spec)
    elif _norm(spec) not in KNOWN_SCHEDULERS:
        known = sorted(KNOWN_SCHEDULERS)
        raise PlanningError(f"unknown SAGA scheduler {spec!r}; choose one of {', '.join(known)} (any case)")


def make_scheduler(spec: str | Any) -> Any:
    """A SAGA scheduler from a name like ``"HEFT"`` / ``"MinMin"`` / ``"CpopScheduler"``, or the instance itself."""
    if not isinstance(spec, str):
        from saga import Scheduler

        if not isinstance(spec, Scheduler):
            raise PlanningError(f"scheduler must be a SAGA scheduler name or instance, got {spec!r}")
        return spec
    factory = _factories().get(_norm(spec))
    if factory is None:
        raise PlanningError(f"unknown SAGA scheduler {spec!r}; choose one of {', '.join(scheduler_names())}")
    return factory()


# --------------------------------------------------------------------------- validation


def _positive(value: float, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise PlanningError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


def _validate(graph: Graph, network: Network) -> None:
    if not network.nodes:
        raise PlanningError("no nodes to plan on")
    names = [n for n, _ in network.nodes]
    if len(set(names)) != len(names):
        raise PlanningError(f"duplicate node names: {names}")
    for name, speed in network.nodes:
        if not isinstance(name, str) or not name:
            raise PlanningError(f"node names must be non-empty str, got {name!r}")
        _positive(speed, f"speed of node {name}")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            _positive(network.link(a, b), f"link speed {a}<->{b}")
    known: set[str] = set()
    for task in graph.tasks:
        if not isinstance(task.name, str) or not task.name or task.name in _SUPER:
            raise PlanningError(f"task names must be non-empty str (not a SAGA super node), got {task.name!r}")
        if task.name in known or task.name in graph.fixed:
            raise PlanningError(f"duplicate task {task.name!r}")
        if not math.isfinite(task.cost_s) or task.cost_s < 0:
            raise PlanningError(f"cost of task {task.name} must be finite and >= 0, got {task.cost_s!r}")
        known.add(task.name)
    for name, placed in graph.fixed.items():
        if placed.node not in names:
            raise PlanningError(f"fixed task {name} is on {placed.node!r}, which is not in the network")
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for edge in graph.edges:
        if edge.target not in known:
            raise PlanningError(f"edge {edge.source}->{edge.target}: target is not a task being placed")
        if edge.source not in known and edge.source not in graph.fixed:
            raise PlanningError(f"edge {edge.source}->{edge.target}: unknown source")
        if not math.isfinite(edge.size_bytes) or edge.size_bytes < 0:
            raise PlanningError(f"edge {edge.source}->{edge.target}: size must be finite and >= 0")
        sorter.add(edge.target, edge.source)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise PlanningError(f"the task graph has a cycle: {' -> '.join(map(str, exc.args[1]))}") from exc


# --------------------------------------------------------------------------- planning


def plan(graph: Graph, network: Network, scheduler: str | Any = "HEFT") -> Plan:
    """Place ``graph.tasks`` on ``network`` with a SAGA scheduler. Raises :class:`PlanningError`."""
    _validate(graph, network)
    sched = make_scheduler(scheduler)
    if not graph.tasks:
        return Plan({}, graph.min_start_s, type(sched).__name__)
    try:
        return _run(graph, network, sched)
    finally:
        _clear_saga_caches()


def _run(graph: Graph, network: Network, sched: Any) -> Plan:
    import saga

    names = [n for n, _ in network.nodes]
    net = saga.Network.create(
        nodes=list(network.nodes),
        edges=[(a, b, network.link(a, b)) for i, a in enumerate(names) for b in names[i:]],
    )
    costs = {t.name: max(t.cost_s, MIN_COST_S) for t in graph.tasks}
    for name in graph.fixed:
        costs[name] = max(graph.fixed_costs.get(name, MIN_COST_S), MIN_COST_S)
    tg = saga.TaskGraph(
        tasks=frozenset(saga.TaskGraphNode(name=n, cost=c) for n, c in costs.items()),
        dependencies=frozenset(
            saga.TaskGraphEdge(source=e.source, target=e.target, size=e.size_bytes) for e in graph.edges
        ),
    )
    partial = None
    if graph.fixed:
        mapping: dict[str, list[Any]] = {n: [] for n in names}
        for name, at in sorted(graph.fixed.items(), key=lambda kv: (kv[1].start_s, kv[1].end_s)):
            mapping[at.node].append(saga.ScheduledTask(node=at.node, name=name, start=at.start_s, end=at.end_s))
        partial = saga.Schedule(tg, net, mapping=mapping)
    try:
        result = sched.schedule(net, tg, schedule=partial, min_start_time=graph.min_start_s)
    except Exception as exc:
        raise PlanningError(f"{type(sched).__name__} failed: {type(exc).__name__}: {exc}") from exc
    placed = {
        st.name: Placed(st.node, float(st.start), float(st.end))
        for node_tasks in result.mapping.values()
        for st in node_tasks
        if st.name in costs and st.name not in graph.fixed
    }
    missing = [t.name for t in graph.tasks if t.name not in placed]
    if missing:
        raise PlanningError(
            f"{type(sched).__name__} placed {len(placed)} of {len(graph.tasks)} tasks (missing e.g. {missing[:5]})"
        )
    placed = _shifted(placed, graph.min_start_s)
    return Plan(placed, max(p.end_s for p in placed.values()), type(sched).__name__)


def _shifted(placed: dict[str, Placed], min_start_s: float) -> dict[str, Placed]:
    """Shift a plan that ignored ``min_start_time`` so it starts there (ranks must not go back in time)."""
    earliest = min(p.start_s for p in placed.values())
    if earliest >= min_start_s - 1e-9:
        return placed
    delta = min_start_s - earliest
    return {n: Placed(p.node, p.start_s + delta, p.end_s + delta) for n, p in placed.items()}


def _clear_saga_caches() -> None:
    """SAGA's rank functions memoize on (network, graph) forever; a long run would keep every graph."""
    for name, module in list(sys.modules.items()):
        if name.startswith("saga") and module is not None:
            for obj in list(vars(module).values()):
                clear = getattr(obj, "cache_clear", None)
                if callable(clear):
                    clear()


def graph_from(tasks: Iterable[tuple[str, float]], edges: Iterable[tuple[str, str, float]] = ()) -> Graph:
    """A :class:`Graph` from plain tuples (tests, benchmarks)."""
    return Graph(tuple(Task(n, c) for n, c in tasks), tuple(Edge(s, t, z) for s, t, z in edges))
