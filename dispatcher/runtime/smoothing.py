"""The exponential moving average that per-node and per-function runtimes are learned with."""

from __future__ import annotations

from typing import Final

ALPHA: Final = 0.3
"""Weight of the newest sample: recent runs count most, one outlier does not take over."""


def ema(old: float | None, sample: float, alpha: float = ALPHA) -> float:
    """The average after ``sample``; the first sample (``old`` None) is taken as it is."""
    return sample if old is None else old + alpha * (sample - old)
