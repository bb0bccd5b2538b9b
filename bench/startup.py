"""The README's Parsl example, as a newcomer runs it: wall time from ``parsl.load`` to the first
result and to the end, and the CPU of every process it starts, side by side with HTEX's
equivalent (four workers on this machine).

Each run is a fresh interpreter; this process is a child subreaper (PR_SET_CHILD_SUBREAPER),
so the processes a run leaves to be reaped by someone else are reaped here and their CPU is
counted too: ``RUSAGE_CHILDREN`` then covers every process the example started.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.stats import markdown, median

_EXAMPLE = """
import json, sys, time
t0 = time.monotonic()
import parsl
from parsl import Config, python_app
{setup}

@python_app
def double(x, parsl_resource_specification={{}}):
    return 2 * x

t_load = time.monotonic()
with parsl.load(Config(executors=[executor], run_dir=sys.argv[1])):
    futures = [double(i, {hint}) for i in range(10)]
    futures[0].result()
    t_first = time.monotonic()
    assert [f.result() for f in futures] == [2 * i for i in range(10)]
t_end = time.monotonic()
print(json.dumps({{"imports_s": t_load - t0, "first_s": t_first - t_load, "end_s": t_end - t_load}}))
"""

HINTS = {"saga-dispatch": 'parsl_resource_specification={"cost": 0.5}', "htex": ""}
"""HTEX refuses resource specifications it does not know: its example runs without the hint."""

SETUPS = {
    "saga-dispatch": (
        "from parsl_adapter import SagaDispatchExecutor\n"
        "executor = SagaDispatchExecutor(scheduler='HEFT', local_nodes=4, local_speeds=[1, 1, 2, 4])"
    ),
    "htex": (
        "from parsl.executors import HighThroughputExecutor\n"
        "from parsl.providers import LocalProvider\n"
        "executor = HighThroughputExecutor(max_workers_per_node=4, cores_per_worker=0.5, address='127.0.0.1',\n"
        "    provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))"
    ),
}

_PR_SET_CHILD_SUBREAPER = 36


def _reap_orphans(timeout_s: float) -> None:
    """Wait for every process reparented to us (workers, interchanges): their CPU counts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def run_once(name: str, scratch: Path, tree: Path | None = None) -> dict[str, float]:
    """One run of the example for ``name``, with this checkout's code or ``tree``'s."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _EXAMPLE.format(setup=SETUPS[name], hint=HINTS[name]), str(scratch)],
        capture_output=True, text=True, check=True, timeout=300, cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)} if tree is not None else None,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    _reap_orphans(30.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall_s, "cpu_s": cpu_s}


def startup(rounds: int, baseline: Path | None = None) -> str:
    """``baseline``: also the example with an earlier checkout's saga-dispatch, interleaved."""
    import tempfile

    contenders: list[tuple[str, str, Path | None]] = [(name, name, None) for name in SETUPS]
    if baseline is not None:
        contenders.append((f"saga-dispatch @ {baseline.name}", "saga-dispatch", baseline))
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in contenders}
    for _ in range(rounds):
        for label, name, tree in contenders:  # interleaved, so a slow moment of the machine hits all
            with tempfile.TemporaryDirectory(prefix="saga-startup-") as scratch:
                runs[label].append(run_once(name, Path(scratch), tree))
    meds = {name: {key: median([r[key] for r in results]) for key in results[0]} for name, results in runs.items()}
    keys = ("first_s", "end_s", "process_s", "cpu_s")
    table = markdown(
        ["executor", "load -> first result, s", "load -> end, s", "whole process, s", "CPU of all processes, s"],
        [[name, *(med[k] for k in keys)] for name, med in meds.items()],
    )
    saga, htex = meds["saga-dispatch"], meds["htex"]
    return (
        f"### The README's Parsl example, start to end ({rounds} rounds, medians)\n\n{table}\n\n"
        f"saga-dispatch / HTEX: load -> end {saga['end_s'] / htex['end_s']:.2f}x, "
        f"whole process {saga['process_s'] / htex['process_s']:.2f}x, CPU {saga['cpu_s'] / htex['cpu_s']:.2f}x "
        "(targets: end to end <= 1x; CPU of all processes <= 7.5 s)"
    )
