"""Many seeds: build the lab once, run each seed in the hub namespace, aggregate, print a table."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.netlab import NetLab, available
from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from dispatcher.runtime.report import table

SPEEDS = (1.0, 1.0, 2.0, 4.0)


def run_seeds(
    seeds: list[int], tasks: int = 2000, window_s: float = 3.0, timeout_s: float = 180.0, log_root: Path | None = None
) -> list[dict[str, Any]]:
    """Run each seed; returns one result dict per seed (see chaos.run.summarize)."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"chaos runs need network namespaces: {why}")
    log_root = log_root or Path(tempfile.mkdtemp(prefix="saga-chaos-"))
    results = []
    with NetLab(len(SPEEDS)) as lab:
        spec = {
            "names": [f"node-{i}" for i in range(len(SPEEDS))],
            "namespaces": lab.node_ns,
            "speeds": list(SPEEDS),
            "hub_ip": lab.hub_ip,
            "window_s": window_s,
            "timeout_s": timeout_s,
        }
        for seed in seeds:
            log_dir = log_root / f"seed-{seed}"
            log_dir.mkdir(parents=True, exist_ok=True)
            argv = lab.exec_argv(lab.hub, [
                sys.executable, "-m", "chaos.run", "--seed", str(seed), "--tasks", str(tasks),
                "--spec", json.dumps(spec), "--log-dir", str(log_dir),
            ])  # fmt: skip
            started = time.monotonic()
            env = {**os.environ, PARENT_ENV: str(os.getpid())}
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=timeout_s + 120, check=False, env=env
                )
            except subprocess.TimeoutExpired:
                lab.kill_processes()
                results.append({"seed": seed, "error": f"hung for {timeout_s + 120:g} s", "log_dir": str(log_dir)})
                continue
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                results.append({"seed": seed, "error": (proc.stderr or proc.stdout)[-2000:], "log_dir": str(log_dir)})
                continue
            result = json.loads(lines[-1])
            result["wall_s"] = round(time.monotonic() - started, 1)
            result["log_dir"] = str(log_dir)
            results.append(result)
    return results


def failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that broke a promise: crashed, lost or wrong tasks, double resolution, strict violations."""
    return [r for r in results if "error" in r or r["lost"] or r["wrong"] or r["resolved_twice"] or r["violations"]]


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]:.2f}"


def report(results: list[dict[str, Any]]) -> str:
    done = [r for r in results if "error" not in r]
    kinds = Counter(f["kind"] for r in done for f in r["faults"])
    recoveries = [x["recovery_s"] for r in done for x in r["recoveries"]]
    kills = [x["recovery_s"] for r in done for x in r["recoveries"] if x["kind"] == "kill"]
    restarted = {r["seed"] for r in done if any(f["kind"] == "dispatcher" for f in r["faults"])}
    kills_alone = [
        x["recovery_s"] for r in done if r["seed"] not in restarted for x in r["recoveries"] if x["kind"] == "kill"
    ]
    kills_with = [
        x["recovery_s"] for r in done if r["seed"] in restarted for x in r["recoveries"] if x["kind"] == "kill"
    ]
    rows: list[tuple[str, object]] = [
        ("runs", len(results)),
        ("runs that crashed", len(results) - len(done)),
        ("faults", ", ".join(f"{k} {kinds[k]}" for k in ("kill", "stop", "link", "dispatcher")) or "-"),
        ("tasks", sum(r["tasks"] for r in done)),
        ("lost", sum(r["lost"] for r in done)),
        ("wrong value", sum(r["wrong"] for r in done)),
        ("resolved twice", sum(r["resolved_twice"] for r in done)),
        ("strict-affinity violations", sum(r["violations"] for r in done)),
        ("re-plans", sum(r["replans"] for r in done)),
        (
            "recovery p50 / p99 (s), all node faults",
            f"{_pct(recoveries, 0.5)} / {_pct(recoveries, 0.99)} (n={len(recoveries)})",
        ),
        ("recovery p50 / p99 (s), SIGKILL", f"{_pct(kills, 0.5)} / {_pct(kills, 0.99)} (n={len(kills)})"),
        (
            "  SIGKILL, dispatcher up",
            f"{_pct(kills_alone, 0.5)} / {_pct(kills_alone, 0.99)} (n={len(kills_alone)})",
        ),
        (
            "  SIGKILL + dispatcher restart in the same run",
            f"{_pct(kills_with, 0.5)} / {_pct(kills_with, 0.99)} (n={len(kills_with)})",
        ),
        ("run time median (s)", f"{statistics.median(r['elapsed_s'] for r in done):.1f}" if done else "-"),
    ]
    return table(["", "value"], [[str(a), str(b)] for a, b in rows])


def main(argv: list[str]) -> int:
    """``saga-dispatch chaos``: seeds in, a table out; exit 1 if any seed lost or doubled a task."""
    import signal

    from dispatcher.runtime.args import role_parser

    parser = role_parser("chaos", "run seeded fault-injection runs in network namespaces")
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=2000, help="DAG size per run (default 2000)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's result here")
    args = parser.parse_args(argv)
    # SIGTERM becomes SystemExit, so the lab's namespaces are always torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = run_seeds(seeds, tasks=args.tasks)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    print(report(results))
    bad = failures(results)
    for r in bad:
        print(f"seed {r['seed']} failed: {json.dumps({k: v for k, v in r.items() if k != 'recoveries'})[:800]}")
    return 1 if bad else 0
