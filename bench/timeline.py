"""Where benchmark 3's missing percent goes: ``uv run python -m bench.timeline``.

Runs benchmark 3's workload (1,600 10 ms sleeps on 8 workers, through Parsl, saga-dispatch only)
with each task stamping its start and end inside the worker, then splits the workers' time into
running, idle before their first task, idle between tasks, and idle after their last.
"""

from __future__ import annotations

import time
from collections import defaultdict

from parsl import python_app

from bench import apps
from bench.contenders import loaded, saga
from bench.stats import markdown, median, percentile


def timeline(tasks: int = 1600, workers: int = 8) -> str:
    with loaded(saga(workers, logging=True)):
        app = python_app(apps.stamped_sleep10ms, executors=["bench"])
        [f.result() for f in [app() for _ in range(2 * workers)]]
        t0 = time.monotonic_ns()
        results = [f.result() for f in [app() for _ in range(tasks)]]
        t1 = time.monotonic_ns()
    runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pid, start, end in results:
        runs[pid].append((start, end))
    whole = len(runs) * (t1 - t0)
    first = sum(min(s for s, _ in r) - t0 for r in runs.values())
    last = sum(t1 - max(e for _, e in r) for r in runs.values())
    busy = sum(e - s for r in runs.values() for s, e in r)
    gaps = [s2 - e1 for r in runs.values() for (_, e1), (s2, _) in zip(sorted(r), sorted(r)[1:], strict=False)]
    rows = [
        ["efficiency vs ideal", f"{100 * tasks * 0.01 / workers / ((t1 - t0) / 1e9):.1f}%"],
        ["running (the sleep, as the task saw it)", f"{100 * busy / whole:.1f}%"],
        ["idle before the first task", f"{100 * first / whole:.1f}%"],
        ["idle between tasks", f"{100 * sum(gaps) / whole:.1f}%"],
        ["idle after the last task", f"{100 * last / whole:.1f}%"],
        [
            "gap between tasks on one worker",
            (
                f"median {median(gaps) / 1e3:.0f} us, p90 {percentile(gaps, 0.9) / 1e3:.0f} us, "
                f"p99 {percentile(gaps, 0.99) / 1e3:.0f} us"
            ),
        ],
        ["mean task time as seen inside the task", f"{busy / len(results) / 1e6:.2f} ms"],
    ]
    title = f"Timeline of {tasks:,} 10 ms sleeps on {workers} workers (saga-dispatch, through Parsl)"
    return f"### {title}\n\n" + markdown(["share of the workers' time", "value"], rows)


if __name__ == "__main__":
    print(timeline())
