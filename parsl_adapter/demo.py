"""``saga-dispatch demo``: a Montage-shaped Parsl workflow placed by HEFT on 4 local nodes.

The workflow comes from a WfCommons recipe (real task categories, runtimes and file sizes),
scaled so the whole run takes seconds. Each task sleeps its cost divided by its node's speed,
so a node of speed 4 really is four times faster. The report compares what was planned with what
happened: placement fidelity per node and planned vs actual makespan, and the chart
(``executor.timeline()`` drawn by ``gantt.draw``) shows it, one lane per node.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from dispatcher.runtime.report import table

SPEEDS = (1.0, 1.0, 2.0, 4.0)
RECIPES = ("montage", "epigenomics")


def wf_task(
    name: str, *_parents: Any, parsl_resource_specification: dict[str, Any] | None = None
) -> tuple[str, str, int, int]:
    """One workflow task: (name, node, start ns, end ns) after sleeping cost / NODE_SPEED.

    ``_parents`` are the parent tasks' futures: there so that Parsl waits for them."""
    started = time.monotonic_ns()
    cost = (parsl_resource_specification or {}).get("cost", 0.0)
    time.sleep(cost / float(os.environ.get("NODE_SPEED", "1")))
    return name, os.environ.get("NODE_NAME", "?"), started, time.monotonic_ns()


def workflow(recipe: str, tasks: int, seed: int, busy_s: float) -> list[tuple[str, str, list[str], float, float]]:
    """(name, category, parents, cost seconds, output bytes) in a topological order.

    Costs are scaled so that the total work, spread over the nodes' combined speed, is ``busy_s``.
    """
    import networkx as nx
    import numpy as np
    from wfcommons import WorkflowGenerator
    from wfcommons.wfchef.recipes import EpigenomicsRecipe, MontageRecipe

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (WfCommons draws from numpy's global generator)
    recipe_class = {"montage": MontageRecipe, "epigenomics": EpigenomicsRecipe}[recipe]
    wf = WorkflowGenerator(recipe_class.from_num_tasks(tasks)).build_workflow()
    total = sum(wf.nodes[n]["task"].runtime for n in wf.nodes) or 1.0
    scale = busy_s * sum(SPEEDS) / total
    out = []
    for n in nx.topological_sort(wf):
        task = wf.nodes[n]["task"]
        size = float(sum(f.size for f in task.output_files))
        out.append((str(n), task.name, [str(p) for p in wf.predecessors(n)], task.runtime * scale, size))
    return out


def run_demo(
    recipe: str = "montage",
    *,
    tasks: int = 120,
    seed: int = 1,
    scheduler: str = "HEFT",
    chart: str | None = None,
    html: str | None = None,
) -> int:
    """Run the workflow and report; ``chart``: where the picture goes (None: none; default of the
    command: ``saga-demo-RECIPE.png`` here), ``html``: also a self-contained page."""
    import parsl
    from parsl import Config, python_app

    from parsl_adapter import SagaDispatchExecutor

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    wf = workflow(recipe, tasks, seed, busy_s=4.0)
    print(
        f"{recipe} workflow: {len(wf)} tasks, {sum(len(p) for _, _, p, _, _ in wf)} dependencies, "
        f"{scheduler} on 4 local nodes of speeds {', '.join(f'{s:g}' for s in SPEEDS)}\n"
    )
    ex = SagaDispatchExecutor(
        scheduler=scheduler, local_nodes=4, local_speeds=SPEEDS, workers_per_node=1, bandwidth=1e11
    )
    with tempfile.TemporaryDirectory(prefix="saga-demo-") as run_dir:
        config = Config(executors=[ex], run_dir=str(Path(run_dir) / "runinfo"), initialize_logging=False)
        with parsl.load(config):
            app = python_app(wf_task, executors=[ex.label])
            futures: dict[str, Any] = {}
            with ex.plan():
                for name, _, parents, cost, size in wf:
                    hints = {"cost": cost, "output_size": size}
                    futures[name] = app(name, *[futures[p] for p in parents], parsl_resource_specification=hints)
            _progress(list(futures.values()), timeout_s=300)
            done = {name: f.result() for name, f in futures.items()}
            planned = {name: ex.planned(f.tid) for name, f in futures.items()}
            plans = list(ex.plans)
            timeline = ex.timeline()
    status = _report(wf, done, planned, plans)
    if chart is not None:
        from parsl_adapter import gantt

        title = f"{recipe}, {len(wf)} tasks, {scheduler}: planned (outline) vs actual, per node"
        try:
            print(f"\nchart: {gantt.draw(timeline, chart, title=title, html=html)}")
        except gantt.PlotUnavailable as exc:  # the run itself went well: say how to get the chart
            print(f"\nno chart: {exc}")
            return status
        if html is not None:
            print(f"page: {html}")
    return status


def _progress(futures: list[Any], timeout_s: float) -> None:
    """Wait for every task, showing how many are done on a terminal's stderr."""
    from concurrent.futures import wait

    deadline = time.monotonic() + timeout_s
    shown = sys.stderr.isatty()
    while True:
        done, pending = wait(futures, timeout=0.25)
        if shown:
            print(f"\r{len(done)}/{len(futures)} tasks done", end="", file=sys.stderr, flush=True)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(futures)} tasks unfinished after {timeout_s:g} s")
    if shown:
        print(file=sys.stderr)


