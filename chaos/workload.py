"""The chaos workload: a seeded layered DAG whose tasks report where and when they ran."""

from __future__ import annotations

import os
import random
import time
from typing import Any


def task(
    value: int, *parents: tuple[str, int, int], parsl_resource_specification: dict[str, Any] | None = None
) -> tuple[str, int, int]:
    """Sleep cost/speed; return (node, value + sum of parents' values, start ns)."""
    started = time.monotonic_ns()
    cost = (parsl_resource_specification or {}).get("cost", 0.0)
    time.sleep(cost / float(os.environ.get("NODE_SPEED", "1")))
    return os.environ.get("NODE_NAME", "?"), value + sum(p[1] for p in parents), started


def dag(
    n: int, seed: int, width: tuple[int, int] = (20, 80), cost_s: tuple[float, float] = (0.002, 0.01)
) -> list[tuple[int, list[int], float]]:
    """A layered DAG: (task, parents, cost at speed 1) in registration order; each task has 1-3
    parents in the layer above, layers are ``width`` wide, costs uniform in ``cost_s``."""
    rng = random.Random(seed)
    layers: list[list[int]] = []
    i = 0
    while i < n:
        size = min(rng.randint(*width), n - i)
        layers.append(list(range(i, i + size)))
        i += size
    out = []
    for depth, layer in enumerate(layers):
        for t in layer:
            parents = (
                sorted(rng.sample(layers[depth - 1], min(len(layers[depth - 1]), rng.randint(1, 3)))) if depth else []
            )
            out.append((t, parents, rng.uniform(*cost_s)))
    return out


def expected(tasks: list[tuple[int, list[int], float]]) -> dict[int, int]:
    values: dict[int, int] = {}
    for t, parents, _ in tasks:
        values[t] = t + sum(values[p] for p in parents)
    return values
