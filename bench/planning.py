"""Benchmark 6: planning time against DAG size, and how much of a makespan planning costs.

1. SAGA's time for a whole layered DAG (``chaos.workload.dag``: 1-3 parents per task, layers
   20-80 wide) on 4 nodes, in the planning process, as the executor asks it.
2. A 5,000-task DAG through Parsl on 4 local nodes (1 worker each, tasks sleep their cost),
   planned two ways in the same run: whole (``with executor.plan():``, the DAG is captured
   before anything runs, so the plan is on the critical path) and in windows (the default: each
   window is planned while earlier ones run). Planning exposed = the time from the first
   submission to the first task starting, as a share of the makespan; SAGA's total time is
   reported beside it (in windows it runs in the planning process while tasks execute).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

from parsl import Config, python_app

from bench.contenders import loaded
from bench.stats import markdown, median
from chaos import workload
from parsl_adapter import SagaDispatchExecutor
from parsl_adapter.placement import Edge, Graph, Network, Task
from parsl_adapter.planner import PlannerProcess

NODES = 4


def _graph(n: int, seed: int = 1) -> Graph:
    tasks = workload.dag(n, seed)
    return Graph(
        tuple(Task(str(t), cost) for t, _, cost in tasks),
        tuple(Edge(str(p), str(t), 0.0) for t, parents, _ in tasks for p in parents),
    )


def saga_scaling(sizes: tuple[int, ...], rounds: int) -> str:
    network = Network(tuple((f"local-{i}", 1.0) for i in range(NODES)), 1e9)
    planner = PlannerProcess(timeout_s=900)
    planner.start()
    times: dict[int, list[float]] = defaultdict(list)
    try:
        for n in sizes:
            graph = _graph(n)
            for _ in range(rounds if n <= 5000 else 1):  # 20k takes a minute a round
                _, saga_s = planner.plan(graph, network, "HEFT")
                times[n].append(saga_s)
    finally:
        planner.close()
    rows = [
        [f"{n:,}", f"{median(v):.2f}", f"{1e3 * median(v) / n:.2f}", ", ".join(f"{x:.2f}" for x in v)]
        for n, v in times.items()
    ]
    return f"### SAGA HEFT planning time vs DAG size ({NODES} nodes, whole DAG in one plan)\n\n" + markdown(
        ["tasks", "seconds (median)", "ms per task", "rounds"], rows
    )


def _run(n: int, whole: bool) -> dict[str, float]:
    ex = SagaDispatchExecutor(label="bench", local_nodes=NODES, workers_per_node=1)
    with loaded(Config(executors=[ex], initialize_logging=True)):
        app = python_app(workload.task, executors=["bench"])
        app(0, parsl_resource_specification={"cost": 0.001}).result()
        plans_before = len(ex.plans)
        tasks = workload.dag(n, seed=2)
        started_ns = time.monotonic_ns()
        futures: dict[int, Any] = {}
        with ex.plan() if whole else contextlib.nullcontext():
            for t, parents, cost in tasks:
                spec = {"cost": cost}
                futures[t] = app(t, *[futures[q] for q in parents], parsl_resource_specification=spec)
        results = [f.result() for f in futures.values()]
        makespan = (time.monotonic_ns() - started_ns) / 1e9
        first = (min(start for _, _, start in results) - started_ns) / 1e9
        plans = list(ex.plans)[plans_before:]
        assert [v for _, v, _ in results] == [workload.expected(tasks)[t] for t in futures]
        return {
            "makespan": makespan,
            "first": first,
            "saga": sum(p["saga_s"] for p in plans),
            "plans": len(plans),
        }


def overlap(n: int, rounds: int) -> str:
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    modes = {"whole DAG, plan()": True, "windows (default)": False}
    for r in range(rounds):
        for name in list(modes)[r % 2 :] + list(modes)[: r % 2]:
            runs[name].append(_run(n, modes[name]))
    rows = []
    for name, rs in runs.items():
        makespan = median([x["makespan"] for x in rs])
        first = median([x["first"] for x in rs])
        rows.append(
            [
                name,
                f"{makespan:.2f}",
                f"{first:.3f}",
                f"{100 * median([x['first'] / x['makespan'] for x in rs]):.1f}%",
                f"{median([x['saga'] for x in rs]):.2f}",
                f"{median([x['plans'] for x in rs]):.0f}",
            ]
        )
    title = f"Planning overlapped with execution: a {n:,}-task DAG, {NODES} nodes x 1 worker, HEFT"
    headers = ["planned as", "makespan s", "first task starts after s", "exposed share", "SAGA s in all", "plans"]
    return f"### {title}\n\n" + markdown(headers, rows)
