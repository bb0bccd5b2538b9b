"""Benchmarks 1-3, through Parsl: no-op throughput, sequential round trip, 10 ms sleep efficiency.

Each round loads a fresh DFK per contender, in rotating order, and times only the task loop
(start-up excluded); medians are over rounds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from parsl import python_app

from bench import apps, contenders
from bench.contenders import CONTENDERS, loaded
from bench.stats import markdown, median, percentile


@dataclass(frozen=True)
class Sizes:
    rounds: int
    noop_tasks: tuple[int, ...]
    round_trips: int
    sleep_tasks: int
    client_tasks: int
    plan_sizes: tuple[int, ...] = (1000, 5000, 20000)
    overlap_tasks: int = 5000
    wf_tasks: int = 120
    wf_busy_s: float = 4.0
    sim_agents: int = 1000
    sim_tasks: int = 1_000_000

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(1, (500,), 100, 160, 2000, (200, 1000), 300, 60, 1.0, 100, 20_000)
        return cls(3, (2000, 10000), 1000, 1600, 20000)


def _order(round_no: int) -> list[str]:
    names = contenders.selected()
    k = round_no % len(names)
    return names[k:] + names[:k]


def throughput(sizes: Sizes, logging: bool, workers: int = 2) -> str:
    title = f"No-op throughput through Parsl ({workers} workers, Parsl logging {'on (DEBUG)' if logging else 'off'})"
    return _throughput(title, sizes.rounds, sizes.noop_tasks, logging=logging, workers=workers, arg_bytes=0)


def large_arguments(sizes: Sizes, size: int = 1_000_000, workers: int = 2) -> str:
    """No-op tasks with a ``size``-byte argument each, Parsl's default logging (issue 17)."""
    counts = tuple(max(100, n // 10) for n in sizes.noop_tasks[:1])
    title = f"No-op tasks with a {size / 1e6:g} MB argument through Parsl ({workers} workers, Parsl logging on)"
    return _throughput(title, sizes.rounds, counts, logging=True, workers=workers, arg_bytes=size)


def _throughput(
    title: str, rounds: int, counts: tuple[int, ...], *, logging: bool, workers: int, arg_bytes: int
) -> str:
    rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    blob = b"x" * arg_bytes
    for r in range(rounds):
        for name in _order(r):
            with loaded(CONTENDERS[name](workers, logging=logging)):
                app = python_app(apps.noop if not arg_bytes else apps.blob_size, executors=["bench"])
                args = (lambda i: (i,)) if not arg_bytes else (lambda i: (i, blob))
                [f.result() for f in [app(*args(i)) for i in range(50)]]  # warm up
                for n in counts:
                    started = time.perf_counter()
                    futures = [app(*args(i)) for i in range(n)]
                    for f in futures:
                        f.result()
                    rates[name, n].append(n / (time.perf_counter() - started))
    rows = []
    for n in counts:
        base = median(rates["threadpool", n]) if rates["threadpool", n] else float("nan")
        for name in contenders.selected():
            m = median(rates[name, n])
            rows.append([f"{n:,}", name, round(m), f"{m / base:.2f}", ", ".join(f"{x:.0f}" for x in rates[name, n])])
    return f"### {title}\n\n" + markdown(["tasks", "executor", "tasks/s (median)", "x threadpool", "rounds"], rows)


def round_trip(sizes: Sizes, logging: bool, workers: int = 2) -> str:
    results: dict[str, list[float]] = defaultdict(list)
    p99s: dict[str, list[float]] = defaultdict(list)
    for r in range(sizes.rounds):
        for name in _order(r):
            with loaded(CONTENDERS[name](workers, logging=logging)):
                app = python_app(apps.noop, executors=["bench"])
                for i in range(20):
                    app(i).result()
                times = []
                for i in range(sizes.round_trips):
                    started = time.perf_counter()
                    app(i).result()
                    times.append(time.perf_counter() - started)
                results[name].append(median(times) * 1e3)
                p99s[name].append(percentile(times, 0.99) * 1e3)
    base = median(results["threadpool"]) if results["threadpool"] else float("nan")
    rows = [
        [name, f"{median(results[name]):.3f}", f"{median(results[name]) - base:+.3f}", f"{median(p99s[name]):.3f}"]
        for name in contenders.selected()
    ]
    title = f"Sequential round trip (submit, wait, repeat; Parsl logging {'on (DEBUG)' if logging else 'off'})"
    headers = ["executor", "median ms", "over threadpool ms", "p99 ms"]
    return f"### {title}\n\n" + markdown(headers, rows)


def sleep_efficiency(sizes: Sizes, workers: int = 8) -> str:
    effs: dict[str, list[float]] = defaultdict(list)
    runtimes: list[float] = []
    for r in range(sizes.rounds):
        for name in _order(r):
            with loaded(CONTENDERS[name](workers, logging=True)) as dfk:
                app = python_app(apps.sleep10ms, executors=["bench"])
                [f.result() for f in [app() for _ in range(workers * 2)]]
                started = time.perf_counter()
                for f in [app() for _ in range(sizes.sleep_tasks)]:
                    f.result()
                ideal = sizes.sleep_tasks * 0.01 / workers
                effs[name].append(ideal / (time.perf_counter() - started))
                learned = getattr(dfk.executors["bench"], "runtimes", None)
                if learned is not None and learned.estimate("sleep10ms") is not None:
                    runtimes.append(learned.estimate("sleep10ms"))  # what the workers measured
    rows = [
        [name, f"{100 * median(effs[name]):.1f}%", ", ".join(f"{100 * e:.1f}%" for e in effs[name])]
        for name in contenders.selected()
    ]
    title = f"10 ms sleep tasks, {workers} workers: efficiency vs ideal ({sizes.sleep_tasks} tasks)"
    out = f"### {title}\n\n" + markdown(["executor", "efficiency (median)", "rounds"], rows)
    if runtimes:
        ms = 1e3 * median(runtimes)
        out += (
            f"\n\nsaga-dispatch's workers measured `sleep(0.01)` itself at {ms:.2f} ms (the executor's runtime "
            f"average, median of rounds): no dispatcher can beat {100 * 10 / ms:.1f}% here."
        )
    return out
