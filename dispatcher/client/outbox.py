"""The hand-off from the callers of a :class:`~dispatcher.client.Client` to its I/O thread.

One lock guards the posted items and two flags, so the wake-up rule is obviously right:

* ``armed`` is set by the post that finds it clear, and that post (alone) writes a wake-up byte;
  it is cleared only by :meth:`Outbox.take` when it hands everything over. Both happen under the
  lock, so no post can fall between "the I/O thread found nothing" and "it stopped listening":
  the lost wake-up of a check-then-clear on two unlocked fields cannot happen.
* While armed, posts write no byte (a stream of submissions costs one wake-up), except the first
  urgent one (anything but a task: a Cancel, a Repin, a query must not wait for Nagle's rule) and
  the one that brings ``coalesce_tasks`` items (enough for a frame).
* :meth:`Outbox.take` may decline to hand over tasks that Nagle's rule says to hold a little
  longer; the box then stays armed, so later tasks do not wake the I/O thread, which promised to
  look again when the oldest is due.
* :meth:`Outbox.close` hands over what is left and makes every later post raise, in one step, so
  an item is either handed over or refused: never stranded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dispatcher.client.errors import DispatcherUnavailable


class Outbox[Item]:
    def __init__(self, wake: Callable[[], None], coalesce_tasks: int) -> None:
        self._wake = wake
        self._coalesce_tasks = coalesce_tasks
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._armed = False
        self._urgent = False
        self._closed: str | None = None
        self.posted_tasks = 0
        """Items put without ``urgent`` (the client posts only tasks so): counted under the lock."""

    def put(self, item: Item, *, urgent: bool = False) -> None:
        """Hand ``item`` to the I/O thread (any thread). Raises DispatcherUnavailable once closed."""
        with self._lock:
            if self._closed is not None:
                raise DispatcherUnavailable(self._closed)
            self._items.append(item)
            self.posted_tasks += not urgent
            wake = not self._armed or (urgent and not self._urgent) or len(self._items) == self._coalesce_tasks
            self._armed = True
            self._urgent = self._urgent or urgent
        if wake:
            self._wake()

    def take(self, hold: Callable[[int], bool] = lambda _: False) -> list[Item] | None:
        """Everything posted, in order (the I/O thread). None, and the box stays armed, when
        nothing urgent is posted and ``hold(count)`` says to wait for more."""
        with self._lock:
            if not self._items:
                self._armed = False
                return []
            if not self._urgent and hold(len(self._items)):
                return None
            items, self._items = self._items, []
            self._armed = self._urgent = False
            return items

    def close(self, reason: str) -> list[Item]:
        """Refuse every later post with ``reason``; return what was posted and not taken."""
        with self._lock:
            self._closed = reason
            items, self._items = self._items, []
            return items

    @property
    def closed(self) -> str | None:
        """Why the box was closed, or None while it is open."""
        return self._closed
