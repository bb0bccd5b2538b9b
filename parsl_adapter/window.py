"""Two policies of the executor, as plain functions and data: when to plan, and in what order
planned tasks leave for the dispatcher. No Parsl, no sockets, no clock (time is passed in)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowConfig:
    flush_idle_s: float = 0.02
    """Outside ``plan()``: plan once no task was registered or launched for this long."""
    plan_idle_s: float = 1.0
    """Inside ``plan()``: plan anyway after this long without activity (a ``.result()`` inside the
    block stops activity; this is what keeps it from deadlocking)."""
    max_held: int = 10_000
    """Plan at once when this many launched tasks are waiting for a plan."""
    max_delay_s: float = 0.005
    """Outside ``plan()``: no launched task waits longer than this for a plan while others keep coming."""


def should_plan(
    now: float,
    *,
    held: int,
    oldest_held_at: float,
    last_activity: float,
    holding: bool,
    busy: bool,
    config: WindowConfig,
) -> bool:
    """Whether to plan the held (launched, unplanned) tasks now.

    Nagle's rule, for plans: a task launched while the executor is idle (nothing of ours in
    flight, nothing being planned) is planned at once — there is no stream to batch it with, and
    waiting would only add latency. While tasks are in flight, launched tasks are batched until
    registrations pause for ``flush_idle_s`` or the oldest has waited ``max_delay_s``, so a
    stream is planned in windows, each with the DAG registered so far. Inside ``plan()`` the
    block decides (up to ``plan_idle_s`` without activity)."""
    if held == 0:
        return False
    if held >= config.max_held:
        return True
    if holding:
        return now - last_activity >= config.plan_idle_s
    if not busy:
        return True
    return now - last_activity >= config.flush_idle_s or now - oldest_held_at >= config.max_delay_s


class ReleaseOrder:
    """Releases planned tasks per (plan, node) in rank order.

    Within one plan, a ready task leaves only after every *gating* task ranked before it on the
    same node has left or will never run (it finished without launching: a dependency failed, a
    memoized result). Tasks of different plans never wait for each other, and non-gating tasks
    wait like the others but never hold anyone back, so waits only point to earlier-ranked gating
    tasks of the same plan, which wait only on their parents: no cycles.

    Gating tasks are those still waiting on planned tasks of ours (``dag.holds_back``). A task
    with nothing to wait on is being launched by Parsl now, and is not waited for: SAGA's order
    among such tasks (independent ones of equal cost) is arbitrary, and holding a window's
    launched tasks behind whichever Parsl happens to launch last would idle the node meanwhile.
    """

    def __init__(self) -> None:
        self._queues: dict[tuple[int, str], list[int]] = {}
        self._pos: dict[tuple[int, str], int] = {}
        self._where: dict[int, tuple[tuple[int, str], int]] = {}
        self._ready: set[int] = set()
        self._gone: set[int] = set()
        self._gating: set[int] = set()
        self._waiting: dict[tuple[int, str], int] = {}
        """Ready tasks held back, per queue."""

    def add_plan(self, epoch: int, ranked: Iterable[tuple[int, str, float]], gating: set[int]) -> None:
        """``ranked``: (task id, node, rank) of every task of plan ``epoch``; ``gating``: those
        that hold later-ranked ones back until they launch."""
        per_node: dict[str, list[tuple[float, int]]] = {}
        for tid, node, rank in ranked:
            per_node.setdefault(node, []).append((rank, tid))
        for node, items in per_node.items():
            if not any(tid in gating for _, tid in items):
                continue  # nothing to wait for: each leaves when launched
            self._gating.update(tid for _, tid in items if tid in gating)
            key = (epoch, node)
            order = [tid for _, tid in sorted(items)]
            self._queues[key] = order
            self._pos[key] = 0
            for i, tid in enumerate(order):
                self._where[tid] = (key, i)

    def ready(self, tid: int) -> list[int]:
        """``tid`` was launched by Parsl; returns the tasks that may leave now, in order."""
        where = self._where.get(tid)
        if where is None or where[1] < self._pos[where[0]]:
            return [tid]  # not held back by anything (no gating task ahead, or a retry of a released task)
        self._ready.add(tid)
        self._waiting[where[0]] = self._waiting.get(where[0], 0) + 1
        return self._advance(where[0])

    def gone(self, tid: int) -> list[int]:
        """``tid`` will never launch; returns the tasks that may leave now."""
        where = self._where.get(tid)
        if where is None or where[1] < self._pos[where[0]]:
            return []
        self._gone.add(tid)
        return self._advance(where[0])

    def _advance(self, key: tuple[int, str]) -> list[int]:
        order, pos, out = self._queues[key], self._pos[key], []
        while pos < len(order):
            tid = order[pos]
            if tid in self._ready:
                self._ready.discard(tid)
                self._waiting[key] -= 1
                out.append(tid)
            elif tid in self._gone:
                self._gone.discard(tid)
            elif tid in self._gating:
                break  # not launched yet, and others wait for it
            pos += 1  # (a task passed before it launched leaves at once when it does)
        self._pos[key] = pos
        if pos == len(order):  # done with this queue: forget it
            for tid in order:
                self._where.pop(tid, None)
                self._gating.discard(tid)
            del self._queues[key], self._pos[key]
            self._waiting.pop(key, None)
        return out

    def drop_node(self, node: str) -> list[int]:
        """``node`` is gone: forget its queues; returns the ready tasks that were held back there."""
        released = []
        for key in [k for k in self._queues if k[1] == node]:
            for tid in self._queues.pop(key):
                self._where.pop(tid, None)
                self._gone.discard(tid)
                self._gating.discard(tid)
                if tid in self._ready:
                    self._ready.discard(tid)
                    released.append(tid)
            del self._pos[key]
            self._waiting.pop(key, None)
        return released

    def forget(self, tid: int) -> None:
        """``tid`` was launched and held back, and will not leave after all (it failed)."""
        where = self._where.get(tid)
        if where is not None and tid in self._ready:
            self._ready.discard(tid)
            self._waiting[where[0]] -= 1

    def blocking(self) -> list[int]:
        """Heads of queues that hold ready tasks back (check whether they will ever launch)."""
        return [self._queues[key][self._pos[key]] for key, n in self._waiting.items() if n > 0]

    @property
    def waiting(self) -> int:
        return len(self._ready)

    @property
    def held_back(self) -> frozenset[int]:
        """Launched tasks this order holds back."""
        return frozenset(self._ready)
