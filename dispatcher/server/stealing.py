"""Soft-affinity stealing policy: which queued tasks an idle node should take from a busy one.

Pure: views in, moves out; no clock, no sockets. Only tasks flagged SOFT_AFFINITY are ever
candidates (strict tasks leave their node only when it dies). A move pays off when the task's
expected finish on its own node — behind the ``k`` tasks ahead of it, ``k / slots`` runtimes,
plus its own — is later than its run time on the thief (scaled by relative speed) plus a
transfer penalty, the way Dask's stealing weighs compute time against transfer.

Candidates are taken from the back of the victim's line (highest rank first), so the victim still
runs its own plan in order. A candidate still in the dispatcher's queue moves at once; one
already prefetched by the victim's agent needs the two-phase steal (the agent confirms it has not
started it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dispatcher import protocol as p
from dispatcher.protocol import TaskKey
from dispatcher.server.node import NodeActor

Where = Literal["queued", "prefetched"]


@dataclass(slots=True)
class VictimView:
    name: str
    speed: float
    slots: int
    runtime_s: float
    """Typical runtime of a task on this node (EMA of observed runtimes)."""
    backlog: list[tuple[TaskKey, Where]] = field(default_factory=list)
    """Stealable tasks waiting on this node, last in line first."""
    waiting: int = 0
    """All tasks waiting on this node (stealable or not): the line a candidate stands in."""


@dataclass(slots=True)
class ThiefView:
    name: str
    speed: float
    free: int


@dataclass(frozen=True, slots=True)
class Move:
    key: TaskKey
    victim: str
    thief: str
    where: Where


def gain_s(victim: VictimView, thief: ThiefView, position: int, penalty_s: float) -> float:
    """Seconds saved by running the task at ``position`` (1 = next in line) on ``thief`` instead."""
    on_victim = (position - 1) / victim.slots * victim.runtime_s + victim.runtime_s
    on_thief = victim.runtime_s * victim.speed / thief.speed + penalty_s
    return on_victim - on_thief


def plan_steals(victims: list[VictimView], thieves: list[ThiefView], penalty_s: float) -> list[Move]:
    """Greedy: the fastest idle node first takes the candidate with the largest gain, and so on."""
    moves: list[Move] = []
    lines = {v.name: v.waiting for v in victims}
    for thief in sorted(thieves, key=lambda t: -t.speed):
        while thief.free > 0:
            best: tuple[float, VictimView] | None = None
            for victim in victims:
                if victim.name == thief.name or not victim.backlog:
                    continue
                gain = gain_s(victim, thief, lines[victim.name], penalty_s)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, victim)
            if best is None:
                break
            victim = best[1]
            key, where = victim.backlog.pop(0)
            lines[victim.name] -= 1
            moves.append(Move(key, victim.name, thief.name, where))
            thief.free -= 1
    return moves


def victim_view(node: NodeActor, default_runtime_s: float, limit: int = 64) -> VictimView:
    """What may be stolen from ``node``: soft tasks in its dispatcher queue whose payload is here
    (highest rank first; one its client holds is not worth a round trip), then soft tasks its
    agent prefetched beyond its running slots (last sent first)."""
    soft = p.SOFT_AFFINITY
    here = (r for r in node.queue.records() if r.flags & soft and r.payload is not None)
    queued = sorted(here, key=lambda r: (r.rank, r.seq), reverse=True)
    prefetched = [r for r in list(node.in_flight.values())[node.slots :] if r.flags & soft and not r.steal_id]
    backlog: list[tuple[TaskKey, Where]] = [(r.key, "queued") for r in queued[:limit]]
    backlog += [(r.key, "prefetched") for r in reversed(prefetched)]
    runtime = node.runtime_s if node.runtime_s is not None else default_runtime_s
    waiting = len(node.queue) + max(0, len(node.in_flight) - node.slots)
    return VictimView(node.name, node.speed, node.slots, runtime, backlog, waiting)
