"""The cyclic garbage collector's policy for the long-running roles (dispatcher, agent).

Almost everything these processes allocate is freed by reference counting; the cyclic collector
mostly walks live objects. Its default first threshold (700 net allocations) makes it walk them
often, and the dispatcher's task records are many and long-lived: with the default, full
collections over a million queued tasks took more than half the CPU of submitting them
(``bench.core_steps``' probe with ``gc.callbacks``: 4.2 of 7.9 us per task). So, as other
long-running Python servers do, once at start: what was allocated until then (imports,
configuration) is collected and frozen out of every later collection, and the young generation
is collected after 10,000 net allocations instead of 700. The older generations keep their
defaults, so a full collection still comes once the survivors grew by a quarter: cyclic garbage
is still reclaimed, only less often. Task code in workers keeps Python's defaults.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 10_000
"""Net allocations of container objects between two collections of the young generation."""


def tune_collector() -> tuple[int, int, int]:
    """Collect, freeze what survives (it lives as long as the process), and raise the young
    generation's threshold; the thresholds now in force."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_threshold()
