"""Seeded fault plans: which fault, on which node, when, and when it heals. Pure; no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["kill", "stop", "link", "dispatcher"]
KINDS: tuple[FaultKind, ...] = ("kill", "stop", "link", "dispatcher")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    node: str | None
    """The node it hits; None for the dispatcher."""
    at_s: float
    """Seconds after the workload starts."""
    heal_after_s: float | None
    """kill: restart the agent after this long (None: it stays dead); stop: SIGCONT; link: up;
    dispatcher: restart on the same ports."""


def plan_faults(seed: int, nodes: list[str], window_s: float) -> list[Fault]:
    """1-3 faults in ``[0.3, window_s]``, single and combined; at least one node is never hit."""
    rng = random.Random(seed)
    count = rng.choice((1, 1, 2, 3))
    targets = rng.sample(nodes, min(count, len(nodes) - 1))
    faults: list[Fault] = []
    for i in range(count):
        kind: FaultKind = rng.choices(KINDS, weights=(4, 2, 2, 1))[0]
        at_s = round(rng.uniform(0.3, window_s), 3)
        if kind == "dispatcher" or i >= len(targets):
            faults.append(Fault("dispatcher", None, at_s, round(rng.uniform(0.2, 1.0), 3)))
        elif kind == "kill":
            heal = round(rng.uniform(1.0, 3.0), 3) if rng.random() < 0.5 else None
            faults.append(Fault("kill", targets[i], at_s, heal))
        else:
            faults.append(Fault(kind, targets[i], at_s, round(rng.uniform(0.5, 3.0), 3)))
    faults.sort(key=lambda f: f.at_s)
    # A dispatcher fault never starts while the dispatcher is still down from the previous one.
    out: list[Fault] = []
    back_at = 0.0
    for fault in faults:
        if fault.kind == "dispatcher":
            at_s = max(fault.at_s, back_at + 0.2)
            back_at = at_s + (fault.heal_after_s or 0.0)
            out.append(Fault("dispatcher", None, round(at_s, 3), fault.heal_after_s))
        else:
            out.append(fault)
    return sorted(out, key=lambda f: f.at_s)
