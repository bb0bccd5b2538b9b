"""The dispatcher's memory under a flood of large payloads (issue 17).

``tasks`` no-op tasks with a ``size``-byte argument each go through the standalone Client to one
node with one worker, so they queue in the dispatcher faster than the node drains them. It
reports the dispatcher's peak resident memory (``VmHWM``), this process's (the client, which
holds every payload until it resolves, to re-send after a restart), the throughput, and whether
every task resolved once with its own value. The second row does the same with the dispatcher
SIGKILLed once half the tasks resolved and started again on its ports: every task must still
resolve once (the client re-sends what is unresolved).
"""

from __future__ import annotations

import resource
import signal
import tempfile
import time
from pathlib import Path

from bench import apps
from bench.stats import markdown
from dispatcher.local import LocalCluster


def _peak_mb(pid: int) -> float:
    """A live process's peak resident memory, MB (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def flood(tasks: int, size: int, restart: bool, max_memory: str) -> list[str]:
    """One run: [label, budget, dispatcher peak MB, client peak MB, tasks/s, resolved once and right]."""
    blob = b"x" * size
    with (
        tempfile.TemporaryDirectory(prefix="saga-bench-") as logs,
        LocalCluster(1, workers=1, log_dir=Path(logs), dispatcher_args=["--max-memory", max_memory]) as cluster,
        cluster.client(connect_timeout_s=30) as client,
    ):
        assert cluster.dispatcher is not None
        peaks = []
        started = time.perf_counter()
        futures = [client.submit(apps.blob_size, i, blob) for i in range(tasks)]
        if restart:
            half = futures[tasks // 2]
            half.result(timeout=600)
            peaks.append(_peak_mb(cluster.dispatcher.pid))
            client_port = int(cluster.client_url.rsplit(":", 1)[1])
            agent_port = int(cluster.agent_url.rsplit(":", 1)[1])
            cluster.kill_dispatcher(signal.SIGKILL)
            cluster.start_dispatcher(client_port, agent_port)
        results = [f.result(timeout=1800) for f in futures]
        elapsed = time.perf_counter() - started
        peaks.append(_peak_mb(cluster.dispatcher.pid))
        right = results == [(i, size) for i in range(tasks)] and client.resolutions_ignored == 0
    client_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = f"{tasks:,} x {size / 1e6:g} MB" + (", dispatcher SIGKILLed and restarted" if restart else "")
    budget = "none (1 TiB)" if max_memory == UNBOUNDED else max_memory
    return [
        label, budget, f"{max(peaks):.0f}", f"{client_mb:.0f}", f"{tasks / elapsed:.0f}", "yes" if right else "**no**"
    ]  # fmt: skip


UNBOUNDED = "1T"
"""``--max-memory`` so large that every payload is kept: what the dispatcher did before it had a budget."""
BUDGET = "256M"
"""The issue's budget: the dispatcher's peak must stay within 300 MiB."""


def memory(tasks: int, size: int = 1_000_000) -> str:
    rows = [
        flood(tasks, size, restart=False, max_memory=UNBOUNDED),
        flood(tasks, size, restart=False, max_memory=BUDGET),
        flood(tasks, size, restart=True, max_memory=BUDGET),
    ]
    table = markdown(
        [
            "workload",
            "--max-memory",
            "dispatcher peak RSS MB",
            "client peak RSS MB",
            "tasks/s",
            "every task once, right",
        ],
        rows,
    )
    return f"### Large payloads: dispatcher memory (one node, one worker; CURVE on)\n\n{table}"
