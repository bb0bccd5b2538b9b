"""Task records and the rank-ordered queue that holds them. Pure data structures, no I/O.

A task is in exactly one place at a time: queued in one :class:`TaskQueue` (a node's queue or the
shared pool), or in flight on one node (``holder``). Removal from a queue is lazy: the record
forgets its queue and the stale heap entry is skipped when it surfaces, so cancelling or moving a
task is O(1) and popping stays O(log n).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Final, NamedTuple

from dispatcher import protocol as p
from dispatcher.protocol import TaskKey
from dispatcher.server.journal import ADMITTED, STARTED, Journal

POOL: Final = "__pool__"
"""The name of the shared pool's queue (tasks any node may take)."""

_COMPACT_MIN: Final = 1024


class Fetch(NamedTuple):
    """Rule 13's state of a task whose payload has not always been here: replaced, never changed
    in place, so the journal's copy of the record's slots undoes it."""

    size: int
    """Its payload's length (a HELD task's SUBMIT says it): what fetching it costs."""
    fetching: float | None = None
    """When a FETCH for its payload was sent (None: none outstanding)."""
    fetches: int = 0
    """FETCHes sent for its payload since it was last here."""
    refill: bool = False
    """Dispatching it asks for the next payloads of its queue (the middle of a FETCH batch), so
    a node working through held tasks never waits a round trip for the next ones."""


class TaskRecord:
    """One unresolved task. ``node_name`` is where it is pinned (None: anywhere).

    A record is 14 slots, the most that fit the allocator's 144-byte size class (a million queued
    tasks are in memory at once): rule 13's fields live in ``fetch``, read and set through the
    properties below. It is None while the payload has always been here; the payload's size (an
    int) while it is not here and was never asked for (a HELD task, as most are in a long queue
    of large payloads); a :class:`Fetch` from the first FETCH on."""

    __slots__ = (
        "_jstep", "earlier", "fetch", "flags", "holder", "key", "node_name", "payload", "queue", "queued_at", "rank",
        "seq", "steal_id", "stolen",
    )  # fmt: skip

    def __init__(
        self,
        key: TaskKey,
        node_name: str | None,
        rank: float,
        payload: p.Payload | None,
        flags: int = 0,
        *,
        queued_at: float = 0.0,
        size: int | None = None,
    ) -> None:
        self.key = key
        self.queued_at = queued_at
        """When the dispatcher first queued it (the core's clock): the wait histogram's start."""
        self.flags = flags
        self.node_name = node_name
        self.rank = rank
        self.payload = payload
        """None: its client holds it (HELD, or the dispatcher was over its payload budget); the core
        asks for it (FETCH) when the task is next on a node."""
        self.fetch: Fetch | int | None = None if payload is not None else size or 0
        """Rule 13's state (see the class)."""
        self.queue: TaskQueue | None = None
        """The queue holding it, or None while in flight."""
        self.seq = 0
        """Ticket of its live heap entry; older entries for it are stale."""
        self.holder: str | None = None
        """The node running it, while in flight."""
        self.earlier: tuple[str, ...] = ()
        """Nodes it was in flight on before (it died, resynced, drained or was stolen from): a
        late result from one of them still counts (first result wins); from any other node it
        is refused, so an agent cannot resolve tasks it was never given."""
        self.steal_id = 0
        """The pending two-phase steal asking for it back from its agent, if any."""
        self.stolen = False
        """Taken from its (live) pinned node by soft-affinity stealing."""
        self._jstep = 0
        """The journal's step that last saved it (``journal.py``)."""

    @property
    def size(self) -> int:
        """Its payload's length, here or not."""
        fetch, payload = self.fetch, self.payload
        if fetch is None:
            return len(payload) if payload is not None else 0
        return fetch if isinstance(fetch, int) else fetch.size

    @property
    def fetching(self) -> float | None:
        fetch = self.fetch
        return fetch.fetching if isinstance(fetch, Fetch) else None

    @fetching.setter
    def fetching(self, value: float | None) -> None:
        self.fetch = self.asked()._replace(fetching=value)

    @property
    def fetches(self) -> int:
        fetch = self.fetch
        return fetch.fetches if isinstance(fetch, Fetch) else 0

    @fetches.setter
    def fetches(self, value: int) -> None:
        self.fetch = self.asked()._replace(fetches=value)

    @property
    def refill(self) -> bool:
        fetch = self.fetch
        return isinstance(fetch, Fetch) and fetch.refill

    @refill.setter
    def refill(self, value: bool) -> None:
        self.fetch = self.asked()._replace(refill=value)

    def drop_payload(self) -> int:
        """Forget the payload (its client holds it, to be fetched again if it must): its length."""
        size = self.size
        if self.fetch is None:
            self.fetch = size
        self.payload = None
        return size

    def asked(self) -> Fetch:
        """Its :class:`Fetch` (a fresh one when there is none yet)."""
        fetch = self.fetch
        return fetch if isinstance(fetch, Fetch) else Fetch(self.size)

    def release(self) -> None:
        """No longer in flight on its holder (the caller saved it in the journal first)."""
        if self.holder is not None:
            if self.holder not in self.earlier:
                self.earlier = (*self.earlier, self.holder)
            self.holder = None

    def __repr__(self) -> str:
        where = self.queue.name if self.queue is not None else f"on {self.holder}"
        return f"<task {self.key} pin={self.node_name} rank={self.rank} {where}>"


