"""One chaos run (one seed), executed inside the lab's hub namespace by ``saga-dispatch chaos``.

    ip netns exec <hub> python -m chaos.run --seed S --spec '<json>'

Starts a dispatcher here and an agent in each node namespace (with CurveZMQ keys generated for
the run, a pair bound to each node's name: the dispatcher binds beyond loopback), runs a seeded DAG through
SagaDispatchExecutor while a thread injects the seeded faults, and prints one JSON line: tasks,
lost, wrong values, resolved twice, strict-affinity violations, and recovery times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from chaos import workload
from chaos.faults import Fault, plan_faults
from dispatcher.runtime.lifeline import ENV as PARENT_ENV
from dispatcher.runtime.lifeline import die_with_parent

CLIENT_PORT, AGENT_PORT = 5560, 5561


class Cluster:
    """The dispatcher (here, in the hub namespace) and one agent per node namespace."""

    def __init__(self, spec: dict[str, Any], log_dir: Path, keys_dir: Path) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.keys_dir = keys_dir
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()
        self._logs: list[IO[bytes]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
        env[PARENT_ENV] = str(os.getpid())
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def start_dispatcher(self) -> None:
        self.dispatcher = self._spawn("dispatcher", [
            sys.executable, "-m", "dispatcher", "--log-format", "json", "dispatcher",
            "--host", "0.0.0.0", "--client-port", str(CLIENT_PORT), "--agent-port", str(AGENT_PORT),
            "--keys", str(self.keys_dir),
        ])  # fmt: skip

    def start_agent(self, i: int) -> None:
        name, ns, speed = self.spec["names"][i], self.spec["namespaces"][i], self.spec["speeds"][i]
        self.agents[name] = self._spawn(name, [
            "ip", "netns", "exec", ns, sys.executable, "-m", "dispatcher", "--log-format", "json", "agent",
            "--dispatcher", f"tcp://{self.spec['hub_ip']}:{AGENT_PORT}", "--node-name", name,
            "--workers", "1", "--prefetch", "1", "--speed", repr(speed), "--keys", str(self.keys_dir),
        ])  # fmt: skip

    @staticmethod
    def signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            if sig == signal.SIGKILL:
                proc.wait()

    def stop_all(self) -> None:
        for proc in [*self.agents.values(), self.dispatcher]:
            self.signal(proc, signal.SIGCONT)
            self.signal(proc, signal.SIGKILL)
        for log in self._logs:
            log.close()


def _link(i: int, up: bool) -> None:
    subprocess.run(["ip", "link", "set", f"v{i}", "up" if up else "down"], check=True)


def inject(cluster: Cluster, faults: list[Fault], start: float, record: list[dict[str, Any]]) -> None:
    """Apply each fault at its time and heal it when due (the injector thread)."""
    names = cluster.spec["names"]
    events: list[tuple[float, int, str, Fault]] = []
    for n, fault in enumerate(faults):
        events.append((fault.at_s, n, "fault", fault))
        if fault.heal_after_s is not None:
            events.append((fault.at_s + fault.heal_after_s, n, "heal", fault))
    for at_s, n, what, fault in sorted(events):
        time.sleep(max(0.0, start + at_s - time.monotonic()))
        i = names.index(fault.node) if fault.node else -1
        if what == "fault":
            record.append({"kind": fault.kind, "node": fault.node, "at_ns": time.monotonic_ns(), "n": n})
            if fault.kind == "kill":
                cluster.signal(cluster.agents[names[i]], signal.SIGKILL)
            elif fault.kind == "stop":
                cluster.signal(cluster.agents[names[i]], signal.SIGSTOP)
            elif fault.kind == "link":
                _link(i, up=False)
            else:
                cluster.signal(cluster.dispatcher, signal.SIGKILL)
        elif fault.kind == "kill":
            cluster.start_agent(i)
        elif fault.kind == "stop":
            cluster.signal(cluster.agents[names[i]], signal.SIGCONT)
        elif fault.kind == "link":
            _link(i, up=True)
        else:
            cluster.start_dispatcher()


def run(spec: dict[str, Any], seed: int, tasks: int, log_dir: Path) -> dict[str, Any]:
    import parsl
    from parsl import Config, python_app

    from dispatcher import Client
    from dispatcher.runtime import keys
    from parsl_adapter import SagaDispatchExecutor

    names: list[str] = spec["names"]
    keys_dir = Path(tempfile.mkdtemp(prefix="saga-chaos-keys-"))
    keys.generate(keys_dir, nodes=names)
    cluster = Cluster(spec, log_dir, keys_dir)
    faults = plan_faults(seed, names, spec["window_s"])
    injected: list[dict[str, Any]] = []
    cluster.start_dispatcher()
    try:
        for i in range(len(names)):
            cluster.start_agent(i)
        with Client(f"tcp://127.0.0.1:{CLIENT_PORT}", connect_timeout_s=30, keys=keys_dir) as probe:
            deadline = time.monotonic() + 60
            while sum(n.state == "alive" for n in probe.nodes()) < len(names):
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not register")
                time.sleep(0.05)
        ex = SagaDispatchExecutor(address=f"tcp://127.0.0.1:{CLIENT_PORT}", connect_timeout_s=30, keys=str(keys_dir))
        dag = workload.dag(tasks, seed)
        with (
            tempfile.TemporaryDirectory() as run_dir,
            parsl.load(Config(executors=[ex], run_dir=run_dir, initialize_logging=False)),
        ):
            app = python_app(workload.task, executors=[ex.label])
            futures: dict[int, Any] = {}
            with ex.plan():
                for t, parents, cost in dag:
                    futures[t] = app(t, *[futures[p] for p in parents], parsl_resource_specification={"cost": cost})
            start = time.monotonic()
            injector = threading.Thread(target=inject, args=(cluster, faults, start, injected))
            injector.start()
            outcomes: dict[int, Any] = {}
            deadline = start + spec["timeout_s"]
            for t, future in futures.items():
                try:
                    outcomes[t] = future.result(timeout=max(0.1, deadline - time.monotonic()))
                except Exception as exc:
                    outcomes[t] = exc
            injector.join()
            elapsed = time.monotonic() - start
            first = {t: ex.first_planned_node(f.tid) for t, f in futures.items()}
            last = {t: ex.planned_node(f.tid) for t, f in futures.items()}
            twice_where = {
                "executor": ex.duplicate_resolutions,  # a Parsl future that was already done
                "client": ex.client.resolutions_ignored if ex.client else 0,  # a RESOLVED for a task it let go
            }
            twice = sum(twice_where.values())
            replans = sum(1 for p in ex.plans if "replan_of" in p)
    finally:
        cluster.stop_all()
        shutil.rmtree(keys_dir, ignore_errors=True)
        for i in range(len(names)):
            with contextlib.suppress(subprocess.CalledProcessError):
                _link(i, up=True)
    return summarize(
        seed,
        dag=dag,
        outcomes=outcomes,
        first=first,
        last=last,
        injected=injected,
        twice=twice,
        replans=replans,
        elapsed=elapsed,
        twice_where=twice_where,
    )


def summarize(
    seed: int,
    *,
    dag: list[tuple[int, list[int], float]],
    outcomes: dict[int, Any],
    first: dict[int, str | None],
    last: dict[int, str | None],
    injected: list[dict[str, Any]],
    twice: int,
    replans: int,
    elapsed: float,
    twice_where: dict[str, int] | None = None,
) -> dict[str, Any]:
    expected = workload.expected(dag)
    faulted = {f["node"] for f in injected if f["node"]}
    lost = [t for t, o in outcomes.items() if isinstance(o, BaseException)]
    wrong = [t for t, o in outcomes.items() if not isinstance(o, BaseException) and o[1] != expected[t]]
    violations = [
        t for t, o in outcomes.items()
        if not isinstance(o, BaseException) and o[0] not in {first[t], last[t]}
        and first[t] not in faulted and last[t] not in faulted
    ]  # fmt: skip
    recoveries = []
    for fault in injected:
        if fault["node"] is None:
            continue
        moved = [
            o[2]
            for t, o in outcomes.items()
            if not isinstance(o, BaseException)
            and first[t] == fault["node"]
            and o[0] != fault["node"]
            and o[2] > fault["at_ns"]
        ]
        if moved:
            recoveries.append({"kind": fault["kind"], "recovery_s": (min(moved) - fault["at_ns"]) / 1e9})
    return {
        "seed": seed, "tasks": len(dag), "lost": len(lost), "wrong": len(wrong), "resolved_twice": twice,
        "twice_where": twice_where or {},
        "violations": len(violations), "faults": [{"kind": f["kind"], "node": f["node"]} for f in injected],
        "recoveries": recoveries, "replans": replans, "elapsed_s": round(elapsed, 2),
        "examples": {"lost": lost[:5], "wrong": wrong[:5], "violations": violations[:5],
                     "errors": sorted({repr(outcomes[t])[:200] for t in lost})[:3]},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.run")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--spec", required=True, help="JSON: names, namespaces, speeds, hub_ip, window_s, timeout_s")
    parser.add_argument("--log-dir", required=True)
    args = parser.parse_args()
    die_with_parent()
    result = run(json.loads(args.spec), args.seed, args.tasks, Path(args.log_dir))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
