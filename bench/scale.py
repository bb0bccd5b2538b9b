"""Benchmark 7: one dispatcher, many simulated agents, a million queued tasks.

The dispatcher is the real one (a subprocess, as ``LocalCluster`` starts it). The agents are
simulated: plain DEALER sockets speaking the protocol, many per process (``_sim_agents``), that
register under their own node names, heartbeat, and — once told to serve — grant credit and
answer every task at once with an empty result: nothing runs, so the dispatcher's own cost is
what is measured. The client is a bare DEALER speaking the protocol too (the Python Client's
per-future cost would dominate a million tasks).

Phases: (1) all agents registered and heartbeating, no tasks: the dispatcher's CPU per
heartbeat; (2) the tasks submitted pinned round-robin to the nodes while no agent grants
credit: the dispatcher's memory per queued task; (3) agents serve: tasks resolved per second.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from bench.stats import cpu_seconds, markdown
from dispatcher import protocol as p
from dispatcher.local import LocalCluster
from dispatcher.runtime import keys
from dispatcher.runtime.curve import use_curve

_HEARTBEAT_S = 1.0
_CAPACITY = 128
_PAYLOAD = b"x" * 64


def _sim_agents(url: str, names: list[str], control: multiprocessing.connection.Connection, keys_dir: str) -> None:
    """Run one DEALER per name in this process until told to stop; see the module docstring.
    With the cluster's keys (``keys_dir``; "" for none): the shared agent pair, as a DaemonSet's."""
    pair = keys.for_agent(Path(keys_dir), "sim") if keys_dir else None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks: dict[zmq.Socket[bytes], str] = {}
    poller = zmq.Poller()
    for name in names:
        sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if pair is not None:
            use_curve(sock, pair.public, pair.secret, pair.server)
        sock.connect(url)
        sock.send(p.encode(p.Register(name, f"{name}-sim", _CAPACITY // 2, _CAPACITY // 2, 1.0)))
        socks[sock] = name
        poller.register(sock, zmq.POLLIN)
    poller.register(control.fileno(), zmq.POLLIN)
    registered, serving, answered = 0, False, 0
    next_beat = time.monotonic() + _HEARTBEAT_S
    beat = p.encode(p.Heartbeat())
    while True:
        for sock_or_fd, _ in poller.poll(50):
            if sock_or_fd == control.fileno():
                command = control.recv()
                if command == "serve":
                    serving = True
                    credit = p.encode(p.Credit(_CAPACITY))
                    for s in socks:
                        s.send(credit)
                elif command == "stop":
                    for s in socks:
                        s.send(p.encode(p.Bye()))
                        s.close(linger=200)
                    control.send(answered)
                    return
                continue
            s = sock_or_fd
            while True:
                try:
                    message = p.decode(s.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if type(message) is p.Registered:
                    registered += 1
                    if registered == len(names):
                        control.send("registered")
                elif type(message) is p.Tasks and serving:
                    results = tuple(p.TaskResult(t.client_id, t.task_id, p.Outcome.OK, b"") for t in message.tasks)
                    s.send(p.encode(p.Results(results, len(results))))
                    answered += len(results)
        now = time.monotonic()
        if now >= next_beat:
            for s in socks:
                s.send(beat)
            next_beat = now + _HEARTBEAT_S


def _raw_client(url: str, keys_dir: Path | None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if keys_dir is not None:
        pair = keys.for_client(keys_dir)
        use_curve(sock, pair.public, pair.secret, pair.server)
    sock.connect(url)
    sock.send(p.encode(p.Hello("bench-scale")))
    while type(p.decode(sock.recv())) is not p.Welcome:
        pass
    return sock


def _status(sock: zmq.Socket[bytes], request_id: int) -> p.Status:
    sock.send(p.encode(p.StatusQuery(request_id)))
    while True:
        message = p.decode(sock.recv())
        if type(message) is p.Status and message.request_id == request_id:
            return message


def scale(agents: int, tasks: int, processes: int = 4) -> str:
    ctx = multiprocessing.get_context("spawn")
    names = [f"sim-{i:04d}" for i in range(agents)]
    with (
        tempfile.TemporaryDirectory(prefix="saga-bench-") as logs,
        LocalCluster(
            1, start_agents=False, heartbeat_interval_s=_HEARTBEAT_S, liveness=10, log_dir=Path(logs)
        ) as cluster,
    ):
        assert cluster.dispatcher is not None
        dispatcher = psutil.Process(cluster.dispatcher.pid)
        sims: list[tuple[Any, multiprocessing.connection.Connection]] = []
        started = time.perf_counter()
        for k in range(processes):
            parent, child = ctx.Pipe()
            keys_dir = str(cluster.keys_dir or "")
            proc = ctx.Process(
                target=_sim_agents, args=(cluster.agent_url, names[k::processes], child, keys_dir), daemon=True
            )
            proc.start()
            sims.append((proc, parent))
        for _, conn in sims:
            if not conn.poll(300) or conn.recv() != "registered":
                raise RuntimeError("simulated agents did not register")
        register_s = time.perf_counter() - started
        client = _raw_client(cluster.client_url, cluster.keys_dir)

        # (1) heartbeats only
        time.sleep(2 * _HEARTBEAT_S)
        cpu0, t0 = cpu_seconds(dispatcher), time.perf_counter()
        time.sleep(10 * _HEARTBEAT_S)
        idle_cpu = (cpu_seconds(dispatcher) - cpu0) / (time.perf_counter() - t0)
        heartbeat_us = 1e6 * idle_cpu / (agents / _HEARTBEAT_S)

        # (2) a million tasks queued, nobody granting credit
        rss0 = dispatcher.memory_info().rss
        batch = 10_000
        t0 = time.perf_counter()
        for start in range(0, tasks, batch):
            specs = tuple(
                p.TaskSpec(i + 1, names[i % agents], float(i), _PAYLOAD)
                for i in range(start, min(tasks, start + batch))
            )
            client.send(p.encode(p.Submit(specs)))
        status = _status(client, 1)
        while status.tasks_submitted < tasks:
            status = _status(client, 2)
        queue_s = time.perf_counter() - t0
        rss1 = dispatcher.memory_info().rss
        per_task = (rss1 - rss0) / tasks

        # (3) serve: every agent grants credit and answers at once
        cpu0, t0 = cpu_seconds(dispatcher), time.perf_counter()
        for _, conn in sims:
            conn.send("serve")
        resolved = 0
        while resolved < tasks:
            message = p.decode(client.recv())
            if type(message) is p.Resolved:
                resolved += len(message.results)
        drain_s = time.perf_counter() - t0
        drain_cpu = cpu_seconds(dispatcher) - cpu0
        answered = 0
        for proc, conn in sims:
            conn.send("stop")
            answered += conn.recv()
            proc.join(timeout=10)
        client.close(linger=0)
    beats = agents / _HEARTBEAT_S
    rows = [
        ["agents registered", f"{agents:,} in {register_s:.1f} s ({processes} processes of simulated agents)"],
        [
            "heartbeat handling",
            (
                f"{100 * idle_cpu:.1f}% of a core for {beats:,.0f} heartbeats/s "
                f"= {heartbeat_us:.1f} us each (ticks included)"
            ),
        ],
        ["tasks queued", f"{tasks:,} ({len(_PAYLOAD)}-byte payloads) in {queue_s:.1f} s = {tasks / queue_s:,.0f}/s"],
        ["memory per queued task", f"{per_task:,.0f} bytes (RSS {rss0 / 2**20:,.0f} -> {rss1 / 2**20:,.0f} MiB)"],
        [
            "dispatch rate",
            (
                f"{tasks / drain_s:,.0f} tasks/s resolved ({drain_s:.1f} s; "
                f"dispatcher CPU {1e6 * drain_cpu / tasks:.1f} us/task)"
            ),
        ],
        ["all resolved once", f"{resolved:,} resolved, {answered:,} answered by agents"],
    ]
    return f"### Scale: one dispatcher, {agents:,} simulated agents, {tasks:,} tasks\n\n" + markdown(
        ["measure", "value"], rows
    )
