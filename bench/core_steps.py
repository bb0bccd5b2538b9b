"""The dispatcher core alone: what submitting and dispatching cost per task, no sockets.

1,000 registered nodes, ``tasks`` pinned round-robin and submitted in frames of 2,048, then one
credit round in which every node asks for 128 tasks. ``DispatcherCore.handle`` is called
directly, in a fresh interpreter per checkout, so ``--baseline`` compares the core of an
earlier checkout (either package layout) with this one's: the price of the journal that makes
each step atomic is measured here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.stats import markdown, median

_PROBE = """
import json, sys, time
from dispatcher import protocol as p
try:
    from dispatcher.server.core import CoreConfig, DispatcherCore
    from dispatcher.server.events import AgentMessageReceived, ClientMessageReceived
except ImportError:  # the layout before issue 13
    from dispatcher.core import CoreConfig, DispatcherCore
    from dispatcher.events import AgentMessageReceived, ClientMessageReceived
core = DispatcherCore(CoreConfig(dispatcher_id="d"))
for i in range(1000):
    core.handle(AgentMessageReceived(f"a{i}".encode(), p.Register(f"sim-{i:04d}", f"s{i}", 64, 64, 1.0), 0.0))
core.handle(ClientMessageReceived(b"c", p.Hello("c"), 0.0))
n, tid = int(sys.argv[1]), 0
started = time.process_time()
while tid < n:
    specs = tuple(p.TaskSpec(t, f"sim-{t % 1000:04d}", float(t), b"x" * 64) for t in range(tid, tid + 2048))
    tid += 2048
    core.handle(ClientMessageReceived(b"c", p.Submit(specs), 0.0))
submit_s = time.process_time() - started
started = time.process_time()
for i in range(1000):
    core.handle(AgentMessageReceived(f"a{i}".encode(), p.Credit(128), 0.0))
credit_s = time.process_time() - started
print(json.dumps({"submit_us": 1e6 * submit_s / tid, "dispatch_us": 1e6 * credit_s / 128_000}))
"""


def _run(tree: Path | None, tasks: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tasks)], capture_output=True, text=True, check=True, cwd=tree, timeout=600
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def core_steps(tasks: int, rounds: int, baseline: Path | None = None) -> str:
    trees: dict[str, Path | None] = {"this checkout": None}
    if baseline is not None:
        trees[f"@ {baseline.name}"] = baseline
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():  # interleaved
            runs[name].append(_run(tree, tasks))
    rows = [
        [name, median([r["submit_us"] for r in rs]), median([r["dispatch_us"] for r in rs])]
        for name, rs in runs.items()
    ]
    table = markdown(["core", "submit, CPU us/task", "dispatch (credit round), CPU us/task"], rows)
    title = f"### The dispatcher core alone: 1,000 nodes, {tasks:,} pinned tasks ({rounds} rounds, medians)"
    if baseline is None:
        return f"{title}\n\n{table}"
    ours, theirs = runs["this checkout"], runs[f"@ {baseline.name}"]
    ratios = {
        key: sorted(a[key] / b[key] for a, b in zip(ours, theirs, strict=True)) for key in ("submit_us", "dispatch_us")
    }  # a round's two runs are neighbours in time: their ratio is what a noisy machine still lets us compare
    spread = ", ".join(
        f"{label} {median(r):.2f} x ({r[0]:.2f}-{r[-1]:.2f})"
        for label, r in (("submit", ratios["submit_us"]), ("dispatch", ratios["dispatch_us"]))
    )
    return f"{title}\n\n{table}\n\nThis checkout / the baseline, per round (median, range): {spread}"