def _report(
    wf: list[tuple[str, str, list[str], float, float]],
    done: dict[str, Any],
    planned: dict[str, Any],
    plans: list[dict[str, Any]],
) -> int:
    category = {name: cat for name, cat, _, _, _ in wf}
    names = [f"local-{i}" for i in range(len(SPEEDS))]
    plan_count = Counter(p.node for p in planned.values() if p is not None)
    ran_count = Counter(node for _, node, _, _ in done.values())
    on_plan = {
        n: sum(1 for t, (_, node, _, _) in done.items() if node == n and planned[t] and planned[t].node == n)
        for n in names
    }
    busy: dict[str, float] = defaultdict(float)
    for _, node, start, end in done.values():
        busy[node] += (end - start) / 1e9
    rows = [
        [n, s, plan_count[n], ran_count[n], f"{100 * on_plan[n] / max(1, plan_count[n]):.0f}%", round(busy[n], 2)]
        for n, s in zip(names, SPEEDS, strict=True)
    ]
    print(table(["node", "speed", "planned", "ran", "on plan", "busy s"], rows))
    mix: dict[str, Counter[str]] = defaultdict(Counter)
    for t, p in planned.items():
        if p is not None:
            mix[category[t]][p.node] += 1
    print()
    print(table(["task kind", *names], [[k, *(c[n] for n in names)] for k, c in sorted(mix.items())]))
    first = min(start for _, _, start, _ in done.values())
    last = max(end for _, _, _, end in done.values())
    actual = (last - first) / 1e9
    plan0 = plans[0]
    planned_makespan = max(p.end for p in planned.values() if p is not None) - min(
        p.rank for p in planned.values() if p is not None
    )
    fidelity = sum(1 for t, (_, node, _, _) in done.items() if planned[t] and planned[t].node == node)
    print(f"\nplacement fidelity: {fidelity}/{len(done)} tasks ran on their planned node")
    print(
        f"plans: {len(plans)} (first: {plan0['tasks']} tasks in {plan0['plan_s']:.3f} s, SAGA {plan0['saga_s']:.3f} s)"
    )
    ratio = actual / planned_makespan
    print(f"makespan: planned {planned_makespan:.2f} s, actual {actual:.2f} s (actual/planned {ratio:.2f})")
    return 0 if fidelity == len(done) else 1


def main(argv: list[str]) -> int:
    """``saga-dispatch demo``."""
    from dispatcher.runtime.args import role_parser

    parser = role_parser("demo", "run a WfCommons workflow through Parsl with SAGA placement on 4 local nodes")
    parser.add_argument("--recipe", choices=("montage", "epigenomics"), default="montage")
    parser.add_argument("--tasks", type=int, default=120, help="approximate number of workflow tasks")
    parser.add_argument("--scheduler", default="HEFT", help="a SAGA scheduler name (default HEFT)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chart", default=None, help="the planned-vs-actual picture (default saga-demo-RECIPE.png)")
    parser.add_argument("--no-chart", action="store_true", help="draw nothing")
    parser.add_argument("--html", default=None, help="also write the chart and its table as one HTML page")
    args = parser.parse_args(argv)
    chart = None if args.no_chart else args.chart or f"saga-demo-{args.recipe}.png"
    return run_demo(
        recipe=args.recipe, tasks=args.tasks, seed=args.seed, scheduler=args.scheduler, chart=chart, html=args.html
    )
