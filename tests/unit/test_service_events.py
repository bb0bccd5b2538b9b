"""The shell's frame-to-event step: every message a peer may send reaches the core; others are rejected."""

from __future__ import annotations

from typing import get_args

import msgpack
import pytest

from dispatcher import protocol as p
from dispatcher.server.events import AgentMessageReceived, ClientMessageReceived, FrameRejected
from dispatcher.server.service import DispatcherService

from .test_protocol import EXAMPLES

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_reaches_the_core_exactly_from_the_side_that_may_send_it(message: p.Message) -> None:
    frames = [b"peer", p.encode(message)]
    from_agent, _ = DispatcherService._event("agent", frames, 1.0, "s")
    from_client, _ = DispatcherService._event("client", frames, 1.0, "s")
    agent_may = type(message) in get_args(p.AgentMessage)
    client_may = type(message) in get_args(p.ClientMessage)
    assert isinstance(from_agent, AgentMessageReceived if agent_may else FrameRejected)
    assert isinstance(from_client, ClientMessageReceived if client_may else FrameRejected)


def test_repin_is_a_client_message() -> None:
    """A re-plan's REPIN was once dropped by the shell as a wrong-direction frame."""
    event, _ = DispatcherService._event("client", [b"c", p.encode(p.Repin((p.Placement(1, "n", 0.0),)))], 0.0, "s")
    assert isinstance(event, ClientMessageReceived)


def test_a_frame_of_the_previous_version_reaches_the_core_with_its_version() -> None:
    frame = p.encode(p.Hello("c1", p.PROTOCOL_VERSION - 1), p.PROTOCOL_VERSION - 1)
    event, version = DispatcherService._event("client", [b"c", frame], 0.0, "s")
    assert isinstance(event, ClientMessageReceived)
    assert version == p.PROTOCOL_VERSION - 1


def test_a_frame_in_a_version_not_spoken_is_rejected_with_its_peer_and_version() -> None:
    frame = msgpack.packb([1, p.Op.REGISTER, "node-a", "a", 1, 0, 1.0, 1, []])
    event, version = DispatcherService._event("agent", [b"old-agent", frame], 0.0, "s")
    assert isinstance(event, FrameRejected)
    assert (event.peer, event.version, version) == (b"old-agent", 1, None)


def test_recv_frames_keeps_the_first_frames_and_drops_the_rest_of_a_long_message() -> None:
    import zmq

    from dispatcher.runtime.sockets import recv_frames

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://frames")
        b.connect("inproc://frames")
        a.send_multipart([b"%d" % i for i in range(1000)])
        a.send_multipart([b"next", b"one"])
        assert [f.bytes for f in recv_frames(b, 0, 5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert [f.bytes for f in recv_frames(b, 0, 5)] == [b"next", b"one"]  # the long one was read to its end
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


def test_send_parts_sends_small_and_large_frames_whole_and_in_order() -> None:
    import zmq

    from dispatcher.runtime.sockets import send_parts

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    large = bytearray(b"y" * (zmq.COPY_THRESHOLD + 1))
    try:
        a.bind("inproc://parts")
        b.connect("inproc://parts")
        send_parts(a, [b"one"])
        send_parts(a, [b"head", memoryview(large)])  # not copied: sent from where it is
        send_parts(a, [bytes(large)])
        assert b.recv_multipart() == [b"one"]
        assert b.recv_multipart() == [b"head", bytes(large)]
        assert b.recv_multipart() == [bytes(large)]
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()
