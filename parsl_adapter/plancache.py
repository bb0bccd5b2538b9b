"""Memoized placements: a SAGA plan is a pure function of (graph, network, scheduler), so each
distinct shape is asked of SAGA once.

Only self-contained graphs are memoized (no fixed tasks from earlier plans), and only for
schedulers named by a string. Such a graph is put in canonical form before SAGA sees it:

* tasks renamed ``t0 .. t{n-1}`` in the order given (the executor gives them in task-id order,
  which is a topological order in Parsl), edges by those names;
* costs and edge sizes rounded to :data:`DIGITS` significant digits — they are estimates
  (a runtime average, a size hint), and unrounded they would never repeat;
* the plan's clock starting at 0: a graph with no fixed tasks has nothing to anchor it, so its
  plan at ``min_start_s`` is its plan at 0, shifted.

The planner always receives the canonical graph of a memoizable request, so a hit returns
exactly what SAGA returned for the same input; only the names and the clock are mapped back. The
sequential round trip and repeated batches of the same shape never reach the planning process.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from parsl_adapter.placement import Edge, Graph, Network, Placed, Plan, Task

DIGITS: Final = 2


def rounded(x: float) -> float:
    """``x`` to :data:`DIGITS` significant digits (0 and non-finite values as they are)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, DIGITS - 1 - math.floor(math.log10(abs(x))))


@dataclass(frozen=True, slots=True)
class Canonical:
    key: Hashable
    graph: Graph
    """What SAGA is asked: canonical names, rounded costs, clock at 0."""
    names: tuple[str, ...]
    """The caller's task names, by canonical index."""
    min_start_s: float


def canonical(graph: Graph, network: Network, scheduler: object) -> Canonical | None:
    """The canonical form of a memoizable request, or None (fixed tasks, a scheduler instance)."""
    if graph.fixed or not isinstance(scheduler, str) or not graph.tasks:
        return None
    index = {t.name: i for i, t in enumerate(graph.tasks)}
    if len(index) != len(graph.tasks):
        return None  # duplicate names: let the planner say what is wrong
    try:
        edges = tuple(sorted((index[e.source], index[e.target], rounded(e.size_bytes)) for e in graph.edges))
    except KeyError:
        return None  # an edge from outside: not self-contained
    costs = tuple(rounded(t.cost_s) for t in graph.tasks)
    links = tuple(sorted(network.links.items()))
    key = (scheduler.lower(), network.nodes, network.bandwidth, links, costs, edges)
    canon = Graph(
        tuple(Task(f"t{i}", c) for i, c in enumerate(costs)),
        tuple(Edge(f"t{s}", f"t{t}", z) for s, t, z in edges),
    )
    return Canonical(key, canon, tuple(t.name for t in graph.tasks), graph.min_start_s)


def restore(plan: Plan, canon: Canonical) -> Plan:
    """A canonical plan in the caller's names, on the caller's clock."""
    shift = canon.min_start_s
    placed = {
        canon.names[int(name[1:])]: Placed(p.node, p.start_s + shift, p.end_s + shift)
        for name, p in plan.placed.items()
    }
    return Plan(placed, plan.makespan_s + shift, plan.scheduler)


class PlanCache:
    """A bounded LRU of canonical plans. Not thread-safe (the executor holds its lock)."""

    def __init__(self, size: int = 256) -> None:
        if size < 0:
            raise ValueError(f"plan cache size must be >= 0, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._plans: OrderedDict[Hashable, Plan] = OrderedDict()

    def get(self, canon: Canonical | None) -> Plan | None:
        if canon is None or self.size == 0:
            return None
        plan = self._plans.get(canon.key)
        if plan is None:
            self.misses += 1
            return None
        self.hits += 1
        self._plans.move_to_end(canon.key)
        return restore(plan, canon)

    def put(self, canon: Canonical, plan: Plan) -> None:
        """``plan``: what SAGA returned for ``canon.graph`` (canonical names, clock at 0)."""
        if self.size == 0:
            return
        self._plans[canon.key] = plan
        self._plans.move_to_end(canon.key)
        while len(self._plans) > self.size:
            self._plans.popitem(last=False)
