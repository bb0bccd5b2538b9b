"""Benchmark 5: makespan of real workflow shapes on heterogeneous nodes, SAGA's HEFT vs HTEX.

Four local nodes of speeds 1, 1, 2, 4 (each task sleeps cost / speed; saga-dispatch's agents
export NODE_SPEED, HTEX's four one-worker blocks map their block id through BENCH_SPEEDS). The
workflows are WfCommons recipes (Montage, Epigenomics) with their task runtimes scaled so the
ideal makespan is a few seconds. saga-dispatch captures the DAG with ``plan()`` and places it
with HEFT; HTEX hands each ready task to whichever block has a free worker. The makespan is
from the first app call to the last result, planning included; actual/planned compares
saga-dispatch's first-start-to-last-end with the plan's own makespan.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from parsl import Config, python_app
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from bench import apps
from bench.contenders import loaded
from bench.stats import markdown, median
from parsl_adapter import SagaDispatchExecutor
from parsl_adapter.demo import SPEEDS, workflow


def _saga(wf: list[tuple[str, str, list[str], float, float]]) -> tuple[float, float]:
    ex = SagaDispatchExecutor(
        label="bench", local_nodes=len(SPEEDS), local_speeds=SPEEDS, workers_per_node=1, bandwidth=1e11
    )
    with loaded(Config(executors=[ex], initialize_logging=True)):
        app = python_app(apps.wf_task, executors=["bench"])
        started = time.perf_counter()
        futures: dict[str, Any] = {}
        with ex.plan():
            for name, _, parents, cost, size in wf:
                hints = {"cost": cost, "output_size": size}
                futures[name] = app(name, *[futures[p] for p in parents], cost=cost, parsl_resource_specification=hints)
        done = {name: f.result(timeout=600) for name, f in futures.items()}
        makespan = time.perf_counter() - started
        planned = [ex.planned(f.tid) for f in futures.values()]
        assert all(p is not None for p in planned)
        assert all(done[n][1] == ex.planned(f.tid).node for n, f in futures.items())  # type: ignore[union-attr]
    plan_span = max(p.end for p in planned if p) - min(p.rank for p in planned if p)
    actual = (max(end for *_, end in done.values()) - min(start for _, _, start, _ in done.values())) / 1e9
    return makespan, actual / plan_span


def _htex(wf: list[tuple[str, str, list[str], float, float]]) -> float:
    blocks = len(SPEEDS)
    ex = HighThroughputExecutor(
        label="bench",
        max_workers_per_node=1,
        address="127.0.0.1",
        worker_debug=False,
        provider=LocalProvider(  # type: ignore[no-untyped-call]
            init_blocks=blocks,
            min_blocks=blocks,
            max_blocks=blocks,
            worker_init=f"export BENCH_SPEEDS={','.join(f'{s:g}' for s in SPEEDS)}",
        ),
    )
    with loaded(Config(executors=[ex], initialize_logging=True)):
        deadline = time.monotonic() + 120
        while len(ex.connected_managers()) < blocks:  # every "node" up before the clock starts
            if time.monotonic() > deadline:
                raise RuntimeError("HTEX blocks did not connect")
            time.sleep(0.1)
        app = python_app(apps.wf_task, executors=["bench"])
        started = time.perf_counter()
        futures: dict[str, Any] = {}
        for name, _, parents, cost, _ in wf:
            futures[name] = app(name, *[futures[p] for p in parents], cost=cost)
        for f in futures.values():
            f.result(timeout=600)
        return time.perf_counter() - started


def lower_bound(wf: list[tuple[str, str, list[str], float, float]]) -> float:
    """No placement beats this: all work spread over the combined speed, or the critical path
    run entirely on the fastest node, whichever is longer (transfers free)."""
    finish: dict[str, float] = {}
    for name, _, parents, cost, _ in wf:
        finish[name] = max((finish[q] for q in parents), default=0.0) + cost / max(SPEEDS)
    return max(sum(cost for _, _, _, cost, _ in wf) / sum(SPEEDS), *finish.values())


def makespans(recipes: tuple[str, ...], tasks: int, busy_s: float, rounds: int) -> str:
    saga: dict[str, list[float]] = defaultdict(list)
    ratio: dict[str, list[float]] = defaultdict(list)
    htex: dict[str, list[float]] = defaultdict(list)
    bound: dict[str, float] = {}
    for recipe in recipes:
        wf = workflow(recipe, tasks, seed=1, busy_s=busy_s)
        bound[recipe] = lower_bound(wf)
        for r in range(rounds):
            for contender in ("saga", "htex") if r % 2 == 0 else ("htex", "saga"):
                if contender == "saga":
                    makespan, over_plan = _saga(wf)
                    saga[recipe].append(makespan)
                    ratio[recipe].append(over_plan)
                else:
                    htex[recipe].append(_htex(wf))
    rows = [
        [
            recipe,
            f"{median(saga[recipe]):.2f}",
            f"{median(htex[recipe]):.2f}",
            f"{median(saga[recipe]) / median(htex[recipe]):.2f}",
            f"{bound[recipe]:.2f} ({bound[recipe] / median(htex[recipe]):.2f})",
            f"{median(ratio[recipe]):.2f}",
            ", ".join(f"{s:.2f}/{h:.2f}" for s, h in zip(saga[recipe], htex[recipe], strict=True)),
        ]
        for recipe in recipes
    ]
    title = (
        f"Makespan on nodes of speeds {', '.join(f'{s:g}' for s in SPEEDS)}: WfCommons workflows "
        f"(~{tasks} tasks, ideal {busy_s:g} s), HEFT via saga-dispatch vs HTEX"
    )
    headers = [
        "workflow", "saga-dispatch s", "htex s", "x htex", "lower bound s (x htex)", "actual/planned",
        "rounds (saga/htex)",
    ]  # fmt: skip
    return f"### {title}\n\n" + markdown(headers, rows)
