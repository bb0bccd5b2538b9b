"""What /metrics costs: the Client's no-op throughput and round trip with the dispatcher's
metrics on (the default, with a scraper reading ``/metrics`` every second, as Prometheus would
at a 1 s interval, 15 times its usual rate) and off (``--no-metrics``: the core issues no
``Count`` or ``Observe``, and no HTTP server runs), in alternating pairs (on-off, off-on, ...),
reported as the median of the per-pair ratios. CURVE on in both (the default). The Client is
the workload with the most dispatcher steps per second, so where counting shows most.
"""

from __future__ import annotations

import tempfile
import threading
import urllib.request
from collections import defaultdict
from pathlib import Path

from bench.pairs import client_noop, ratio_row
from bench.stats import markdown
from dispatcher.local import LocalCluster

_SETTINGS = ("metrics", "no metrics")


def _client(metrics: bool, tasks: int, round_trips: int) -> tuple[float, float, int]:
    """(no-op tasks/s, median round trip ms, scrapes taken) through the standalone Client."""
    extra = [] if metrics else ["--no-metrics"]
    with (
        tempfile.TemporaryDirectory(prefix="saga-bench-") as logs,
        LocalCluster(1, workers=2, log_dir=Path(logs), http=metrics, dispatcher_args=extra) as cluster,
        cluster.client() as client,
    ):
        stop = threading.Event()
        scrapes = [0]

        def scrape() -> None:
            while not stop.wait(1.0):
                with urllib.request.urlopen(f"{cluster.http_url}/metrics", timeout=10) as response:
                    response.read()
                scrapes[0] += 1

        scraper = threading.Thread(target=scrape, daemon=True)
        if metrics:
            scraper.start()
        try:
            rate, rtt = client_noop(client, tasks, round_trips)
        finally:
            stop.set()
            if metrics:
                scraper.join()
        return rate, rtt, scrapes[0]


def metrics_cost(pairs: int, tasks: int, round_trips: int) -> str:
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    scrapes = 0
    for k in range(pairs):
        for setting in _SETTINGS if k % 2 == 0 else reversed(_SETTINGS):
            rate, rtt, n = _client(setting == "metrics", tasks, round_trips)
            seen["client", setting].append(rate)
            seen["client-rt", setting].append(rtt)
            scrapes += n
    rows = []
    for what, label, unit, higher_better in (
        ("client", f"Client no-op throughput ({tasks:,} tasks, 2 workers)", "tasks/s", True),
        ("client-rt", "Client sequential round trip", "ms", False),
    ):
        rows.append(
            ratio_row(label, unit, seen[what, "metrics"], seen[what, "no metrics"], higher_better=higher_better)
        )
    head = (
        f"### What metrics cost ({pairs} alternating pairs, median of per-pair ratios; "
        f"{scrapes} scrapes of /metrics taken meanwhile; target: within 5 %)\n\n"
    )
    headers = ["workload", "unit", "metrics (median)", "no metrics (median)", "on / off", "cost", "per pair"]
    return head + markdown(headers, rows)
