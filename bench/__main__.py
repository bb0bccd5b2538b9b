"""``python -m bench [--quick] [--only NAME ...] [--out FILE] [--baseline DIR]``: run the
benchmarks, print tables. ``--baseline DIR`` (a checkout of an earlier commit, e.g. a ``git
worktree``) runs each benchmark of that checkout right after this one's, in the same run, so
the two can be compared side by side; ``paired``, ``core`` and ``startup`` alternate the two
checkouts run by run instead, which is what a noisy machine still lets us compare."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from bench import (
    contenders,
    core_steps,
    curve,
    kubernetes,
    makespan,
    memory,
    metrics_cost,
    paired,
    parsl_overhead,
    planning,
    scale,
    startup,
    zmq_floor,
)


def header(quick: bool) -> str:
    return (
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Parsl {version('parsl')}, pyzmq {version('pyzmq')}, anrg-saga {version('anrg-saga')}; "
        f"{'quick sizes, 1 round' if quick else 'medians of 3 rounds'}; "
        f"command: uv run python -m bench{' --quick' if quick else ''}"
    )


BENCHMARKS: dict[str, Callable[[parsl_overhead.Sizes], str]] = {
    "throughput": lambda s: parsl_overhead.throughput(s, logging=True),
    "throughput-nolog": lambda s: parsl_overhead.throughput(s, logging=False),
    "largeargs": parsl_overhead.large_arguments,
    "roundtrip": lambda s: parsl_overhead.round_trip(s, logging=True),
    "roundtrip-nolog": lambda s: parsl_overhead.round_trip(s, logging=False),
    "sleep": parsl_overhead.sleep_efficiency,
    "client": lambda s: zmq_floor.client_vs_pyzmq(s.rounds, s.client_tasks, s.round_trips),
    "curve": lambda s: curve.curve_cost(2 if s.rounds == 1 else 8, 5 * s.noop_tasks[0], s.round_trips, s.client_tasks),
    "metrics": lambda s: metrics_cost.metrics_cost(2 if s.rounds == 1 else 8, s.client_tasks, s.round_trips),
    "memory": lambda s: memory.memory(300 if s.rounds == 1 else 5000),
    "makespan": lambda s: makespan.makespans(("montage", "epigenomics"), s.wf_tasks, s.wf_busy_s, s.rounds),
    "scale": lambda s: scale.scale(s.sim_agents, s.sim_tasks),
    "startup": lambda s: startup.startup(s.rounds, _baseline),
    "core": lambda s: core_steps.core_steps(s.sim_tasks // 5, s.rounds, _baseline),
    "paired": lambda s: paired.paired(1 if s.rounds == 1 else 7, _baseline, quick=s.rounds == 1),
    "kubernetes": lambda s: kubernetes.kubernetes(4 if s.rounds == 1 else 40, images=s.rounds > 1),
    "planning": lambda s: (
        planning.saga_scaling(s.plan_sizes, s.rounds) + "\n\n" + planning.overlap(s.overlap_tasks, s.rounds)
    ),
}


_baseline: Path | None = None


def _run_baseline(name: str, quick: bool) -> str:
    """Benchmark ``name`` as the baseline checkout has it (its own code, this environment)."""
    assert _baseline is not None
    if not (_baseline / "bench").is_dir():
        return f"(baseline {_baseline}: no bench/ there)"
    argv = [sys.executable, "-m", "bench", "--only", name, *(["--quick"] if quick else [])]
    out = subprocess.run(argv, cwd=_baseline, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return f"(baseline {_baseline}: `{name}` failed: {out.stderr.strip().splitlines()[-1:]})"
    body = out.stdout.split("\n", 1)[1] if out.stdout.startswith("Machine:") else out.stdout
    return f"#### baseline ({_baseline}, `{name}`)\n\n{body.strip()}"


def main() -> int:
    global _baseline
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (CI)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    parser.add_argument(
        "--contenders", nargs="*", choices=sorted(contenders.CONTENDERS), help="run only these (ratios need threadpool)"
    )
    parser.add_argument("--baseline", type=Path, default=None, help="also run an earlier checkout's benchmarks")
    args = parser.parse_args()
    _baseline = args.baseline
    contenders.select(args.contenders)
    sizes = parsl_overhead.Sizes.pick(args.quick)
    parts = [header(args.quick)]
    chosen = args.only or list(BENCHMARKS)
    for i, name in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {name} ...", file=sys.stderr, flush=True)  # progress, off the tables
        started = time.monotonic()
        parts.append(BENCHMARKS[name](sizes))
        print(parts[-1], f"\n({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
        if _baseline is not None and name not in (
            "startup",
            "core",
            "paired",
        ):  # these run the baseline's code themselves
            parts.append(_run_baseline(name, args.quick))
            print(parts[-1], "\n", flush=True)
    if args.out:
        Path(args.out).write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
