"""ZeroMQ socket helpers shared by the dispatcher, the client and the agent."""

from __future__ import annotations

import zmq


def has_more(sock: zmq.Socket[bytes]) -> bool:
    """Whether another message waits on ``sock``, without a ``recv`` that raises ``zmq.Again``.

    Reading ``EVENTS`` also processes the socket's pending commands, as a ``recv`` would, so a
    drain loop that asks this after each message ends exactly when the queue is empty.
    """
    events = sock.getsockopt(zmq.EVENTS)
    assert isinstance(events, int)
    return bool(events & zmq.POLLIN)
