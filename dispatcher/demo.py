"""``saga-dispatch demo``: a pinned workload on a local 4-node cluster, and where each task ran."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from dispatcher.local import LocalCluster
from dispatcher.report import table


def work(cost_s: float) -> str:
    """A task that takes ``cost_s`` on a speed-1 node and reports where it ran."""
    time.sleep(cost_s / float(os.environ.get("NODE_SPEED", "1")))
    return os.environ.get("NODE_NAME", "?")


def run_demo(tasks: int = 200, seed: int = 7) -> int:
    rng = random.Random(seed)
    speeds = [1.0, 1.0, 2.0, 4.0]
    with (
        tempfile.TemporaryDirectory(prefix="saga-demo-") as logs,
        LocalCluster(4, speeds=speeds, workers=2, log_dir=Path(logs)) as cluster,
        cluster.client() as client,
    ):
        names = cluster.node_names
        # Faster nodes get proportionally more of the work, as a planner would place it.
        planned = rng.choices(names, weights=speeds, k=tasks)
        started = time.monotonic()
        futures = [
            (node, client.submit(work, rng.uniform(0.002, 0.02), node=node, rank=float(i)))
            for i, node in enumerate(planned)
        ]
        ran = [(node, f.result(timeout=120)) for node, f in futures]
        elapsed = time.monotonic() - started
    planned_count = Counter(node for node, _ in ran)
    ran_count = Counter(where for _, where in ran)
    on_plan = sum(node == where for node, where in ran)
    rows = [[n, s, planned_count[n], ran_count[n]] for n, s in zip(names, speeds, strict=True)]
    print(table(["node", "speed", "planned", "ran"], rows))
    print(f"\n{tasks} tasks in {elapsed:.2f} s; {on_plan}/{tasks} ran on their planned node")
    return 0 if on_plan == tasks else 1
