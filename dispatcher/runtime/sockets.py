"""ZeroMQ socket helpers shared by the dispatcher, the client and the agent."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import zmq


def _has_more(sock: zmq.Socket[bytes]) -> bool:
    """Whether another message waits on ``sock``, without a ``recv`` that raises ``zmq.Again``.

    Reading ``EVENTS`` also processes the socket's pending commands, as a ``recv`` would, so a
    drain loop that asks this after each message ends exactly when the queue is empty.
    """
    events = sock.getsockopt(zmq.EVENTS)
    assert isinstance(events, int)
    return bool(events & zmq.POLLIN)


def drain[T](sock: zmq.Socket[bytes], recv: Callable[[int], T]) -> Iterator[T]:
    """The messages waiting on ``sock``, read with ``recv`` (``sock.recv`` or
    ``sock.recv_multipart``), until it is empty.

    Asks ``EVENTS`` after each message rather than ending on a ``zmq.Again`` exception (one per
    wake-up, a few microseconds each); the caller may stop early (a burst limit, a reconnect).
    """
    while True:
        try:
            message = recv(zmq.NOBLOCK)
        except zmq.Again:  # the poller may report a socket that has nothing after all
            return
        more = _has_more(sock)
        yield message
        if not more:
            return


def recv_frames(sock: zmq.Socket[bytes], flags: int, keep: int) -> list[zmq.Frame]:
    """One message's frames, not copied (``copy=False``), keeping the first ``keep``: past them a
    frame is read and dropped at once, so a message of a million frames costs no memory here (a
    receiver that keeps one more than it accepts can tell it was too long)."""
    first = sock.recv(flags, copy=False)
    frames, more = [first], first.more
    while more:
        frame = sock.recv(copy=False)
        more = frame.more
        if len(frames) < keep:
            frames.append(frame)
    return frames


def send_parts(sock: zmq.Socket[bytes], parts: Sequence[bytes | memoryview], flags: int = 0) -> None:
    """Send one message of ``parts`` (``p.encode_parts``' frames, after a ROUTER's routing id).
    Frames under pyzmq's COPY_THRESHOLD are copied into ZeroMQ whatever the call says, and the
    copying call costs less; a message with a frame over it (a payload frame, a large header) goes
    without copying, so those frames are sent from where they are."""
    copy = max(map(len, parts)) < zmq.COPY_THRESHOLD
    if len(parts) == 1:
        sock.send(parts[0], flags, copy=copy)
    else:
        sock.send_multipart(parts, flags, copy=copy)
