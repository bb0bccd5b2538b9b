"""Benchmark 4, and the floor under benchmark 2: the standalone Client against bare pyzmq.

Contenders, each in its own processes, interleaved per round:

* ``raw echo``: a DEALER sends tasks to a ROUTER echo in another process (one hop each way),
  with the least per-task work any task protocol has: msgpack ``[id, payload]`` out, the echo
  unpacks it and answers ``[id, result]``, the sender unpacks that; unbatched (one task per
  frame) and batched (100 per frame). The issue's yardstick.
* ``bare chain``: the same topology as saga-dispatch — client -> dispatcher -> agent -> worker
  process and back — in bare pyzmq and a multiprocessing pipe, with no protocol, no state and
  no serialization: what the hops alone cost. Latency only.
* ``bare chain + task work``: the same, plus what any Parsl executor does per task whatever its
  transport: the client packs the apply message and deserializes the result, the worker
  unpacks the message, calls the function and serializes its value. The floor under benchmark 2
  for an executor that runs tasks in worker processes behind a dispatcher.
* ``Client``: saga-dispatch's standalone Client on a one-node LocalCluster, running the same
  no-op Parsl apply message HTEX would (2 workers).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from parsl.serialize import deserialize, pack_apply_message, serialize, unpack_apply_message

from bench import apps
from bench.stats import cpu_seconds, markdown, median, percentile
from dispatcher.local import LocalCluster

_BATCH = 100


def _payload() -> bytes:
    return pack_apply_message(apps.noop, (1,), {})


# --------------------------------------------------------------------------- bare processes


def _echo(url_out: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    url_out.send(f"tcp://127.0.0.1:{port}")
    while True:
        peer, frame = sock.recv_multipart()
        if frame == b"stop":
            return
        tasks = msgpack.unpackb(frame)
        sock.send_multipart([peer, msgpack.packb([[task_id, b"r"] for task_id, _ in tasks])])


def _worker(conn: multiprocessing.connection.Connection, work: bool) -> None:
    while True:
        data = conn.recv_bytes()
        if data == b"stop":
            return
        if work:
            fn, args, kwargs = unpack_apply_message(data)
            data = serialize(fn(*args, **kwargs))
        conn.send_bytes(data)


def _agent(url: str, ready: Any, work: bool) -> None:
    """DEALER to the relay, a pipe to one worker process: forwards frames both ways."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(url)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(target=_worker, args=(child, work))
    worker.start()
    sock.send(b"hello")
    ready.send("ok")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(parent.fileno(), zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if sock in events:
            data = sock.recv()
            if data == b"stop":
                parent.send_bytes(b"stop")
                worker.join(timeout=5)
                return
            parent.send_bytes(data)
        if parent.fileno() in events:
            sock.send(parent.recv_bytes())


def _relay(url_out: Any) -> None:
    """ROUTER for clients, ROUTER for agents: the dispatcher's two sockets, nothing else."""
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    fport, bport = front.bind_to_random_port("tcp://127.0.0.1"), back.bind_to_random_port("tcp://127.0.0.1")
    url_out.send((f"tcp://127.0.0.1:{fport}", f"tcp://127.0.0.1:{bport}"))
    agent = back.recv_multipart()[0]  # the agent's hello
    client = b""
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if front in events:
            client, data = front.recv_multipart()
            back.send_multipart([agent, data])
            if data == b"stop":
                return
        if back in events:
            _, data = back.recv_multipart()
            front.send_multipart([client, data])


def _spawn(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)  # the agent has a child
    proc.start()
    return proc


def _reap(*procs: multiprocessing.process.BaseProcess) -> None:
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --------------------------------------------------------------------------- measurements


def _raw_echo(n: int, batch: int) -> tuple[float, list[float]]:
    """(tasks/s, sequential round trips) through a bare ROUTER echo."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    proc = _spawn(_echo, child)
    url = parent.recv()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(url)
    payload = _payload()
    pack, unpack = msgpack.packb, msgpack.unpackb
    try:
        sock.send(pack([[0, payload]]))
        sock.recv()
        rtts = []
        for i in range(300):
            t = time.perf_counter()
            sock.send(pack([[i, payload]]))
            unpack(sock.recv())
            rtts.append(time.perf_counter() - t)
        messages = n // batch
        started = time.perf_counter()
        for m in range(messages):
            sock.send(pack([[m * batch + k, payload] for k in range(batch)]))
        for _ in range(messages):
            unpack(sock.recv())
        rate = messages * batch / (time.perf_counter() - started)
        sock.send(b"stop")
    finally:
        sock.close(linger=100)
        _reap(proc)
    return rate, rtts


def _start_chain(
    *, work: bool
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.process.BaseProcess, zmq.Socket[bytes]]:
    """The bare chain's relay and agent (with its worker) running, and a client DEALER to it."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    relay = _spawn(_relay, child)
    front, back = parent.recv()
    ready_parent, ready_child = multiprocessing.get_context("spawn").Pipe()
    agent = _spawn(_agent, back, ready_child, work)
    ready_parent.recv()
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(front)
    return relay, agent, sock


def _bare_chain(rounds: int, work: bool) -> list[float]:
    """Sequential round trips through client -> relay -> agent -> worker -> back, bare; with
    ``work``, the task's serialization and call at both ends too."""
    relay, agent, sock = _start_chain(work=work)
    payload = _payload()

    def round_trip(i: int) -> None:
        if work:
            sock.send(pack_apply_message(apps.noop, (i,), {}))
            deserialize(sock.recv())
        else:
            sock.send(payload)
            sock.recv()

    try:
        for i in range(50):
            round_trip(i)
        rtts = []
        for i in range(rounds):
            t = time.perf_counter()
            round_trip(i)
            rtts.append(time.perf_counter() - t)
        sock.send(b"stop")
    finally:
        sock.close(linger=100)
        _reap(relay, agent)
    return rtts


def _bare_chain_cpu(n: int, window: int, batch: int = 1) -> tuple[float, float]:
    """(relay, agent) CPU us per task when the client keeps ``window`` tasks in flight, ``batch``
    tasks per frame, through the bare chain: what the dispatcher's and the agent's hops cost
    with no protocol, no state and no serialization, the floor under their CPU per task."""
    relay, agent, sock = _start_chain(work=False)
    frame = msgpack.packb([_payload()] * batch)
    procs = [psutil.Process(relay.pid), psutil.Process(agent.pid)]

    def run(messages: int) -> None:
        sent = 0
        for _ in range(min(window, messages)):
            sock.send(frame)
            sent += 1
        for _ in range(messages):
            sock.recv()
            if sent < messages:
                sock.send(frame)
                sent += 1

    try:
        run(200)
        before = [cpu_seconds(proc) for proc in procs]
        run(n // batch)
        used = [1e6 * (cpu_seconds(proc) - b) / n for proc, b in zip(procs, before, strict=True)]
        sock.send(b"stop")
    finally:
        sock.close(linger=100)
        _reap(relay, agent)
    return used[0], used[1]


def _client(n: int, rounds: int = 1000, *, insecure: bool = False) -> tuple[float, list[float], dict[str, float]]:
    """(tasks/s, sequential round trips, CPU us per task per process) through saga-dispatch's
    Client, one node, 2 workers; with CurveZMQ unless ``insecure``."""
    with (
        tempfile.TemporaryDirectory(prefix="saga-bench-") as logs,
        LocalCluster(1, workers=2, log_dir=Path(logs), insecure=insecure) as cluster,
        cluster.client() as client,
    ):
        [f.result() for f in [client.submit(apps.noop, i) for i in range(200)]]
        rtts = []
        for i in range(rounds):
            t = time.perf_counter()
            client.submit(apps.noop, i).result()
            rtts.append(time.perf_counter() - t)
        assert cluster.dispatcher is not None
        agent = psutil.Process(cluster.agents[cluster.node_names[0]].pid)
        procs = {"client": psutil.Process(), "dispatcher": psutil.Process(cluster.dispatcher.pid), "agent": agent}
        procs |= {
            f"worker {i}": w
            for i, w in enumerate(c for c in agent.children() if "resource_tracker" not in " ".join(c.cmdline()))
        }
        before = {name: cpu_seconds(proc) for name, proc in procs.items()}
        started = time.perf_counter()
        for f in [client.submit(apps.noop, i) for i in range(n)]:
            f.result()
        rate = n / (time.perf_counter() - started)
        cpu = {name: 1e6 * (cpu_seconds(proc) - before[name]) / n for name, proc in procs.items()}
        return rate, rtts, cpu


def client_vs_pyzmq(rounds: int, n: int, round_trips: int) -> str:
    rates: dict[str, list[float]] = defaultdict(list)
    rtt: dict[str, list[float]] = defaultdict(list)
    p99: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)

    def note(name: str, times: list[float]) -> None:
        rtt[name].append(median(times) * 1e3)
        p99[name].append(percentile(times, 0.99) * 1e3)

    for r in range(rounds):
        steps = ["raw", "batched", "chain", "chain-cpu", "chain+work", "client", "client-nocurve"]
        for step in steps[r % len(steps) :] + steps[: r % len(steps)]:
            if step == "raw":
                rate, times = _raw_echo(n * 4, 1)
                rates["raw echo, 1 task/frame"].append(rate)
                note("raw echo (1 hop each way)", times)
            elif step == "batched":
                rate, _ = _raw_echo(n * 20, _BATCH)
                rates[f"raw echo, {_BATCH} tasks/frame"].append(rate)
            elif step == "chain":
                note("bare chain: client-dispatcher-agent-worker", _bare_chain(round_trips, work=False))
            elif step == "chain-cpu":
                for label, window, batch in (("1 task/frame", 4, 1), ("4 tasks/frame", 1, 4)):
                    relay_us, agent_us = _bare_chain_cpu(n, window, batch)
                    cpu[f"bare chain, {label}: relay (the dispatcher's floor)"].append(relay_us)
                    cpu[f"bare chain, {label}: agent (the agent's floor)"].append(agent_us)
            elif step == "chain+work":
                note("bare chain + task work (pack, unpack, call, serialize)", _bare_chain(round_trips, work=True))
            else:
                insecure = step == "client-nocurve"
                rate, times, used = _client(n, round_trips, insecure=insecure)
                label = "saga-dispatch Client (2 workers, no CURVE)" if insecure else "saga-dispatch Client (2 workers)"
                for name, us in used.items():
                    cpu[f"{name} (no CURVE)" if insecure else name].append(us)
                rates[label].append(rate)
                note(label, times)
    base = median(rates["raw echo, 1 task/frame"])
    rows = [
        [name, f"{median(v):,.0f}", f"{median(v) / base:.3f}", ", ".join(f"{x:,.0f}" for x in v)]
        for name, v in rates.items()
    ]
    out = f"### Client throughput vs raw pyzmq ({n:,} no-op tasks for the Client)\n\n"
    out += markdown(["contender", "tasks/s (median)", "x raw echo", "rounds"], rows)
    rows = [[name, f"{median(v):.3f}", f"{median(p99[name]):.3f}"] for name, v in rtt.items()]
    out += "\n\nWhere the Client's time goes: CPU per task in each process (median of rounds; 2 cores in all)\n\n"
    out += markdown(["process", "CPU us/task"], [[name, f"{median(v):.0f}"] for name, v in cpu.items()])
    out += "\n\n### Sequential round trip without Parsl: the hops' floor\n\n"
    return out + markdown(["path", "median ms", "p99 ms"], rows)