_tickets = count(1)
NO_JOURNAL: Final = Journal()
"""Never begun: a queue outside the core (tests) takes no notes."""


class TaskQueue:
    """Tasks ordered by (rank, arrival): the lowest planned start time leaves first."""

    __slots__ = ("_heap", "_journal", "_jstep", "_live", "name")

    def __init__(self, name: str, journal: Journal = NO_JOURNAL) -> None:
        self.name = name
        self._heap: list[tuple[float, int, TaskRecord]] = []
        self._live = 0
        self._journal = journal
        """Every change is noted here first, so the core's step can be undone (``journal.py``)."""
        self._jstep = 0

    def __len__(self) -> int:
        return self._live

    def push(self, record: TaskRecord) -> None:
        if record.queue is not None:
            record.queue.discard(record)
        journal = self._journal
        if record.seq:  # queued or sent before: its slots come back on undo (a new record's do not matter)
            journal.save(record)
        journal.save(self)
        record.seq = seq = next(_tickets)
        journal.pushed(self, record, seq)
        record.queue = self
        record.holder = None
        heapq.heappush(self._heap, (record.rank, seq, record))
        self._live += 1

    def admit(self, record: TaskRecord, tasks: dict[TaskKey, TaskRecord]) -> None:
        """A new task: into ``tasks`` and onto this queue (the submit path: ``tasks[key] = record``
        and :meth:`push` in one journal note)."""
        journal = self._journal
        if journal.active:  # the note, inline: this runs once per submitted task
            journal.notes.append((ADMITTED, self, record, tasks))
        tasks[record.key] = record
        record.seq = seq = next(_tickets)
        record.queue = self
        heapq.heappush(self._heap, (record.rank, seq, record))
        self._live += 1

    def discard(self, record: TaskRecord) -> None:
        """Forget ``record`` (it must be in this queue); its heap entry goes stale."""
        assert record.queue is self, (record, self.name)
        journal = self._journal
        journal.save(record)
        journal.save(self)
        record.queue = None
        self._live -= 1
        stale = len(self._heap) - self._live
        if stale > _COMPACT_MIN and stale > self._live:
            journal.replaced_heap(self, self._heap)
            self._heap = [e for e in self._heap if e[2].queue is self and e[2].seq == e[1]]
            heapq.heapify(self._heap)

    def _skip_stale(self) -> None:
        heap = self._heap
        while heap:
            _, seq, record = heap[0]
            if record.queue is self and record.seq == seq:
                return
            self._journal.popped(self, heapq.heappop(heap))

    def peek(self) -> TaskRecord | None:
        """The next task (not removed), or None when empty."""
        heap = self._heap
        if heap:
            _, seq, top = heap[0]
            if top.queue is self and top.seq == seq:  # the usual live top, inline
                return top
            self._skip_stale()
        return heap[0][2] if heap else None

    def next_held(self, n: int, asked_before: float) -> list[TaskRecord]:
        """Up to ``n`` of the next tasks, in rank order, whose payload is with their client and
        not asked for since ``asked_before``. A best-first walk down the heap: it looks only at
        the tasks ranked before the last one it returns, and their children."""
        heap, out = self._heap, list[TaskRecord]()
        frontier = [(heap[0][0], heap[0][1], 0)] if heap and n > 0 else []
        while frontier and len(out) < n:
            _, seq, i = heapq.heappop(frontier)
            record = heap[i][2]
            if (
                record.queue is self and record.seq == seq and record.payload is None
                and (record.fetching is None or record.fetching <= asked_before)
            ):  # fmt: skip
                out.append(record)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
        return out

    def peek_rank(self) -> float | None:
        """Rank of the next task, or None when empty."""
        self._skip_stale()
        return self._heap[0][0] if self._heap else None

    def pop(self) -> TaskRecord:
        """Remove and return the lowest-rank task; the queue must not be empty."""
        self._skip_stale()
        entry = heapq.heappop(self._heap)
        record = entry[2]
        journal = self._journal
        journal.popped(self, entry)
        journal.save(record)
        journal.save(self)
        record.queue = None
        self._live -= 1
        return record

    def start_next(self, in_flight: dict[TaskKey, TaskRecord], holder: str) -> TaskRecord:
        """Pop the lowest-rank task into ``in_flight`` as run by ``holder`` (the dispatch path:
        :meth:`pop` and ``NodeActor.start`` in one journal note); the queue must not be empty."""
        heap = self._heap
        top = heap[0][2] if heap else None
        if top is None or top.queue is not self or top.seq != heap[0][1]:  # the usual live top, inline
            self._skip_stale()
        entry = heapq.heappop(heap)
        record = entry[2]
        journal = self._journal
        if journal.active:  # the note, inline: this runs once per dispatched task
            journal.notes.append((STARTED, self, entry, in_flight))
        record.queue = None
        record.holder = holder
        in_flight[record.key] = record
        self._live -= 1
        return record

    def take_all(self) -> list[TaskRecord]:
        """Empty the queue, returning its live tasks in rank order."""
        out = [self.pop() for _ in range(self._live)]
        self._journal.replaced_heap(self, self._heap)
        self._heap = []  # only stale entries were left
        return out

    def records(self) -> list[TaskRecord]:
        """The live tasks, unordered (for validation and status)."""
        return [r for _, seq, r in self._heap if r.queue is self and r.seq == seq]
