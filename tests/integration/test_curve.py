"""CurveZMQ with a ZAP gate per socket, on real sockets: who gets in, with which User-Id."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from dispatcher.runtime import keys
from dispatcher.runtime.curve import AGENTS, CLIENTS, Gate, serve_curve, use_curve

pytestmark = pytest.mark.integration

_DONE = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
}


class Lab:
    def __init__(self, folder: Path) -> None:
        keys.generate(folder, nodes=["node-a"], clients=["alice"])
        self.folder = folder
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.gate = Gate(self.ctx)
        self.gate.start()
        self.gate.allow(AGENTS, keys.allow_list(folder / "agents"))
        self.gate.allow(CLIENTS, keys.allow_list(folder / "clients"))
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        serve_curve(self.router, *keys.load_pair(folder, "dispatcher"), CLIENTS)
        self.url = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.dispatcher_public = keys.load_public(folder, "dispatcher")
        self.sockets: list[zmq.Socket[bytes]] = []

    def peer(self, pair: str | None, server_public: bytes | None = None) -> tuple[zmq.Socket[bytes], str]:
        """A DEALER with ``pair``'s keys (None: no CURVE), connected; how its handshake ended."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        if pair is not None:
            use_curve(sock, *keys.load_pair(self.folder, pair), server_public or self.dispatcher_public)
        events = sock.get_monitor_socket()
        self.sockets += [sock, events]
        sock.connect(self.url)
        return sock, _handshake(events)

    def received(self) -> list[tuple[bytes, str | None]]:
        """Every message the router holds now: (body, User-Id)."""
        out = []
        while self.router.poll(200):
            frames = self.router.recv_multipart(copy=False)
            out.append((frames[-1].bytes, frames[-1].get("User-Id")))
        return out

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.router.close(linger=0)
        self.gate.stop()
        self.ctx.term()


def _handshake(monitor: zmq.Socket[bytes]) -> str:
    """How the peer's first handshake ended (30 s at most: an outcome, not a pace)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if monitor.poll(1000):
            event = recv_monitor_message(monitor)["event"]
            if event in _DONE:
                return _DONE[event]
    return "no outcome"


def _control(lab: Lab) -> None:
    """A right key, in the same test, gets its message through: and only it."""
    good, ok = lab.peer("client")
    assert ok == "ok"
    good.send(b"control")
    assert [body for body, _ in lab.received()] == [b"control"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "keys")
    yield lab
    lab.close()


def test_a_listed_client_key_gets_in_and_its_frames_carry_its_key(lab: Lab) -> None:
    sock, outcome = lab.peer("client-alice")
    assert outcome == "ok"
    sock.send(b"hello")
    assert lab.received() == [(b"hello", keys.load_public(lab.folder, "client-alice").decode())]


def offer(sock: zmq.Socket[bytes], data: bytes) -> None:
    """Send without waiting: after a refused handshake the DEALER may have no pipe until its
    next reconnect, and a blocking send would wait for it for ever. A frame that cannot even be
    queued is not delivered either, which is what these tests check."""
    with contextlib.suppress(zmq.Again):
        sock.send(data, zmq.NOBLOCK)


@pytest.mark.parametrize("pair", ["agent", "agent-node-a"])
def test_an_agent_key_is_refused_on_the_client_socket(lab: Lab, pair: str) -> None:
    sock, outcome = lab.peer(pair)
    assert outcome == "refused"
    offer(sock, b"submit")  # on a connection that never comes up
    _control(lab)


def test_no_curve_at_all_gets_nothing_through(lab: Lab) -> None:
    sock, outcome = lab.peer(None)
    assert outcome != "ok"
    offer(sock, b"submit")
    _control(lab)


def test_a_peer_that_pins_another_server_key_never_completes_a_handshake(lab: Lab) -> None:
    sock, outcome = lab.peer("client", server_public=keys.load_public(lab.folder, "agent"))
    assert outcome != "ok"
    offer(sock, b"submit")
    _control(lab)


def test_a_revoked_key_is_refused_from_the_next_handshake_and_marked_for_its_live_connection(lab: Lab) -> None:
    alice = keys.load_public(lab.folder, "client-alice")
    live, outcome = lab.peer("client-alice")
    assert outcome == "ok" and lab.gate.allowed(CLIENTS, alice)
    lists = keys.allow_list(lab.folder / "clients")
    (lab.folder / "clients" / "client-alice.key").unlink()  # revoke, then reload
    lab.gate.allow(CLIENTS, keys.allow_list(lab.folder / "clients"))
    assert set(lists) - set(keys.allow_list(lab.folder / "clients")) == {alice}
    assert not lab.gate.allowed(CLIENTS, alice)
    live.send(b"after the revocation")  # its connection is still up: the frame comes, marked as alice's
    [(body, user)] = lab.received()
    assert body == b"after the revocation" and user is not None
    assert not lab.gate.allowed(CLIENTS, user.encode())  # so the dispatcher can drop it
    _, again = lab.peer("client-alice")
    assert again == "refused"
    _, other = lab.peer("client")
    assert other == "ok"
    assert lab.gate.alive()
