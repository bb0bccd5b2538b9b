"""This checkout against another, in alternating pairs: what a noisy machine still lets us compare.

On a shared 2-core VM the same benchmark drifts by 20-40 % within minutes, so a whole run of one
checkout followed by a whole run of the other (``--baseline``'s other benchmarks) can show
regressions or gains that are the machine's. Here each scenario runs in a fresh interpreter,
alternately in this checkout and in the other (``A B A B ...``, ``repeat`` pairs), and the
figure of merit is the median of the per-pair ratios: the two runs of a pair are neighbours in
time. Without a baseline, this checkout is paired with itself: the ratios then show the noise.

Each probe uses only what both package layouts have (``dispatcher.LocalCluster``, the Client,
``bench.contenders`` of its own checkout) and prints one number.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

from bench.stats import markdown, median

_COMMON: Final = """
import statistics, sys, time
from bench import apps
"""

_PARSL_RT: Final = """
from bench.contenders import CONTENDERS, loaded
from parsl import python_app
with loaded(CONTENDERS["saga-dispatch"](2, logging={logging})):
    app = python_app(apps.noop, executors=["bench"])
    for i in range(50):
        app(i).result()
    times = []
    for i in range({n}):
        t = time.perf_counter()
        app(i).result()
        times.append(time.perf_counter() - t)
print(1e3 * statistics.median(times))
"""

_CLIENT_RT: Final = """
from dispatcher import LocalCluster
with LocalCluster(2, workers=1) as cluster, cluster.client() as client:
    for i in range(200):
        client.submit(apps.noop, i).result(timeout=60)
    times = []
    for i in range({n}):
        t = time.perf_counter()
        client.submit(apps.noop, i).result(timeout=60)
        times.append(time.perf_counter() - t)
print(1e3 * statistics.median(times))
"""

_SLEEP: Final = """
from bench.contenders import CONTENDERS, loaded
from parsl import python_app
with loaded(CONTENDERS["saga-dispatch"](8, logging=True)):
    app = python_app(apps.sleep10ms, executors=["bench"])
    [f.result() for f in [app() for _ in range(16)]]
    started = time.perf_counter()
    for f in [app() for _ in range({n})]:
        f.result()
print(100 * {n} * 0.01 / 8 / (time.perf_counter() - started))
"""

_THROUGHPUT: Final = """
from bench.contenders import CONTENDERS, loaded
from parsl import python_app
with loaded(CONTENDERS["saga-dispatch"](2, logging=False)):
    app = python_app(apps.noop, executors=["bench"])
    [f.result() for f in [app(i) for i in range(200)]]
    started = time.perf_counter()
    [f.result() for f in [app(i) for i in range({n})]]
print({n} / (time.perf_counter() - started))
"""

_CLIENT_CPU: Final = """
import psutil
from dispatcher import LocalCluster
with LocalCluster(1, workers=2) as cluster, cluster.client() as client:
    [f.result() for f in [client.submit(apps.noop, i) for i in range(500)]]
    procs = [psutil.Process(cluster.dispatcher.pid), psutil.Process(cluster.agents[cluster.node_names[0]].pid)]
    before = sum(sum(p.cpu_times()[:2]) for p in procs)
    [f.result() for f in [client.submit(apps.noop, i) for i in range({n})]]
    used = sum(sum(p.cpu_times()[:2]) for p in procs) - before
print(1e6 * used / {n})
"""

SCENARIOS: Final = {
    # name: (probe, size, quick size, what the number is, higher is better)
    "parsl round trip, logging off": (_PARSL_RT.replace("{logging}", "False"), 1000, 50, "ms", False),
    "parsl round trip, DEBUG": (_PARSL_RT.replace("{logging}", "True"), 1000, 50, "ms", False),
    "client round trip": (_CLIENT_RT, 1500, 50, "ms", False),
    "10 ms sleeps, 8 workers": (_SLEEP, 800, 40, "% efficiency", True),
    "no-op throughput, logging off": (_THROUGHPUT, 4000, 200, "tasks/s", True),
    "client no-op tasks: dispatcher + agent CPU per task": (_CLIENT_CPU, 20000, 500, "us", False),
}


def _probe(tree: Path, code: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _COMMON + code.replace("{n}", str(n))],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        timeout=900,
    )
    return float(out.stdout.strip().splitlines()[-1])


def paired(repeat: int, baseline: Path | None, quick: bool = False, only: str = "") -> str:
    here = Path(__file__).resolve().parent.parent
    other = baseline.resolve() if baseline is not None else here
    label = f"@ {other.name}" if baseline is not None else "this checkout again"
    rows = []
    for name, (code, size, quick_size, unit, higher_better) in SCENARIOS.items():
        if only not in name:
            continue
        n = quick_size if quick else size
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(repeat):
            trees = [(ours, here), (theirs, other)]
            for results, tree in trees if i % 2 == 0 else trees[::-1]:  # A B, B A, ...: no side always first
                results.append(_probe(tree, code, n))
        ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
        better = "higher" if higher_better else "lower"
        rows.append(
            [
                f"{name} ({unit}, {better} is better)",
                f"{median(ours):.3g}",
                f"{median(theirs):.3g}",
                f"{median(ratios):.3f} x ({ratios[0]:.2f}-{ratios[-1]:.2f})",
            ]
        )
    headers = ["scenario", "this checkout (median)", f"{label} (median)", "per-pair ratio: median (range)"]
    title = f"### This checkout and {label}, in {repeat} alternating pairs per scenario"
    return f"{title}\n\n" + markdown(headers, rows)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="the other checkout (default: this one)")
    parser.add_argument("--repeat", type=int, default=7, help="pairs per scenario")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", default="", help="only the scenarios whose name contains this")
    args = parser.parse_args(argv)
    print(paired(args.repeat, args.baseline, args.quick, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
