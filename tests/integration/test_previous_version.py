"""A rolling upgrade: an agent and a client that speak the previous protocol version, against the
current dispatcher. Their frames are written by hand from the previous version's spec
(docs/protocol.md), so this test does not lean on our own codec to speak it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from dispatcher import LocalCluster
from dispatcher import protocol as p

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

OLD = p.PROTOCOL_VERSION - 1
Op = p.Op


class Peer:
    """A DEALER that speaks raw msgpack frames, checking the version of every frame it gets."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, version: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        self.version = version

    def send(self, op: Op, *fields: Any) -> None:
        self.sock.send(msgpack.packb([self.version, int(op), *fields], use_bin_type=True))

    def expect(self, op: Op, timeout_s: float = 30.0, heartbeat: bool = False) -> list[Any]:
        """The fields of the next frame with ``op`` (heartbeats skipped); every frame is checked.
        ``heartbeat``: answer every heartbeat, as a live agent does, while waiting."""
        while True:
            assert self.sock.poll(int(timeout_s * 1000)), f"no {op.name} within {timeout_s} s"
            if heartbeat:
                self.send(Op.HEARTBEAT)
            version, got, *fields = msgpack.unpackb(self.sock.recv(), raw=False)
            assert version == self.version, f"a version {self.version} peer was sent a version {version} frame"
            if got != Op.HEARTBEAT:
                assert got == op, (Op(got).name, fields)
                return fields


@contextlib.contextmanager
def dispatcher_only(logs: Path) -> Iterator[tuple[LocalCluster, zmq.Context[zmq.Socket[bytes]]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        # Keyless: the previous version's peers had no CurveZMQ (the subject here is the codec).
        with LocalCluster(1, start_agents=False, log_dir=logs, insecure=True) as cluster:
            yield cluster, ctx
    finally:
        ctx.destroy(linger=0)


def test_an_agent_and_a_client_of_the_previous_version_run_a_task_end_to_end(logs: Path) -> None:
    with dispatcher_only(logs) as (cluster, ctx):
        agent = Peer(ctx, cluster.agent_url, OLD)
        agent.send(Op.REGISTER, "old-node", "old-agent-1", 1, 0, 1.0, OLD, [], "")
        node_name, incarnation, _, _, _ = agent.expect(Op.REGISTERED)
        assert (node_name, incarnation) == ("old-node", 1)
        agent.send(Op.CREDIT, 1)

        client = Peer(ctx, cluster.client_url, OLD)
        client.send(Op.HELLO, "old-client", OLD, "")
        assert len(client.expect(Op.WELCOME)) == 2  # the previous version's: no payload window
        client.send(Op.SUBMIT, [[1, "old-node", 0.0, b"payload-1", 0]])

        [[client_id, task_id, rank, payload]] = agent.expect(Op.TASKS)[0]
        assert (client_id, task_id, rank, payload) == ("old-client", 1, 0.0, b"payload-1")
        agent.send(Op.RESULTS, [["old-client", 1, int(p.Outcome.OK), b"result-1", 0.01]], 1)

        [[resolved_id, outcome, result, ran_on, _]] = client.expect(Op.RESOLVED)[0]
        assert (resolved_id, outcome, result, ran_on) == (1, int(p.Outcome.OK), b"result-1", "old-node")

        client.send(Op.STATUS_QUERY, 7)
        status = client.expect(Op.STATUS)
        assert len(status) == 9, status
        request_id, _, nodes, pool_queued, submitted, resolved, duplicates, _, _ = status
        assert (request_id, pool_queued, submitted, resolved, duplicates) == (7, 0, 1, 1, 0)
        assert [len(n) for n in nodes] == [12]
        client.send(Op.NODES_QUERY, 8)
        assert [row[:2] for row in client.expect(Op.NODES)[1]] == [["old-node", "alive"]]


def test_a_peer_of_a_version_no_longer_spoken_is_told_which_versions_are(logs: Path) -> None:
    with dispatcher_only(logs) as (cluster, ctx):
        ancient = Peer(ctx, cluster.agent_url, OLD - 1)
        ancient.send(Op.REGISTER, "ancient-node", "a", 1, 0, 1.0, OLD - 1, [], "")
        assert ancient.sock.poll(30_000)
        version, op, reason = msgpack.unpackb(ancient.sock.recv(), raw=False)
        assert (version, op) == (p.PROTOCOL_VERSION, Op.REFUSED)  # in the version it must learn of
        assert f"protocol version {OLD - 1}" in reason and str(p.PROTOCOL_VERSION) in reason

        old_client = Peer(ctx, cluster.client_url, OLD - 1)
        old_client.send(Op.HELLO, "ancient-client", OLD - 1, "")
        assert old_client.sock.poll(30_000)
        version, op, code, message = msgpack.unpackb(old_client.sock.recv(), raw=False)
        assert (version, op, code) == (p.PROTOCOL_VERSION, Op.ERROR, p.ErrorCode.VERSION_MISMATCH)
        assert f"protocol version {OLD - 1}" in message


def test_a_rolling_update_mixes_old_and_new_agents_under_one_dispatcher(logs: Path) -> None:
    """The DaemonSet's rolling update, half way: node local-0 runs a current agent, old-node an
    agent of the previous version. One current client's tasks, pinned to each, all resolve on
    their node; the old client still reads STATUS in its version."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with LocalCluster(1, log_dir=logs, insecure=True) as cluster, cluster.client() as client:
            new_task = client.submit(pow, 3, 2, node="local-0")  # first: it imports Parsl (seconds)
            old = Peer(ctx, cluster.agent_url, OLD)  # then the old agent, which answers heartbeats
            old.send(Op.REGISTER, "old-node", "old-agent-1", 1, 0, 1.0, OLD, [], "")
            old.expect(Op.REGISTERED, heartbeat=True)
            old.send(Op.CREDIT, 1)
            client.submit_payload(b"for-the-old-agent", node="old-node")
            [[client_id, task_id, _, payload]] = old.expect(Op.TASKS, heartbeat=True)[0]
            nodes = {n.node_name: n for n in client.nodes()}
            assert nodes["old-node"].versions == "" and "python=" in nodes["local-0"].versions
            assert payload == b"for-the-old-agent"
            old.send(Op.RESULTS, [[client_id, task_id, int(p.Outcome.OK), b"", 0.01]], 1)
            assert new_task.result(timeout=60) == 9
            assert new_task.node_name == "local-0"
    finally:
        ctx.destroy(linger=0)
