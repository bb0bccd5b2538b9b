"""``python -m bench [--quick] [--only NAME ...] [--out FILE]``: run the benchmarks, print tables."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from bench import contenders, makespan, parsl_overhead, planning, scale, startup, zmq_floor


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
    "roundtrip": lambda s: parsl_overhead.round_trip(s, logging=True),
    "roundtrip-nolog": lambda s: parsl_overhead.round_trip(s, logging=False),
    "sleep": parsl_overhead.sleep_efficiency,
    "client": lambda s: zmq_floor.client_vs_pyzmq(s.rounds, s.client_tasks, s.round_trips),
    "makespan": lambda s: makespan.makespans(("montage", "epigenomics"), s.wf_tasks, s.wf_busy_s, s.rounds),
    "scale": lambda s: scale.scale(s.sim_agents, s.sim_tasks),
    "startup": lambda s: startup.startup(s.rounds),
    "planning": lambda s: (
        planning.saga_scaling(s.plan_sizes, s.rounds) + "\n\n" + planning.overlap(s.overlap_tasks, s.rounds)
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (CI)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    parser.add_argument(
        "--contenders", nargs="*", choices=sorted(contenders.CONTENDERS), help="run only these (ratios need threadpool)"
    )
    args = parser.parse_args()
    contenders.select(args.contenders)
    sizes = parsl_overhead.Sizes.pick(args.quick)
    parts = [header(args.quick)]
    for name in args.only or BENCHMARKS:
        started = time.monotonic()
        parts.append(BENCHMARKS[name](sizes))
        print(parts[-1], f"\n({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    if args.out:
        Path(args.out).write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
