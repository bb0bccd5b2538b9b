"""An inbox for a ZeroMQ loop: other threads post, the loop's poller wakes on a file descriptor.

The wake-up rule (as the client's outbox): an item is put in the queue *before* its byte is
written, and the loop reads the bytes *before* it empties the queue, so no item waits for a
later wake-up. The loop owns what the items change; posting threads own nothing.
"""

from __future__ import annotations

import contextlib
import queue
import socket


class Inbox[T]:
    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)  # noqa: FBT003 - the socket module's own signature
        self._writer.setblocking(False)  # noqa: FBT003

    def fileno(self) -> int:
        """What the loop polls (``zmq.Poller.register(inbox.fileno(), zmq.POLLIN)``)."""
        return self._reader.fileno()

    def post(self, item: T) -> None:
        """Any thread: hand ``item`` to the loop."""
        self._items.put(item)
        with contextlib.suppress(BlockingIOError):  # a full pipe already says "wake up"
            self._writer.send(b"\0")

    def take(self) -> list[T]:
        """The loop: every item posted so far, in order."""
        with contextlib.suppress(BlockingIOError):
            while self._reader.recv(4096):
                pass
        out = []
        while True:
            try:
                out.append(self._items.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
