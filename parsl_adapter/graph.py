"""The graphs the executor asks SAGA to plan, built from Parsl's task records. Pure functions of
their inputs: the records (``dfk.tasks``), the plan so far, the live nodes and the cost model."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Any

from parsl_adapter.costs import RuntimeModel, hints_or_default, parse_hints
from parsl_adapter.dag import Captured, capture, holds_back
from parsl_adapter.events import PlannedTask
from parsl_adapter.placement import Edge, Graph, Placed, Task

Records = Mapping[int, Mapping[str, Any]]


def window_graph(
    tids: Sequence[int],
    functions: Mapping[int, str],
    records: Records,
    *,
    label: str,
    planned: Mapping[int, PlannedTask],
    alive: Container[str],
    runtimes: RuntimeModel,
    default_cost_s: float,
    default_output_bytes: float,
    min_start_s: float,
) -> tuple[Graph, frozenset[int]]:
    """The graph of a window (``tids``; ``functions`` names those without a record) and which of
    its tasks gate the release of later-ranked ones (``dag.holds_back``)."""
    captured = capture(records, label, tids)
    planning = set(tids)
    tasks, gating = [], set()
    for tid in tids:
        c = captured.get(tid)
        function = c.function if c is not None else functions.get(tid, "?")
        hints = c.hints if c is not None else parse_hints(None)
        tasks.append(Task(str(tid), runtimes.cost(function, hints, default_cost_s)))
        if c is not None and holds_back(c, planning, planned):
            gating.add(tid)
    edges, fixed, fixed_costs = dependencies(
        tids, captured, records, planned=planned, alive=alive, default_output_bytes=default_output_bytes
    )
    return Graph(tuple(tasks), tuple(edges), fixed, fixed_costs, min_start_s), frozenset(gating)


def replan_graph(
    tids: Sequence[int],
    records: Records,
    *,
    label: str,
    planned: Mapping[int, PlannedTask],
    alive: Container[str],
    default_output_bytes: float,
    min_start_s: float,
) -> Graph:
    """The graph of a lost node's unfinished tasks, with their last planned costs."""
    captured = capture(records, label, tids)
    tasks = [Task(str(tid), planned[tid].cost_s) for tid in tids]
    edges, fixed, fixed_costs = dependencies(
        tids, captured, records, planned=planned, alive=alive, default_output_bytes=default_output_bytes
    )
    return Graph(tuple(tasks), tuple(edges), fixed, fixed_costs, min_start_s)


def dependencies(
    tids: Sequence[int],
    captured: Mapping[int, Captured],
    records: Records,
    *,
    planned: Mapping[int, PlannedTask],
    alive: Container[str],
    default_output_bytes: float,
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
                earlier = planned.get(parent)
                if earlier is None or earlier.node not in alive:
                    continue
                fixed[str(parent)] = Placed(earlier.node, earlier.rank, earlier.end)
                fixed_costs[str(parent)] = earlier.cost_s
            edges.append(Edge(str(parent), str(tid), output_bytes(records.get(parent), default_output_bytes)))
    return edges, fixed, fixed_costs


def output_bytes(record: Mapping[str, Any] | None, default: float) -> float:
    if record is None:
        return default
    hinted = hints_or_default(record.get("resource_specification")).output_bytes
    return default if hinted is None else hinted
