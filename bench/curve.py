"""What CurveZMQ costs: the same workloads with keys (the default) and without (``insecure``),
in alternating pairs (on-off, off-on, ...), reported as the median of the per-pair ratios.

On this noisy VM a whole run of one setting after a whole run of the other measures the machine;
neighbours in time measure the setting. Three workloads, each in a fresh cluster per run:

* no-op throughput through Parsl (``SagaDispatchExecutor``, 2 workers, Parsl logging off; the
  default batching);
* the sequential round trip through Parsl (same config);
* no-op throughput and the round trip through the standalone Client (2 workers, no Parsl): the
  most frames per second, so where encryption shows most;
* libzmq alone: a DEALER/ROUTER echo of 100-byte messages in one process, so what CURVE's
  encryption costs per hop, apart from everything of ours.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import zmq
from parsl import python_app

from bench import apps
from bench.contenders import CONTENDERS, loaded
from bench.pairs import client_noop, ratio_row
from bench.stats import markdown, median
from dispatcher.local import LocalCluster

_SETTINGS = {"CURVE": "saga-dispatch", "no CURVE": "saga-dispatch (no CURVE)"}


def _parsl(contender: str, tasks: int, round_trips: int) -> tuple[float, float]:
    """(no-op tasks/s, median round trip ms) through Parsl."""
    with loaded(CONTENDERS[contender](2, logging=False)):
        app = python_app(apps.noop, executors=["bench"])
        [f.result() for f in [app(i) for i in range(100)]]
        started = time.perf_counter()
        for f in [app(i) for i in range(tasks)]:
            f.result()
        rate = tasks / (time.perf_counter() - started)
        times = []
        for i in range(round_trips):
            t = time.perf_counter()
            app(i).result()
            times.append(time.perf_counter() - t)
        return rate, median(times) * 1e3


def _client(insecure: bool, tasks: int, round_trips: int) -> tuple[float, float]:
    """(no-op tasks/s, median round trip ms) through the standalone Client."""
    with (
        tempfile.TemporaryDirectory(prefix="saga-bench-") as logs,
        LocalCluster(1, workers=2, log_dir=Path(logs), insecure=insecure) as cluster,
        cluster.client() as client,
    ):
        return client_noop(client, tasks, round_trips)


def _raw_echo(curve: bool, n: int) -> float:
    """Median round trip (us) of a 100-byte echo between a DEALER and a ROUTER over loopback TCP."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        if curve:
            public, secret = zmq.curve_keypair()
            server.curve_server = True
            server.curve_publickey, server.curve_secretkey = public, secret
            client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
            client.curve_serverkey = public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        message, times = b"x" * 100, []
        for i in range(n + 100):
            t = time.perf_counter()
            client.send(message)
            server.send_multipart(server.recv_multipart())
            client.recv()
            if i >= 100:
                times.append(time.perf_counter() - t)
        return median(times) * 1e6
    finally:
        server.close(0)
        client.close(0)
        ctx.term()


def curve_cost(pairs: int, tasks: int, round_trips: int, client_tasks: int) -> str:
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for k in range(pairs):
        order = list(_SETTINGS) if k % 2 == 0 else list(reversed(_SETTINGS))
        for setting in order:
            rate, rtt = _parsl(_SETTINGS[setting], tasks, round_trips)
            seen["throughput", setting].append(rate)
            seen["roundtrip", setting].append(rtt)
            rate, rtt = _client(setting == "no CURVE", client_tasks, round_trips)
            seen["client", setting].append(rate)
            seen["client-rt", setting].append(rtt)
            seen["raw", setting].append(_raw_echo(setting == "CURVE", 20 * round_trips))
    rows = []
    for what, label, unit, higher_better in (
        ("throughput", f"Parsl no-op throughput ({tasks:,} tasks, 2 workers, logging off)", "tasks/s", True),
        ("roundtrip", "Parsl sequential round trip", "ms", False),
        ("client", f"Client no-op throughput ({client_tasks:,} tasks, 2 workers)", "tasks/s", True),
        ("client-rt", "Client sequential round trip", "ms", False),
        ("raw", "libzmq alone: DEALER/ROUTER echo, 100 B", "us", False),
    ):
        rows.append(ratio_row(label, unit, seen[what, "CURVE"], seen[what, "no CURVE"], higher_better=higher_better))
    head = f"### What CurveZMQ costs ({pairs} alternating pairs, median of per-pair ratios)\n\n"
    headers = ["workload", "unit", "CURVE (median)", "no CURVE (median)", "on / off", "cost", "per pair"]
    return head + markdown(headers, rows)
