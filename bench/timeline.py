"""Where benchmark 3's missing percent goes: ``uv run python -m bench.timeline``.

Runs benchmark 3's workload (1,600 10 ms sleeps on 8 workers, through Parsl, saga-dispatch only)
with each task stamping its start and end inside the worker, then splits the workers' time into
running, idle before their first task, idle between tasks, and idle after their last.

It also follows each task on the submitting side — when Parsl launched it (the executor's
``submit()``), when the executor released it to the client (``Client.submit_payload``), when the
client's I/O thread sent its frame — to say where tasks waited: for a plan or behind the release
order, in the client's Nagle hold, or at the dispatcher and agent for a free worker. The stamps
are taken by wrapping those calls on this one executor (CLOCK_MONOTONIC, as the tasks' own).
Full (generation-2) garbage collections in Parsl's process are listed with when they ran: they
stop Parsl launching, and the workers stall once the dispatcher's backlog runs dry.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parsl import python_app

from bench import apps
from bench.contenders import loaded, saga
from bench.stats import markdown, median, percentile
from dispatcher import protocol as p
from dispatcher.client.client import Client, TaskFuture
from parsl_adapter import SagaDispatchExecutor

STALL_NS = 2_000_000
"""A gap between two tasks on one worker longer than this is a stall (a task is 10 ms)."""


class _Stamps:
    """Launch, release and send times of each task, keyed by the task's own argument."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.launched: dict[int, int] = {}
        self.released: list[tuple[int, TaskFuture]] = []
        self.sent: dict[int, int] = {}

    def watch(self, ex: SagaDispatchExecutor) -> None:
        client = ex.client
        assert client is not None
        submit, submit_payload, send_submit = ex.submit, client.submit_payload, client._send_submit

        def on_submit(
            func: Callable[..., Any], resource_specification: dict[str, Any], *args: Any, **kwargs: Any
        ) -> Future[Any]:
            self.launched[args[0]] = time.monotonic_ns()
            return submit(func, resource_specification, *args, **kwargs)

        def on_release(payload: bytes, **kwargs: Any) -> TaskFuture:
            now = time.monotonic_ns()
            future = submit_payload(payload, **kwargs)
            with self.lock:
                self.released.append((now, future))
            return future

        def on_send(sock: Any, batch: list[p.TaskSpec]) -> None:
            send_submit(sock, batch)
            now = time.monotonic_ns()
            for spec in batch:
                self.sent.setdefault(spec.task_id, now)

        ex.submit = on_submit  # type: ignore[method-assign]
        client.submit_payload = on_release  # type: ignore[method-assign]
        client._send_submit = on_send  # type: ignore[method-assign]

    def waits(self, started: dict[int, int]) -> list[list[str]]:
        """Rows: each leg's median and p99 over the tasks, in ms."""
        legs: dict[str, list[int]] = defaultdict(list)
        for released_at, future in self.released:
            i = future.result()[3]
            if i not in started:
                continue  # a warm-up task
            sent_at = self.sent[future.task_id]
            legs["launched -> released (a plan, the release order)"].append(released_at - self.launched[i])
            legs["released -> frame sent (the client I/O thread: Nagle, the GIL)"].append(sent_at - released_at)
            legs["frame sent -> started (dispatcher, agent, a free worker)"].append(started[i] - sent_at)
        return [
            [f"wait {leg}", f"median {median(ns) / 1e6:.2f} ms, p99 {percentile(ns, 0.99) / 1e6:.2f} ms"]
            for leg, ns in legs.items()
        ]


class _FullCollections:
    """Generation-2 garbage collections in this (Parsl's) process: (start ns, end ns) each."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int]] = []
        self._started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic_ns()
        elif info["generation"] == 2:
            self.pauses.append((self._started, time.monotonic_ns()))

    def row(self, t0: int, t1: int) -> list[str]:
        during = [(a, b) for a, b in self.pauses if t0 <= a <= t1]
        what = ", ".join(f"{(b - a) / 1e6:.0f} ms at {(a - t0) / 1e6:.0f} ms" for a, b in during)
        return ["full garbage collections in Parsl's process", f"{len(during)}{': ' + what if what else ''}"]


def timeline(tasks: int = 1600, workers: int = 8) -> str:
    stamps = _Stamps()
    collections = _FullCollections()
    gc.callbacks.append(collections)
    try:
        return _timeline(tasks, workers, stamps, collections)
    finally:
        gc.callbacks.remove(collections)


def _timeline(tasks: int, workers: int, stamps: _Stamps, collections: _FullCollections) -> str:
    with loaded(saga(workers, logging=True)) as dfk:
        ex = dfk.executors["bench"]
        assert isinstance(ex, SagaDispatchExecutor)
        assert isinstance(ex.client, Client)
        stamps.watch(ex)
        app = python_app(apps.stamped_sleep10ms, executors=["bench"])
        [f.result() for f in [app(-1 - k) for k in range(2 * workers)]]
        t0 = time.monotonic_ns()
        results = [f.result() for f in [app(i) for i in range(tasks)]]
        t1 = time.monotonic_ns()
    runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pid, start, end, _ in results:
        runs[pid].append((start, end))
    whole = len(runs) * (t1 - t0)
    first = sum(min(s for s, _ in r) - t0 for r in runs.values())
    last = sum(t1 - max(e for _, e in r) for r in runs.values())
    busy = sum(e - s for r in runs.values() for s, e in r)
    gaps = [s2 - e1 for r in runs.values() for (_, e1), (s2, _) in zip(sorted(r), sorted(r)[1:], strict=False)]
    stalls = [g for g in gaps if g > STALL_NS]
    rows = [
        ["efficiency vs ideal", f"{100 * tasks * 0.01 / workers / ((t1 - t0) / 1e9):.1f}%"],
        ["running (the sleep, as the task saw it)", f"{100 * busy / whole:.1f}%"],
        ["idle before the first task", f"{100 * first / whole:.1f}%"],
        ["idle between tasks", f"{100 * sum(gaps) / whole:.1f}%"],
        [f"… in stalls (gaps over {STALL_NS / 1e6:g} ms)", f"{100 * sum(stalls) / whole:.1f}% ({len(stalls)} gaps)"],
        ["idle after the last task", f"{100 * last / whole:.1f}%"],
        [
            "gap between tasks on one worker",
            (
                f"median {median(gaps) / 1e3:.0f} us, p90 {percentile(gaps, 0.9) / 1e3:.0f} us, "
                f"p99 {percentile(gaps, 0.99) / 1e3:.0f} us"
            ),
        ],
        ["mean task time as seen inside the task", f"{busy / len(results) / 1e6:.2f} ms"],
        collections.row(t0, t1),
        *stamps.waits({i: start for _, start, _, i in results}),
    ]
    title = f"Timeline of {tasks:,} 10 ms sleeps on {workers} workers (saga-dispatch, through Parsl)"
    return f"### {title}\n\n" + markdown(["share of the workers' time", "value"], rows)


if __name__ == "__main__":
    print(timeline())
