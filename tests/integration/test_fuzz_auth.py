"""The dispatcher under fuzzed input, with CurveZMQ on: 100,000 fuzzed frames per socket through
authenticated connections, then raw TCP garbage and CURVE handshakes with unknown keys on both
ports. The dispatcher keeps serving (a control task runs after each flood), its memory stays
flat (RSS growth under 32 MiB), and every refused connection is counted.

The fuzz is seeded (a failure replays): random bytes, truncated and bit-flipped valid frames,
valid envelopes around random fields, multi-part messages, and valid messages of the wrong
direction. Payloads are never pickles, so nothing a mutation makes can run in a worker.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import msgpack
import psutil
import pytest

from dispatcher import LocalCluster
from dispatcher import protocol as p
from dispatcher.runtime import keys
from tests.integration import apps
from tests.integration.test_security import RawPeer, counters

pytestmark = pytest.mark.integration

FRAMES = 100_000
CONNECTIONS = 200
MIB = 1024 * 1024


def _valid(rng: random.Random, side: str) -> bytes:
    ref = p.TaskRef("c", rng.randrange(1, 50))
    if side == "client":
        choices: list[p.Message] = [
            p.Submit((p.TaskSpec(rng.randrange(1, 10**6), rng.choice([None, "local-0", "x"]), rng.random(), b"fuzz"),)),
            p.Cancel((rng.randrange(1, 50),)),
            p.Repin((p.Placement(rng.randrange(1, 50), "local-0", 0.0),)),
            p.NodesQuery(rng.randrange(1, 100)),
            p.Heartbeat(),
            p.Credit(3),  # an agent's message: the wrong direction
        ]
    else:
        choices = [
            p.Credit(rng.randrange(0, 5)),
            p.Results((p.TaskResult("c", rng.randrange(1, 50), p.Outcome.OK, b"r"),), 1),
            p.Drain((ref,)),
            p.StealReply(rng.randrange(1, 9), (ref,)),
            p.AgentStatus(1, 1),
            p.Heartbeat(),
            p.Hello("fuzz"),  # a client's message: the wrong direction
        ]
    return p.encode(rng.choice(choices))


def fuzzed(rng: random.Random, side: str) -> list[bytes]:
    """One fuzzed message (a list of frames)."""
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 200))]
    frame = bytearray(_valid(rng, side))
    if kind == 1:
        return [bytes(frame[: rng.randrange(0, len(frame))])]
    if kind == 2:
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return [bytes(frame)]
    if kind == 3:
        junk = [rng.choice([None, -1, 2**64 - 1, "x" * rng.randrange(300), b"\0", [], [1, [2]], 1.5, True])]
        fields = junk * rng.randrange(0, 12)
        return [msgpack.packb([p.PROTOCOL_VERSION, rng.randrange(0, 40), *fields], use_bin_type=True)]
    if kind == 4:
        return [bytes(frame), rng.randbytes(rng.randrange(1, 50))]
    return [bytes(frame)]


def flood(peer: RawPeer, side: str, seed: int, last: p.Message, answer: type) -> None:
    """FRAMES fuzzed messages, then ``last``; returns once ``answer`` to it came back, so every
    frame before it was read (one connection's frames are handled in order)."""
    rng = random.Random(seed)
    for _ in range(FRAMES):
        peer.sock.send_multipart(fuzzed(rng, side))
        while peer.sock.poll(0):  # answers (errors, register-again): read them, so nothing piles up
            peer.sock.recv_multipart()
    peer.send(last)
    while True:
        assert peer.sock.poll(120_000), f"no answer to {last} after the flood"
        frames = peer.sock.recv_multipart()
        try:
            if isinstance(p.decode(frames[-1]), answer):
                return
        except p.ProtocolError:
            continue


def bad_frames(cluster: LocalCluster) -> int:
    with cluster.client() as client:
        return client.status().bad_frames


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def control(cluster: LocalCluster, n: int) -> None:
    with cluster.client() as client:
        assert client.submit(apps.square, n, node="local-0").result(timeout=120) == n * n


def test_fuzzed_frames_and_refused_connections_leave_the_dispatcher_serving_and_flat(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with LocalCluster(1, log_dir=logs) as cluster:
        folder = cluster.keys_dir
        assert folder is not None and cluster.dispatcher is not None
        pid = cluster.dispatcher.pid
        control(cluster, 2)  # warm: imports, first allocations
        before = rss(pid)
        server = keys.load_public(folder, "dispatcher")

        client_peer = RawPeer(cluster.client_url, (*keys.load_pair(folder, "client"), server))
        agent_peer = RawPeer(cluster.agent_url, (*keys.load_pair(folder, "agent"), server))
        try:
            assert client_peer.handshake() == "ok" and agent_peer.handshake() == "ok"
            client_peer.send(p.Hello("fuzzer"))
            agent_peer.send(p.Register("fuzz-node", "fuzz-agent", 1, 0, 1.0))
            start = bad_frames(cluster)
            flood(agent_peer, "agent", 2, p.Register("fuzz-node", "fuzz-agent", 1, 0, 1.0), p.Registered | p.Refused)
            after_agents = bad_frames(cluster)
            flood(client_peer, "client", 1, p.NodesQuery(10**9), p.Nodes)
            after_clients = bad_frames(cluster)
        finally:
            client_peer.close()
            agent_peer.close()
        control(cluster, 3)
        after_fuzz = rss(pid)

        other = tmp_path / "other"
        keys.generate(other)
        unknown = (*keys.load_pair(other, "client"), server)  # a key not on either list
        host, ports = "127.0.0.1", [int(cluster.client_url.rsplit(":", 1)[1]), int(cluster.agent_url.rsplit(":", 1)[1])]
        rng = random.Random(3)
        for port in ports:
            for _ in range(CONNECTIONS):
                with socket.create_connection((host, port)) as raw:
                    raw.sendall(rng.randbytes(rng.randrange(1, 300)))
            for url in (f"tcp://{host}:{port}",) * CONNECTIONS:
                peer = RawPeer(url, unknown)
                try:
                    assert peer.handshake() in ("refused", "failed")
                finally:
                    peer.close()
        control(cluster, 4)
        after_connections = rss(pid)
        assert cluster.dispatcher.poll() is None
    seen = counters(logs)
    growth = (after_fuzz - before) / MIB, (after_connections - before) / MIB
    assert max(growth) < 32, f"RSS grew {growth[0]:.1f} MiB over the fuzz, {growth[1]:.1f} MiB with the connections"
    # Each flood reached the decoder (a sixth of the frames are random bytes: at least those count).
    assert after_agents - start >= FRAMES // 6 and after_clients - after_agents >= FRAMES // 6, (
        start,
        after_agents,
        after_clients,
    )
    for side in ("client", "agent"):
        assert seen[f"{side}_refused"] == 2 * CONNECTIONS, (side, seen)  # each connection once (no reconnects)
        assert seen[f"{side}_handshakes_failed_key_not_allowed"] == CONNECTIONS, (side, seen)
    print(f"RSS growth: {growth[0]:.1f} MiB (fuzz), {growth[1]:.1f} MiB (connections); {seen}")
