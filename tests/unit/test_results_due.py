"""The agent's rule for when its results go: as a table."""

from __future__ import annotations

import pytest

from worker_agent.agent import RESULTS_HOLD_S, results_due

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("held", "spare", "workers", "waited_s", "expected"),
    [
        (0, 0, 2, 1.0, False),  # nothing to send
        (1, 0, 2, 0.0, True),  # nothing left to run: the dispatcher must refill now (a lone task's result)
        (1, 1, 2, 0.0, False),  # the node goes on with its spare task: wait for the next result
        (1, 1, 2, RESULTS_HOLD_S * 0.99, False),
        (1, 1, 2, RESULTS_HOLD_S, True),  # waited long enough
        (2, 3, 2, 0.0, True),  # a round of the workers: one message for it
        (7, 9, 8, 0.0, False),
        (8, 9, 8, 0.0, True),
    ],
)
def test_results_due(held: int, spare: int, workers: int, waited_s: float, expected: bool) -> None:
    assert results_due(held=held, spare=spare, workers=workers, waited_s=waited_s) is expected
