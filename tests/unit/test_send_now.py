"""The Client's Nagle's rule for frames, and how it cuts batches into frames, as pure functions."""

from __future__ import annotations

import random

import pytest

from dispatcher import protocol as p
from dispatcher.client.client import _BATCH_BYTES, _BATCH_TASKS, COALESCE_TASKS, MAX_PAYLOAD, send_now


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


@pytest.mark.parametrize("seed", range(10))
def test_runs_keep_the_order_and_bound_each_frame(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [
        rng.choice((0, 1, 1024, _BATCH_BYTES // 3, _BATCH_BYTES, MAX_PAYLOAD)) for _ in range(rng.randint(0, 3000))
    ]
    batches = list(p.runs(sizes, _BATCH_TASKS, _BATCH_BYTES, payload_of=range))  # len(range(n)) == n
    assert [size for batch in batches for size in batch] == sizes
    for batch in batches:
        assert 0 < len(batch) <= _BATCH_TASKS
        assert len(batch) == 1 or sum(batch) <= _BATCH_BYTES  # only a lone payload may be larger
        assert sum(batch) <= MAX_PAYLOAD  # so a frame never passes MAX_FRAME_BYTES
