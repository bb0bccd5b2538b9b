"""The undo log that makes each step of the dispatcher core atomic.

While the core handles an event, every change to its state is preceded by a note here: the old
value of a dict entry (:meth:`Journal.keep`), the slots of an object the first time the step
touches it (:meth:`Journal.save`), an entry popped from a queue's heap, the heap list a
compaction replaced. If the step raises, :meth:`Journal.rollback` walks the notes backwards and
the state is what it was before the event (one exception: the order in which hungry nodes asked
for work, a fairness detail that a restored dict entry cannot keep). A step that ends well
drops its notes (:meth:`Journal.commit`). Notes are taken only while a step is open, so the
state can also be built and inspected outside one (tests, the invariants).

The cost is an append per change and a tuple per object per step: no copy of anything that
grows with the number of tasks or nodes.
"""

from __future__ import annotations

import heapq
from operator import attrgetter
from typing import Any, Final

_MISSING: Final[Any] = object()
_DICT, _OBJECT, _POPPED, _HEAP, _PUSHED, STARTED, ADMITTED = range(7)
"""Kinds of note. The last two are the hot paths', appended inline by ``TaskQueue``: one note
where the general methods would take several, and the queue's length undone by a delta instead
of a snapshot of the queue (deltas and snapshots compose, since notes are undone newest first):

* ``(STARTED, queue, heap entry, in_flight)``: dispatched (``start_next``); undone by taking the
  record out of ``in_flight``, clearing its holder, pushing the entry back (a queued record has
  no holder) and counting it in the queue again;
* ``(ADMITTED, queue, record, tasks)``: a new task submitted (``admit``); undone by deleting it
  from ``tasks``, leaving its heap entry stale (a new record: nothing else refers to it) and
  uncounting it."""
_GETTERS: dict[type, Any] = {}
"""Per class: an attrgetter of all its slots (one C call takes the whole snapshot)."""


def _getter(cls: type) -> Any:
    getter = _GETTERS.get(cls)
    if getter is None:
        getter = _GETTERS[cls] = attrgetter(*cls.__slots__)  # type: ignore[attr-defined]
    return getter


class Journal:
    __slots__ = ("active", "notes", "step")

    def __init__(self) -> None:
        self.notes: list[tuple[Any, ...]] = []
        """Newest last; appended to through the methods below, or inline by the dispatch path."""
        self.active = False
        self.step = 0
        """Counts steps; an object saved in this step carries it in its ``_jstep`` slot."""

    def begin(self) -> None:
        self.notes.clear()
        self.step += 1
        self.active = True

    def commit(self) -> None:
        self.notes.clear()
        self.active = False

    def keep(self, d: dict[Any, Any], key: Any) -> None:
        """``d[key]`` is about to be set or deleted."""
        if self.active:
            self.notes.append((_DICT, d, key, d.get(key, _MISSING)))

    def save(self, obj: Any) -> None:
        """``obj``'s attributes are about to change: keep them all, the first time in this step."""
        if self.active and obj._jstep != self.step:
            self.notes.append((_OBJECT, obj, _getter(type(obj))(obj)))
            obj._jstep = self.step

    def popped(self, owner: Any, entry: tuple[Any, ...]) -> None:
        """``entry`` was popped off ``owner._heap`` (undo: push it back)."""
        if self.active:
            self.notes.append((_POPPED, owner, entry))

    def pushed(self, owner: Any, record: Any, seq: int) -> None:
        """``record`` was pushed on ``owner`` with ticket ``seq`` (undo: its entry goes stale; a
        record queued before this step gets its old place back from its saved slots)."""
        if self.active:
            self.notes.append((_PUSHED, owner, record, seq))

    def replaced_heap(self, owner: Any, old: list[Any]) -> None:
        """``owner._heap`` is about to become another list (undo: the old one back)."""
        if self.active:
            self.notes.append((_HEAP, owner, old))

    def rollback(self) -> None:
        """Undo the open step's changes, newest first."""
        notes = self.notes
        while notes:
            note = notes.pop()
            kind = note[0]
            if kind == _DICT:
                _, d, key, old = note
                if old is _MISSING:
                    d.pop(key, None)
                else:
                    d[key] = old
            elif kind == _OBJECT:
                _, obj, values = note
                for name, value in zip(obj.__slots__, values, strict=True):
                    setattr(obj, name, value)
            elif kind == _POPPED:
                heapq.heappush(note[1]._heap, note[2])
            elif kind == _PUSHED:
                _, owner, record, seq = note
                if record.queue is owner and record.seq == seq:
                    record.queue = None
            elif kind == ADMITTED:
                _, owner, record, tasks = note
                del tasks[record.key]
                record.queue = None
                owner._live -= 1
            elif kind == STARTED:
                _, owner, entry, in_flight = note
                record = entry[2]
                del in_flight[record.key]
                record.holder = None
                record.queue = owner
                heapq.heappush(owner._heap, entry)
                owner._live += 1
            else:
                note[1]._heap = note[2]
        self.active = False
