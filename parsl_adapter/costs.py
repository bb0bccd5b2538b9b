"""Task costs: hints from ``parsl_resource_specification``, else runtimes learned per function.

A cost is seconds on a speed-1 node; a node of speed s runs it in cost / s. Hints win; without a
hint the estimate is an exponential moving average of observed runtimes of that function (each
scaled by the speed of the node that ran it); without either, the executor's default.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.runtime.smoothing import ALPHA, ema

COST: Final = "cost"
OUTPUT_SIZE: Final = "output_size"
RETRY_ON_NODE_LOSS: Final = "retry_on_node_loss"
HINT_KEYS: Final = frozenset({COST, OUTPUT_SIZE, RETRY_ON_NODE_LOSS})


@dataclass(frozen=True, slots=True)
class Hints:
    cost_s: float | None = None
    output_bytes: float | None = None
    retry_on_node_loss: bool = True


def _non_negative(spec: Mapping[str, Any], key: str) -> float | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"parsl_resource_specification[{key!r}] must be a non-negative number, got {value!r}")
    return float(value)


def parse_hints(spec: Mapping[str, Any] | None) -> Hints:
    """The hints in a resource specification; raises ValueError/TypeError naming the offending key."""
    if not spec:
        return Hints()
    if not isinstance(spec, Mapping):
        raise TypeError(f"parsl_resource_specification must be a dict, got {type(spec).__name__}")
    retry = spec.get(RETRY_ON_NODE_LOSS, True)
    if not isinstance(retry, bool):
        raise TypeError(f"parsl_resource_specification[{RETRY_ON_NODE_LOSS!r}] must be True or False, got {retry!r}")
    return Hints(_non_negative(spec, COST), _non_negative(spec, OUTPUT_SIZE), retry)


def hints_or_default(spec: Mapping[str, Any] | None) -> Hints:
    """Like :func:`parse_hints`, but bad hints count as none (planning must not fail on them;
    the task itself fails with the ValueError when it is submitted)."""
    try:
        return parse_hints(spec)
    except (ValueError, TypeError):
        return Hints()


class RuntimeModel:
    """Per-function cost estimates from observed runtimes (EMA). Thread-safe."""

    def __init__(self, alpha: float = ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._estimates: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, function: str, runtime_s: float, node_speed: float) -> None:
        if not (math.isfinite(runtime_s) and runtime_s >= 0 and node_speed > 0):
            return
        cost = runtime_s * node_speed
        with self._lock:
            old = self._estimates.get(function)
            self._estimates[function] = ema(old, cost, self.alpha)

    def estimate(self, function: str) -> float | None:
        return self._estimates.get(function)

    def cost(self, function: str, hints: Hints, default_s: float) -> float:
        if hints.cost_s is not None:
            return hints.cost_s
        learned = self._estimates.get(function)
        return default_s if learned is None else learned
