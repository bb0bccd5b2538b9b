"""The Client's Nagle's rule for frames, as a pure function."""

from __future__ import annotations

import pytest

from dispatcher.client.client import COALESCE_TASKS, send_now


@pytest.mark.parametrize(
    ("held", "acked", "waited_s", "expected"),
    [
        (0, False, 0.0, True),  # nothing held: nothing to wait for
        (1, True, 0.0, True),  # a result came back (or nothing was sent yet): go with the stream
        (1, False, 0.0, False),  # in flight, nothing back yet: hold
        (1, False, 0.0009, False),
        (1, False, 0.001, True),  # held long enough
        (COALESCE_TASKS - 1, False, 0.0, False),
        (COALESCE_TASKS, False, 0.0, True),  # enough for a frame
    ],
)
def test_send_now(held: int, acked: bool, waited_s: float, expected: bool) -> None:
    assert send_now(held=held, acked=acked, waited_s=waited_s, coalesce_s=0.001) is expected


def test_zero_coalesce_never_holds() -> None:
    assert send_now(held=1, acked=False, waited_s=0.0, coalesce_s=0.0)
