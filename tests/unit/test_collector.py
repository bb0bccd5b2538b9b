"""The collector policy of the long-running roles, applied in a fresh interpreter (the test
process keeps its own)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json
from dispatcher.runtime.collector import YOUNG_THRESHOLD, tune_collector
before = gc.get_threshold()
kept = [[i] for i in range(1000)]  # alive at the freeze: out of every later collection
after = tune_collector()
print(json.dumps({"before": before, "after": after, "now": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "young": YOUNG_THRESHOLD}))
"""


def test_tune_collector_freezes_the_start_and_raises_only_the_young_threshold() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(out.stdout)
    assert seen["after"] == seen["now"] == [seen["young"], seen["before"][1], seen["before"][2]]
    assert seen["young"] > seen["before"][0]
    assert seen["frozen"] >= 1000
