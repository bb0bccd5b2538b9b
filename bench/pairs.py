"""What alternating-pair comparisons share: the Client's no-op workload, and a table row of
per-pair ratios (on a noisy machine, neighbours in time measure the setting, not the machine)."""

from __future__ import annotations

import time

from bench import apps
from bench.stats import median
from dispatcher.client.client import Client


def client_noop(client: Client, tasks: int, round_trips: int) -> tuple[float, float]:
    """(no-op tasks/s, median sequential round trip ms) through ``client``, after a warm-up."""
    [f.result() for f in [client.submit(apps.noop, i) for i in range(200)]]
    started = time.perf_counter()
    for f in [client.submit(apps.noop, i) for i in range(tasks)]:
        f.result()
    rate = tasks / (time.perf_counter() - started)
    times = []
    for i in range(round_trips):
        t = time.perf_counter()
        client.submit(apps.noop, i).result()
        times.append(time.perf_counter() - t)
    return rate, median(times) * 1e3


def ratio_row(label: str, unit: str, on: list[float], off: list[float], *, higher_better: bool) -> list[str]:
    """[label, unit, median on, median off, median of on/off per pair, the cost, every pair's ratio]."""
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    cost = 1 - median(ratios) if higher_better else median(ratios) - 1
    return [
        label, unit, f"{median(on):,.3g}", f"{median(off):,.3g}", f"{median(ratios):.3f}", f"{100 * cost:+.1f} %",
        ", ".join(f"{r:.2f}" for r in ratios),
    ]  # fmt: skip
